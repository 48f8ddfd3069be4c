// Helpers the config tests share: throw-away directories, scoped environment variables, files, and
// the message of the config_error a config text raises.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace sbx::config::test {

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

void write_file(const std::filesystem::path& path, std::string_view text);

// The what() of the config_error that load_from_string(json, "test.json") throws; "" when it loads.
[[nodiscard]] std::string load_error(std::string_view json);

// Permission bits of a path (st_mode & 07777).
[[nodiscard]] unsigned mode_of(const std::filesystem::path& path);

}  // namespace sbx::config::test
