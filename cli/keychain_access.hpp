// How CLI commands reach the keychain and tell a running proxy that secrets changed.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "cli/common.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::cli {

// Sandbox tokens are kept in the keychain too (scope = sandbox name), so `sbx sandbox env` can
// print a proxy URL with credentials later; policy.db only holds their hash.
inline constexpr std::string_view sandbox_token_service = "sandbox-token";

// The store SBX_KEYCHAIN selects (Secret Service by default, else the 0600 file with a warning on
// stderr). Throws command_error saying what to do when none can be opened.
[[nodiscard]] std::shared_ptr<keychain::secret_store> open_keychain(
    const std::filesystem::path& state_dir, bool quiet = false);

// Tells a running proxy to reload its credential snapshot, so the next request uses the change.
// Not running is fine (it reads the keychain at start); running but not answering is a warning.
void notify_secrets_changed(const std::filesystem::path& state_dir);

void add_secret_commands(CLI::App& app, command_action& action);
void add_ca_commands(CLI::App& app, command_action& action);
void add_sandbox_env_command(CLI::App& sandbox, command_action& action);

}  // namespace sbx::cli
