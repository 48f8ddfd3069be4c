// Where API keys live. One small interface, three ways to fill it:
// - libsecret_store: the desktop keychain (Secret Service over D-Bus: gnome-keyring, KeePassXC);
// - file_store: a 0600 JSON file under SBX_HOME, for machines without a Secret Service;
// - import_from_environment(): copies keys from the current environment into a store.
//
// Scope: "" is global; otherwise a sandbox name. Calls may block (D-Bus, disk): never call them on
// an I/O thread.
//
//   auto store = sbx::keychain::open_default_store(home, &warning);
//   store->set("", "openai", secret{"sk-..."});
//   auto key = store->get("", "openai");  // std::optional<secret>
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "keychain/secret.hpp"

namespace sbx::keychain {

// what() says what failed and what to do next; it never contains a secret.
class keychain_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct stored_secret {
  std::string scope;  // "" = global
  std::string service;
  keychain::secret value;
};

class secret_store {
 public:
  virtual ~secret_store() = default;
  [[nodiscard]] virtual std::optional<secret> get(std::string_view scope,
                                                  std::string_view service) = 0;
  virtual void set(std::string_view scope, std::string_view service, const secret& value) = 0;
  virtual bool remove(std::string_view scope, std::string_view service) = 0;  // false: not found
  // Every secret, optionally only one scope / one service; sorted by scope then service.
  [[nodiscard]] virtual std::vector<stored_secret> list(
      std::optional<std::string_view> scope = std::nullopt,
      std::optional<std::string_view> service = std::nullopt) = 0;
  [[nodiscard]] virtual std::string_view kind() const = 0;  // "secret-service" | "file"
};

// Secret Service via libsecret. Throws keychain_error when no Secret Service answers.
[[nodiscard]] std::unique_ptr<secret_store> open_libsecret_store();
// 0600 JSON file. A corrupt file is a keychain_error (never silently replaced).
[[nodiscard]] std::unique_ptr<secret_store> open_file_store(const std::filesystem::path& file);

// SBX_KEYCHAIN=secret-service|file picks one; unset: Secret Service when it answers, else the file
// store under state_dir with *warning set to what to do to get the keychain.
[[nodiscard]] std::unique_ptr<secret_store> open_default_store(
    const std::filesystem::path& state_dir, std::string* warning);

}  // namespace sbx::keychain
