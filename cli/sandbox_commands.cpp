// `sbx sandbox add|ls|rm`: sandbox identities. A sandbox proves who it is with a token that only
// its hash is stored for, so the token is printed exactly once, at creation.
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "config/config.hpp"
#include "policy/store/sandbox_token.hpp"
#include "policy/store/state_db.hpp"

namespace sbx::cli {
namespace {

// Where sandboxes reach the proxy: the configured listen address. A broken config must not stop
// a sandbox from being created, so fall back to the default the proxy would use.
std::string proxy_listen_address() {
  try {
    return config::load(std::nullopt).listen;
  } catch (const std::exception&) {
    return config::settings{}.listen;
  }
}

void validate_name(const std::string& name) {
  try {
    store::validate_sandbox_name(name);
  } catch (const store::store_error& e) {
    throw usage_error(e.what());
  }
}

// --source values, each one or a comma-separated list of addresses or CIDRs.
std::vector<policy::ip_network> parse_sources(const std::vector<std::string>& values) {
  std::vector<policy::ip_network> out;
  for (const auto& value : values) {
    std::string_view rest = value;
    while (true) {
      const auto comma = rest.find(',');
      const auto item = rest.substr(0, comma);
      try {
        out.push_back(store::parse_source_network(item));
      } catch (const store::store_error& e) {
        throw usage_error(e.what());
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return out;
}

std::string sources_text(const std::vector<policy::ip_network>& sources) {
  std::string out;
  for (const auto& n : sources) {
    if (!out.empty()) out += ',';
    // A single address reads better without its /32 or /128.
    auto text = n.to_string();
    if ((!n.base.v6 && n.prefix == 32) || (n.base.v6 && n.prefix == 128)) {
      text = text.substr(0, text.rfind('/'));
    }
    out += text;
  }
  return out;
}

int run_add(const std::string& name, const std::vector<std::string>& source_values) {
  validate_name(name);
  const auto sources = parse_sources(source_values);
  auto st = open_state();
  if (st.db.token_hash(name)) {
    throw failure(fmt::format(
        "sandbox \"{}\" already exists; remove it with `sbx sandbox rm {}` to issue a new token",
        name, name));
  }
  auto token = store::make_sandbox_token();
  st.db.add_sandbox(name, store::hash_sandbox_token(token), sources);
  notify_rules_changed(st.dir);
  // The token itself goes to the keychain, so `sbx sandbox env` can print the proxy URL later.
  bool remembered = false;
  try {
    open_keychain(st.dir, /*quiet=*/true)
        ->set(name, sandbox_token_service, keychain::secret{token});
    remembered = true;
  } catch (const std::exception& e) {
    fmt::print(stderr, "sbx: warning: could not keep the token in the keychain ({}); save it now\n",
               e.what());
  }

  auto proxy_url = fmt::format("http://{}:{}@{}", name, token, proxy_listen_address());
  fmt::print(
      "Created sandbox \"{0}\".\n"
      "Token: {1}\n"
      "{3}\n"
      "Point the sandbox at the proxy with these credentials:\n"
      "  HTTP_PROXY={2}\n"
      "  HTTPS_PROXY={2}\n"
      "or get its whole environment with: sbx sandbox env {0}\n",
      name, token, proxy_url,
      remembered
          ? "policy.db keeps only its hash; the keychain keeps the token for `sbx sandbox env`."
          : "This token will not be shown again: only its hash is stored.");
  if (!sources.empty()) {
    fmt::print(
        "Traffic from {} is sandbox \"{}\" with or without the token; another sandbox's token "
        "from there is refused.\n",
        sources_text(sources), name);
  }
  return exit_ok;
}

int run_ls(bool json) {
  auto st = open_state();
  auto sandboxes = st.db.sandboxes();
  if (json) {
    auto out = nlohmann::json::array();
    for (const auto& s : sandboxes)
      out.push_back({{"name", s.name}, {"created", s.created}, {"sources", [&] {
                                                                  auto list =
                                                                      nlohmann::json::array();
                                                                  for (const auto& n : s.sources)
                                                                    list.push_back(n.to_string());
                                                                  return list;
                                                                }()}});
    fmt::print("{}\n", out.dump(2));
    return exit_ok;
  }
  text_table table({"NAME", "CREATED", "SOURCES"});
  for (const auto& s : sandboxes)
    table.add_row({s.name, s.created, s.sources.empty() ? "-" : sources_text(s.sources)});
  table.print();
  return exit_ok;
}

int run_rm(const std::string& name) {
  auto st = open_state();
  if (!st.db.remove_sandbox(name)) {
    throw failure(fmt::format("no sandbox named \"{}\"; see `sbx sandbox ls`", name));
  }
  notify_rules_changed(st.dir);
  // Its token and its own secrets go with it, so a later sandbox of the same name starts clean.
  try {
    auto keys = open_keychain(st.dir, /*quiet=*/true);
    for (const auto& e : keys->list(std::string_view(name)))
      keys->remove(name, e.service);
    notify_secrets_changed(st.dir);
  } catch (const std::exception& e) {
    fmt::print(stderr, "sbx: warning: could not remove the sandbox's keychain entries: {}\n",
               e.what());
  }
  fmt::print("Removed sandbox \"{}\" and its rules.\n", name);
  return exit_ok;
}

}  // namespace

void add_sandbox_commands(CLI::App& app, command_action& action) {
  auto* sandbox = app.add_subcommand("sandbox", "Manage sandbox identities (proxy credentials)");
  sandbox->require_subcommand(1);

  auto* add = sandbox->add_subcommand("add", "Create a sandbox and print its token (once)");
  auto add_name = std::make_shared<std::string>();
  add->add_option("name", *add_name, "1-63 of a-z 0-9 - _, starting with a letter or digit")
      ->required();
  auto add_sources = std::make_shared<std::vector<std::string>>();
  add->add_option("--source", *add_sources,
                  "Address or CIDR the sandbox's traffic comes from (a container's or microVM's "
                  "IP): such traffic is this sandbox with or without its token. Repeatable, or "
                  "comma-separated")
      ->type_name("CIDR")
      ->allow_extra_args(false);  // `--source A NAME` must not take NAME as a second source
  add->callback([add_name, add_sources, &action] {
    action = [add_name, add_sources] { return run_add(*add_name, *add_sources); };
  });

  add_sandbox_env_command(*sandbox, action);

  auto* ls = sandbox->add_subcommand("ls", "List sandboxes");
  auto ls_json = std::make_shared<bool>(false);
  ls->add_flag("--json", *ls_json, "Print a JSON array");
  ls->callback([ls_json, &action] { action = [ls_json] { return run_ls(*ls_json); }; });

  auto* rm = sandbox->add_subcommand("rm", "Remove a sandbox, its token and its rules");
  auto rm_name = std::make_shared<std::string>();
  rm->add_option("name", *rm_name, "The sandbox to remove")->required();
  rm->callback([rm_name, &action] { action = [rm_name] { return run_rm(*rm_name); }; });
}

}  // namespace sbx::cli
