// `sbx`: the one program users run. It wires the libraries together (the only place that does);
// each command group lives in its own file and registers itself on the CLI11 app.
#include <cstdio>
#include <exception>
#include <string>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "policy/rule.hpp"

#ifndef SBX_VERSION
#define SBX_VERSION "unknown"
#endif

namespace {

// The command the user was typing when parsing failed ("sbx policy allow network"), so the hint
// points at the help that explains it.
const CLI::App* deepest_command(const CLI::App& app) {
  const CLI::App* current = &app;
  while (!current->get_subcommands().empty())
    current = current->get_subcommands().front();
  return current;
}

std::string command_path(const CLI::App& app) {
  std::string path = app.get_name();
  const CLI::App* current = &app;
  while (!current->get_subcommands().empty()) {
    current = current->get_subcommands().front();
    path += " " + current->get_name();
  }
  return path;
}

void print_error(const std::string& message) {
  fmt::print(stderr, "sbx: {}\n", message);
}

}  // namespace

int main(int argc, char** argv) {
  // stdout carries command output that scripts parse; diagnostics from any library go to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("sbx"));

  CLI::App app{"sbx - a credential-injecting HTTP(S) egress proxy for AI-agent sandboxes", "sbx"};
  app.set_version_flag("--version", std::string("sbx ") + SBX_VERSION);
  app.require_subcommand(1);
  app.footer(
      "State lives in $SBX_HOME (default ~/.local/state/sbx).\n"
      "Run 'sbx COMMAND --help' for the options of a command.");

  sbx::cli::command_action action;
  sbx::cli::add_proxy_commands(app, action);
  sbx::cli::add_policy_commands(app, action);
  sbx::cli::add_sandbox_commands(app, action);
  sbx::cli::add_secret_commands(app, action);
  sbx::cli::add_ca_commands(app, action);
  sbx::cli::add_reset_command(app, action);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help and --version arrive as "errors" with exit code 0.
    if (e.get_exit_code() == 0) return app.exit(e);
    // CLI11 reports "sbx polcy" as a missing subcommand; the unknown word is the real problem.
    const auto* command = deepest_command(app);
    auto leftover = command->remaining();
    bool missing_command = dynamic_cast<const CLI::RequiredError*>(&e) &&
                           command->get_require_subcommand_min() > 0 &&
                           command->get_subcommands().empty();
    if (missing_command && !leftover.empty()) {
      print_error(fmt::format("unknown command \"{}\"", leftover.front()));
    } else if (missing_command) {
      std::string names;
      for (const auto* sub : command->get_subcommands(std::function<bool(const CLI::App*)>{})) {
        names += (names.empty() ? "" : ", ") + sub->get_name();
      }
      print_error(fmt::format("\"{}\" needs a command: {}", command_path(app), names));
    } else {
      print_error(e.what());
    }
    fmt::print(stderr, "Run '{} --help' for usage.\n", command_path(app));
    return sbx::cli::exit_usage;
  }

  if (!action) {
    // A command group without its subcommand ("sbx policy"): show what it offers.
    fmt::print(stderr, "{}", app.help());
    return sbx::cli::exit_usage;
  }

  try {
    return action();
  } catch (const sbx::cli::command_error& e) {
    print_error(e.what());
    return e.exit_code();
  } catch (const sbx::policy::rule_error& e) {
    print_error(e.what());
    return sbx::cli::exit_usage;
  } catch (const std::exception& e) {
    // store_error, config_error and start-up failures already say what to do next.
    print_error(e.what());
    return sbx::cli::exit_failure;
  }
}
