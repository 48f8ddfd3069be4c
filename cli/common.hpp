// What the `sbx` commands share: exit codes, the error type they report with, opening the state
// directory, the control socket, and plain-text tables.
//
// Each command group registers its subcommands with add_*_commands(); parsing stores the chosen
// command's work in `action`, which main() runs after CLI11 is done, so CLI11's own error handling
// only ever sees usage errors.
//
//   sbx::cli::command_action action;
//   sbx::cli::add_policy_commands(app, action);
//   app.parse(argc, argv);
//   return action();
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "policy/store/state_db.hpp"

namespace CLI {
class App;
}

namespace sbx::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;  // the command could not do its work
inline constexpr int exit_usage = 2;    // the command line or a value on it is wrong

// A failure to report as one "sbx: <message>" line on stderr; the message says what to do next.
class command_error : public std::runtime_error {
 public:
  command_error(int exit_code, const std::string& message)
      : std::runtime_error(message), exit_code_(exit_code) {}
  [[nodiscard]] int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

[[nodiscard]] inline command_error usage_error(const std::string& message) {
  return command_error(exit_usage, message);
}
[[nodiscard]] inline command_error failure(const std::string& message) {
  return command_error(exit_failure, message);
}

using command_action = std::function<int()>;

void add_proxy_commands(CLI::App& app, command_action& action);  // proxy, status
void add_policy_commands(CLI::App& app, command_action& action);
void add_policy_log_command(CLI::App& policy, command_action& action);  // policy log
void add_sandbox_commands(CLI::App& app, command_action& action);
void add_reset_command(CLI::App& app, command_action& action);

// The state directory and its database, opened for one command.
struct state {
  std::filesystem::path dir;
  store::state_db db;
};

// Creates the state directory if needed and opens policy.db. A database that never had a preset
// gets the default one, so every command sees the same policy a fresh proxy would enforce.
[[nodiscard]] state open_state();

[[nodiscard]] std::filesystem::path control_socket_path(const std::filesystem::path& state_dir);

// Asks a running proxy to reload its rules now. Best effort: the proxy also polls rules_version,
// so a proxy that is not running or does not answer is not an error.
void notify_rules_changed(const std::filesystem::path& state_dir);

// Throws command_error (exit 1) unless the sandbox exists: a rule or check for a misspelt sandbox
// would otherwise silently apply to nobody.
void require_sandbox(store::state_db& db, std::string_view name);

// "-" for an empty cell, so that columns never collapse.
[[nodiscard]] std::string or_dash(std::string_view text);

// Columns separated by two spaces and aligned on the widest cell; the last column is not padded.
class text_table {
 public:
  explicit text_table(std::vector<std::string> headers);
  void add_row(std::vector<std::string> cells);
  void print(std::FILE* out = stdout) const;

 private:
  std::vector<std::string> headers_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace sbx::cli
