// `sbx secret set|ls|rm|import`: API keys in the keychain, by scope (global or one sandbox).
#include <termios.h>
#include <unistd.h>

#include <iostream>
#include <iterator>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "config/config.hpp"
#include "keychain/env_import.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::cli {
namespace {

struct secret_scope_args {
  bool global = false;
  std::string sandbox;            // --sandbox NAME
  std::vector<std::string> args;  // SERVICE | SANDBOX SERVICE
};

std::string known_services(const config::settings& s) {
  std::string out;
  for (const auto& svc : s.services) {
    if (!out.empty()) out += ", ";
    out += svc.name;
  }
  return out;
}

// Resolves "SERVICE", "SANDBOX SERVICE", -g and --sandbox into (scope, service).
std::pair<std::string, std::string> scope_and_service(const secret_scope_args& a) {
  std::string scope = a.sandbox;
  std::string service;
  if (a.args.size() == 1) {
    service = a.args[0];
  } else if (a.args.size() == 2) {
    if (!scope.empty()) throw usage_error("give the sandbox either as SANDBOX or with --sandbox");
    scope = a.args[0];
    service = a.args[1];
  } else {
    throw usage_error("expected SERVICE or SANDBOX SERVICE");
  }
  if (a.global && !scope.empty()) {
    throw usage_error("-g/--global and a sandbox exclude each other");
  }
  return {scope, service};
}

const config::service& require_service(const config::settings& s, std::string_view name) {
  if (const auto* svc = s.find_service(name)) return *svc;
  throw usage_error(fmt::format(
      "unknown service \"{}\" (known: {}); define it under \"services\" in the config to use it",
      name, known_services(s)));
}

std::string read_hidden_line(const std::string& prompt) {
  fmt::print(stderr, "{}", prompt);
  std::fflush(stderr);
  termios old{};
  const bool tty = tcgetattr(STDIN_FILENO, &old) == 0;
  if (tty) {
    termios quiet = old;
    quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
  }
  std::string line;
  std::getline(std::cin, line);
  if (tty) tcsetattr(STDIN_FILENO, TCSANOW, &old);
  fmt::print(stderr, "\n");
  return line;
}

keychain::secret read_secret_value(const std::string& token_flag, std::string_view service) {
  std::string value;
  if (!token_flag.empty()) {
    fmt::print(stderr,
               "sbx: warning: a value given with --token stays in your shell history; prefer "
               "stdin or the prompt\n");
    value = token_flag;
  } else if (!isatty(STDIN_FILENO)) {
    value.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
    // `echo KEY | sbx secret set ...` ends with a newline that is not part of the key.
    while (!value.empty() && (value.back() == '\n' || value.back() == '\r'))
      value.pop_back();
  } else {
    value = read_hidden_line(fmt::format("{} API key (input hidden): ", service));
  }
  keychain::secret s{std::move(value)};
  if (auto why = keychain::check_secret_value(s.reveal()); !why.empty()) {
    throw usage_error(fmt::format("refusing this {} secret: {}; nothing was stored", service, why));
  }
  return s;
}

std::string scope_label(std::string_view scope) {
  return scope.empty() ? "(global)" : std::string(scope);
}

int set_secret(const secret_scope_args& a, const std::string& token_flag) {
  auto [scope, service] = scope_and_service(a);
  auto st = open_state();
  const auto settings = config::load(std::nullopt);
  const auto& svc = require_service(settings, service);
  if (!scope.empty()) require_sandbox(st.db, scope);
  auto value = read_secret_value(token_flag, svc.name);
  auto store = open_keychain(st.dir);
  store->set(scope, svc.name, value);
  fmt::print("Stored the {} secret for {} in the {} keychain.\n", svc.name, scope_label(scope),
             store->kind());
  notify_secrets_changed(st.dir);
  return exit_ok;
}

int list_secrets(const secret_scope_args& a, const std::string& service_filter, bool json) {
  if (a.args.size() > 1) throw usage_error("expected at most one SANDBOX");
  std::optional<std::string> scope;
  if (a.global) scope = "";
  if (!a.sandbox.empty()) scope = a.sandbox;
  if (a.args.size() == 1) scope = a.args[0];
  auto dir = config::ensure_state_dir();
  auto store = open_keychain(dir);
  std::optional<std::string_view> scope_view, service_view;
  if (scope) scope_view = *scope;
  if (!service_filter.empty()) service_view = service_filter;
  auto entries = store->list(scope_view, service_view);
  if (json) {
    for (const auto& e : entries) {
      if (e.service == sandbox_token_service) continue;
      fmt::print("{}\n", nlohmann::json{{"scope", e.scope.empty() ? "global" : e.scope},
                                        {"sandbox", e.scope},
                                        {"service", e.service},
                                        {"secret", e.value.masked()}}
                             .dump());
    }
    return exit_ok;
  }
  text_table table({"SCOPE", "SERVICE", "SECRET"});
  for (const auto& e : entries) {
    if (e.service == sandbox_token_service) continue;  // shown by `sbx sandbox ls`, not here
    table.add_row({scope_label(e.scope), e.service, e.value.masked()});
  }
  table.print();
  return exit_ok;
}

int remove_secret(const secret_scope_args& a, bool force) {
  auto [scope, service] = scope_and_service(a);
  auto dir = config::ensure_state_dir();
  if (!force) {
    if (!isatty(STDIN_FILENO)) {
      throw usage_error(
          fmt::format("not removing the {} secret for {} without -f", service, scope_label(scope)));
    }
    fmt::print(stderr, "Remove the {} secret for {}? [y/N] ", service, scope_label(scope));
    std::string answer;
    std::getline(std::cin, answer);
    if (answer != "y" && answer != "Y" && answer != "yes") return exit_failure;
  }
  auto store = open_keychain(dir);
  if (!store->remove(scope, service)) {
    throw failure(fmt::format("no {} secret stored for {} (see `sbx secret ls`)", service,
                              scope_label(scope)));
  }
  fmt::print("Removed the {} secret for {}.{}\n", service, scope_label(scope),
             scope.empty() ? "" : " The global one, if any, applies to this sandbox again.");
  notify_secrets_changed(dir);
  return exit_ok;
}

int import_secrets(const std::vector<std::string>& services, const std::string& sandbox) {
  auto st = open_state();
  const auto settings = config::load(std::nullopt);
  if (!sandbox.empty()) require_sandbox(st.db, sandbox);
  std::vector<keychain::service_env> wanted;
  if (services.empty()) {
    for (const auto& svc : settings.services)
      wanted.push_back({svc.name, svc.env});
  } else {
    for (const auto& name : services) {
      const auto& svc = require_service(settings, name);
      wanted.push_back({svc.name, svc.env});
    }
  }
  auto store = open_keychain(st.dir);
  auto result = keychain::import_from_environment(*store, sandbox, wanted);
  for (const auto& s : result.imported) {
    fmt::print("Imported {} for {}.\n", s, scope_label(sandbox));
  }
  for (const auto& s : result.rejected) {
    fmt::print(stderr,
               "sbx: the {} value in the environment has control characters or spaces; "
               "not imported\n",
               s);
  }
  if (!services.empty()) {
    for (const auto& s : result.missing) {
      fmt::print(stderr, "sbx: no environment variable set for {}\n", s);
    }
  }
  if (result.imported.empty()) {
    fmt::print(stderr, "sbx: nothing imported (set e.g. OPENAI_API_KEY and run again)\n");
  }
  if (!result.imported.empty()) notify_secrets_changed(st.dir);
  return result.rejected.empty() && !result.imported.empty() ? exit_ok : exit_failure;
}

void add_scope_options(CLI::App* cmd, secret_scope_args& a) {
  cmd->add_flag("-g,--global", a.global, "The global scope (the default)");
  cmd->add_option("--sandbox", a.sandbox, "A sandbox's own scope");
}

}  // namespace

