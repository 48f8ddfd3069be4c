// `sbx reset -f`: deletes the proxy's state files. Only files the proxy itself creates are touched,
// never the whole directory: SBX_HOME may point somewhere that holds other things too.
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "config/config.hpp"
#include "proxy/control_client.hpp"

namespace sbx::cli {
namespace {

struct reset_options {
  bool force = false;
  bool preserve_secrets = false;
};

constexpr std::string_view secrets_file = "secrets.json";

// The file keychain and its companions (secrets.json.lock).
bool is_secrets_file(std::string_view name) {
  return name.starts_with(secrets_file);
}

// policy.db and its -wal/-shm/-journal companions, the CA (ca.pem, ca-key.pem, and any other
// ca*.pem the CA code keeps), the control socket, and the file keychain.
bool is_state_file(std::string_view name) {
  return name.starts_with("policy.db") || (name.starts_with("ca") && name.ends_with(".pem")) ||
         name == "sbx.sock" || is_secrets_file(name);
}

int run_reset(const reset_options& opts) {
  auto dir = config::state_dir();
  if (!opts.force) {
    throw usage_error(fmt::format(
        "reset deletes the rules, sandboxes, decision log, CA and secrets in {}; run `sbx reset "
        "-f` to confirm (add --preserve-secrets to keep secrets.json)",
        dir.string()));
  }
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) {
    fmt::print("Nothing to reset: {} does not exist.\n", dir.string());
    return exit_ok;
  }
  // Deleting policy.db under a running proxy would leave it writing to an unlinked file.
  if (proxy::control_request(control_socket_path(dir), "GET", "/v1/status", {},
                             std::chrono::seconds(2))) {
    throw failure(fmt::format(
        "a proxy is running on {}; stop it first (Ctrl-C or SIGTERM), then run `sbx reset -f` "
        "again",
        control_socket_path(dir).string()));
  }

  // Secrets in the Secret Service are state too (secrets.json is removed with the files below).
  std::size_t keychain_removed = 0;
  if (!opts.preserve_secrets) {
    try {
      auto keys = open_keychain(dir, /*quiet=*/true);
      if (keys->kind() == "secret-service") {
        for (const auto& e : keys->list())
          keychain_removed += keys->remove(e.scope, e.service);
      }
    } catch (const std::exception& e) {
      fmt::print(stderr, "sbx: warning: could not clear the keychain: {}\n", e.what());
    }
  }

  std::vector<std::string> removed;
  bool kept_secrets = false;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    auto name = entry.path().filename().string();
    if (!is_state_file(name)) continue;
    if (opts.preserve_secrets && is_secrets_file(name)) {
      kept_secrets = true;
      continue;
    }
    if (!std::filesystem::remove(entry.path(), ec) && ec) {
      throw failure(
          fmt::format("cannot remove {}: {}; check its permissions and run `sbx reset "
                      "-f` again",
                      entry.path().string(), ec.message()));
    }
    removed.push_back(name);
  }
  std::sort(removed.begin(), removed.end());
  if (removed.empty()) {
    fmt::print("Nothing to reset in {}.\n", dir.string());
  } else {
    std::string list;
    for (const auto& name : removed)
      list += (list.empty() ? "" : ", ") + name;
    fmt::print("Removed from {}: {}.\n", dir.string(), list);
  }
  if (kept_secrets) fmt::print("Kept {} (--preserve-secrets).\n", secrets_file);
  if (keychain_removed > 0) {
    fmt::print("Removed {} sbx entries from the Secret Service keychain.\n", keychain_removed);
  }
  return exit_ok;
}

}  // namespace

void add_reset_command(CLI::App& app, command_action& action) {
  auto* cmd = app.add_subcommand(
      "reset", "Delete all state: rules, sandboxes, decision log, CA and secrets");
  auto opts = std::make_shared<reset_options>();
  cmd->add_flag("-f,--force", opts->force, "Really delete (required)");
  cmd->add_flag("--preserve-secrets", opts->preserve_secrets, "Keep secrets.json");
  cmd->footer("The proxy must be stopped first. The next command starts from the balanced preset.");
  cmd->callback([opts, &action] { action = [opts] { return run_reset(*opts); }; });
}

}  // namespace sbx::cli
