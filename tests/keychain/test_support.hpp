// Helpers the keychain tests share: throw-away directories, scoped environment variables and the
// store contract every secret_store implementation must meet.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "keychain/secret_store.hpp"

namespace sbx::keychain::test {

// A fresh directory under $TMPDIR, removed with everything in it.
class temp_dir {
 public:
  temp_dir();
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir();
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Sets (or, with nullopt, unsets) an environment variable and restores the old value.
class scoped_env {
 public:
  scoped_env(std::string name, const std::optional<std::string>& value);
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;
  ~scoped_env();

 private:
  std::string name_;
  std::optional<std::string> previous_;
};

// Runs the behaviour every store must have against `store`, which must be empty or hold only
// entries in the scopes this function uses (it removes them first).
void check_store_contract(secret_store& store);

}  // namespace sbx::keychain::test