void add_secret_commands(CLI::App& app, command_action& action) {
  auto* secret = app.add_subcommand("secret", "Manage API keys injected into sandbox requests");
  secret->require_subcommand(1);

  static secret_scope_args set_args, ls_args, rm_args;
  static std::string token, service_filter, import_sandbox;
  static bool json = false, force = false;
  static std::vector<std::string> import_services;

  auto* set = secret->add_subcommand(
      "set", "Store a secret: sbx secret set [-g] SERVICE, or sbx secret set SANDBOX SERVICE");
  add_scope_options(set, set_args);
  set->add_option("args", set_args.args, "SERVICE, or SANDBOX SERVICE")->required()->expected(1, 2);
  set->add_option("-t,--token", token, "The value (stays in shell history: prefer stdin)");
  set->callback([&action] { action = [] { return set_secret(set_args, token); }; });

  auto* ls = secret->add_subcommand("ls", "List stored secrets, masked");
  add_scope_options(ls, ls_args);
  ls->add_option("sandbox", ls_args.args, "Only this sandbox's secrets")->expected(0, 1);
  ls->add_option("--service", service_filter, "Only this service");
  ls->add_flag("--json", json, "One JSON object per line");
  ls->callback([&action] { action = [] { return list_secrets(ls_args, service_filter, json); }; });

  auto* rm = secret->add_subcommand("rm", "Remove a secret: sbx secret rm [-g|SANDBOX] SERVICE");
  add_scope_options(rm, rm_args);
  rm->add_option("args", rm_args.args, "SERVICE, or SANDBOX SERVICE")->required()->expected(1, 2);
  rm->add_flag("-f,--force", force, "Do not ask for confirmation");
  rm->callback([&action] { action = [] { return remove_secret(rm_args, force); }; });

  auto* import = secret->add_subcommand(
      "import", "Import secrets from the services' environment variables (OPENAI_API_KEY, ...)");
  import->add_option("services", import_services, "Services to import (default: all)");
  import->add_option("--sandbox", import_sandbox,
                     "Store them for this sandbox instead of globally");
  import->callback(
      [&action] { action = [] { return import_secrets(import_services, import_sandbox);
};
}  // namespace sbx::cli
);
}

}  // namespace sbx::cli
