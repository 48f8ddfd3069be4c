// `sbx policy init|allow|deny|ls|rm|check`: editing and querying the rules in policy.db.
#include <algorithm>
#include <charconv>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "config/config.hpp"
#include "policy/rule.hpp"
#include "policy/store/sandbox_token.hpp"
#include "policy/store/state_db.hpp"
#include "proxy/http_checks.hpp"

namespace sbx::cli {
namespace {

using policy::action;

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

bool same_rule(const policy::rule& a, const policy::rule& b) {
  return a.sandbox == b.sandbox && a.act == b.act && a.res.text() == b.res.text() &&
         a.methods == b.methods && a.path == b.path;
}

// --- init ---

int run_init(const std::string& preset) {
  auto names = config::preset_names();
  if (std::find(names.begin(), names.end(), preset) == names.end()) {
    throw usage_error(
        fmt::format("unknown preset \"{}\"; choose one of: {}", preset, join(names, ", ")));
  }
  auto st = open_state();
  auto rules = config::preset_rules(preset);
  st.db.replace_presets(rules, preset);
  notify_rules_changed(st.dir);
  fmt::print("Applied preset \"{}\": {} preset rule(s); local rules are kept.\n", preset,
             rules.size());
  return exit_ok;
}

// --- allow / deny ---

struct add_options {
  action act = action::allow;
  std::vector<std::string> resources;  // each may hold a comma-separated list
  std::string sandbox;
  std::string methods;
  std::string path;
};

int run_add(const add_options& opts) {
  // Every resource is validated before anything is stored: a typo in the third resource must not
  // leave the first two half-applied.
  std::vector<policy::rule> wanted;
  for (const auto& argument : opts.resources) {
    std::string_view rest = argument;
    while (true) {
      auto comma = rest.find(',');
      auto item = proxy::trim_ows(rest.substr(0, comma));
      if (item.empty()) {
        throw usage_error(fmt::format(
            "invalid rule \"{}\": empty resource in the list; separate resources with single "
            "commas",
            argument));
      }
      try {
        wanted.push_back(
            policy::make_rule(0, opts.sandbox, opts.act, item, opts.methods, opts.path));
      } catch (const policy::rule_error& e) {
        throw usage_error(fmt::format("invalid rule \"{}\": {}", item, e.what()));
      }
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  if (!opts.sandbox.empty()) {
    try {
      store::validate_sandbox_name(opts.sandbox);
    } catch (const store::store_error& e) {
      throw usage_error(e.what());
    }
  }

  auto st = open_state();
  if (!opts.sandbox.empty()) require_sandbox(st.db, opts.sandbox);

  // A rule that already exists as a local rule is reported, not duplicated: running the same
  // command twice should not leave two rows to remove later.
  auto existing = st.db.load_rules();
  struct planned {
    const policy::rule* existing = nullptr;  // set: nothing to add
    std::size_t new_index = 0;               // else: position in to_add
  };
  std::vector<planned> plan;
  std::vector<policy::rule> to_add;
  for (const auto& rule : wanted) {
    auto same = [&](const policy::rule& r) { return same_rule(r, rule); };
    if (std::any_of(to_add.begin(), to_add.end(), same)) continue;
    auto found = std::find_if(existing.begin(), existing.end(), [&](const policy::rule& r) {
      return r.source == policy::rule_source::local && same(r);
    });
    if (found != existing.end()) {
      plan.push_back({.existing = &*found});
    } else {
      plan.push_back({.new_index = to_add.size()});
      to_add.push_back(rule);
    }
  }
  std::vector<std::int64_t> ids;
  if (!to_add.empty()) {
    ids = st.db.add_rules(to_add);
    notify_rules_changed(st.dir);
  }
  for (const auto& p : plan) {
    if (p.existing) {
      fmt::print("Rule {} already exists: {}\n", p.existing->id, p.existing->describe());
    } else {
      fmt::print("Added rule {}: {}\n", ids.at(p.new_index), to_add[p.new_index].describe());
    }
  }
  return exit_ok;
}

// --- ls ---

struct ls_options {
  std::string sandbox;
  bool json = false;
};

int run_ls(const ls_options& opts) {
  auto st = open_state();
  if (!opts.sandbox.empty()) require_sandbox(st.db, opts.sandbox);
  auto rules = st.db.load_rules();
  // With --sandbox: the rules that sandbox sees, i.e. the global ones and its own.
  std::erase_if(rules, [&](const policy::rule& r) {
    return !opts.sandbox.empty() && !r.sandbox.empty() && r.sandbox != opts.sandbox;
  });
  std::sort(rules.begin(), rules.end(), [](const auto& a, const auto& b) { return a.id < b.id; });

  if (opts.json) {
    auto out = nlohmann::json::array();
    for (const auto& r : rules) {
      out.push_back({
          {"id", r.id},
          {"sandbox", r.sandbox.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.sandbox)},
          {"decision", policy::to_string(r.act)},
          {"resource", r.res.text()},
          {"methods", r.methods},
          {"path", r.path.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.path)},
          {"source", policy::to_string(r.source)},
      });
    }
    fmt::print("{}\n", out.dump(2));
    return exit_ok;
  }

  text_table table({"ID", "SCOPE", "DECISION", "RESOURCE", "METHOD", "PATH", "SOURCE"});
  for (const auto& r : rules) {
    table.add_row({std::to_string(r.id), r.sandbox.empty() ? "(global)" : r.sandbox,
                   std::string(policy::to_string(r.act)), r.res.text(),
                   r.methods.empty() ? "*" : join(r.methods, ","), r.path.empty() ? "*" : r.path,
                   std::string(policy::to_string(r.source))});
  }
  table.print();
  return exit_ok;
}

// --- rm ---

struct rm_options {
  std::int64_t id = 0;
  std::string resource;
  std::string sandbox;
  bool by_resource = false;
};

int run_rm(const rm_options& opts) {
  if (opts.by_resource) {
    std::string canonical;
    try {
      canonical = policy::parse_resource(opts.resource).text();
    } catch (const policy::rule_error& e) {
      throw usage_error(fmt::format("invalid resource \"{}\": {}", opts.resource, e.what()));
    }
    auto st = open_state();
    auto removed = st.db.remove_rules_for(canonical, opts.sandbox);
    if (removed == 0) {
      throw failure(fmt::format("no rule for \"{}\" in scope {}; see `sbx policy ls{}`", canonical,
                                opts.sandbox.empty() ? "(global)" : opts.sandbox,
                                opts.sandbox.empty() ? "" : " --sandbox " + opts.sandbox));
    }
    notify_rules_changed(st.dir);
    fmt::print("Removed {} rule(s) for {} ({})\n", removed, canonical,
               opts.sandbox.empty() ? "global" : "sandbox " + opts.sandbox);
    return exit_ok;
  }
  auto st = open_state();
  if (!st.db.remove_rule(opts.id)) {
    throw failure(fmt::format("no rule with ID {}; see `sbx policy ls`", opts.id));
  }
  notify_rules_changed(st.dir);
  fmt::print("Removed rule {}\n", opts.id);
  return exit_ok;
}

// --- check ---

struct check_options {
  std::string target;
  std::string sandbox;
  std::string config_file;
  bool json = false;
};

// TARGET forms: host, host:port, IPv4, IPv6 (bare or [v6]:port), or a URL whose scheme gives the
// default port (http 80, anything else 443, which is what a sandbox mostly reaches through
// CONNECT). Parsed by the proxy's own parsers (the CONNECT authority and the absolute-form target),
// so the answer is about the destination the proxy would see.
proxy::authority parse_target(std::string_view target) {
  const auto invalid = [&](std::string_view why) {
    return usage_error(fmt::format("invalid target \"{}\": {}", target, why));
  };
  std::optional<proxy::authority> parsed;
  if (const auto scheme_end = target.find("://"); scheme_end != std::string_view::npos) {
    std::string scheme(target.substr(0, scheme_end));
    std::transform(scheme.begin(), scheme.end(), scheme.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    auto rest = target.substr(scheme_end + 3);
    const auto authority_end = rest.find_first_of("/?#");
    auto authority = rest.substr(0, authority_end);
    // user:password@ is not part of the destination (the proxy refuses it in a request target).
    if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
      authority.remove_prefix(at + 1);
    }
    if (scheme == "http" || scheme == "https") {
      std::string url = scheme + "://" + std::string(authority);
      if (authority_end != std::string_view::npos) url += rest.substr(authority_end);
      if (auto absolute = proxy::parse_absolute_target(url)) parsed = std::move(absolute->where);
    } else {
      parsed = proxy::parse_authority(authority, 443);
    }
  } else if (std::count(target.begin(), target.end(), ':') >= 2 && !target.starts_with('[')) {
    // More than one ':' without brackets can only be a bare IPv6 address.
    parsed = proxy::parse_authority(fmt::format("[{}]", target), 443);
  } else {
    parsed = proxy::parse_authority(target, 443);
  }
  if (!parsed) {
    throw invalid("give a host, host:port, IP, [v6]:port or URL with a port in 1-65535");
  }
  return std::move(*parsed);
}

// The address the proxy would connect to without asking DNS: the config's `resolve` override,
// which the proxy treats exactly like a DNS answer, or the literal itself.
std::optional<policy::ip_address> known_address(const proxy::authority& t,
                                                const config::settings& settings) {
  if (auto override = settings.resolve_override(t.host, t.port)) {
    return policy::ip_address::parse(override->ip);
  }
  return policy::ip_address::parse(t.host);
}

int run_check(const check_options& opts) {
  auto target = parse_target(opts.target);
  std::optional<std::filesystem::path> file;
  if (!opts.config_file.empty()) file = opts.config_file;
  auto settings = config::load(file);

  auto st = open_state();
  if (!opts.sandbox.empty()) require_sandbox(st.db, opts.sandbox);
  policy::rule_set rules(st.db.load_rules());

  // As the proxy decides (choose_upstream): by name first, and only a name allowed by name goes on
  // to its address. No DNS query is made here; the proxy makes one only for such a name.
  policy::facts facts{.sandbox = opts.sandbox, .host = target.host, .port = target.port};
  auto decision = rules.decide(facts);
  std::optional<policy::ip_address> address;
  if (decision.allowed()) address = known_address(target, settings);
  if (address) {
    facts.address = address;
    decision = rules.decide(facts);
  }
  bool intercept =
      decision.allowed() && rules.needs_interception(opts.sandbox, target.host, target.port);

  if (opts.json) {
    nlohmann::json out = {
        {"target", opts.target},         {"host", target.host},
        {"port", target.port},           {"decision", policy::to_string(decision.act)},
        {"rule", decision.rule_label()}, {"reason", decision.reason},
        {"intercept", intercept},
    };
    fmt::print("{}\n", out.dump());
    return exit_ok;
  }
  fmt::print("{}: {}\n", decision.allowed() ? "Allowed" : "Denied", target.text());
  fmt::print("Reason: {}\n", decision.reason);
  if (intercept) fmt::print("Intercepted: yes (method/path rules)\n");
  if (decision.allowed() && !address) {
    fmt::print(
        "Note: {} was not resolved here; the proxy checks every address DNS returns for it "
        "(blocked ranges, CIDR rules)\n",
        target.host);
  }
  return exit_ok;
}

// --- registration ---

void add_rule_command(CLI::App& policy, command_action& action, policy::action act) {
  auto verb = std::string(policy::to_string(act));
  auto* cmd = policy.add_subcommand(verb, act == action::allow ? "Allow traffic to a destination"
                                                               : "Deny traffic to a destination");
  cmd->require_subcommand(1);
  auto* network = cmd->add_subcommand(
      "network", fmt::format("{} network destinations (hosts, wildcards, host:port, CIDR, **)",
                             act == action::allow ? "Allow" : "Deny"));
  auto opts = std::make_shared<add_options>();
  opts->act = act;
  network
      ->add_option("resources", opts->resources,
                   "RES[,RES...]: example.com, *.example.com, **.example.com, host:port, "
                   "10.0.0.0/8, [::1], **")
      ->required();
  network->add_option("--sandbox", opts->sandbox, "Apply only to this sandbox")->type_name("NAME");
  network->add_option("--method", opts->methods, "Only these HTTP methods (forces interception)")
      ->type_name("GET,POST");
  network->add_option("--path", opts->path, "Only this path pattern (forces interception)")
      ->type_name("/v1/**");
  network->footer(
      fmt::format("Examples:\n  sbx policy {0} network example.com,*.example.org\n"
                  "  sbx policy {0} network api.github.com --method GET --path /repos/**\n"
                  "  sbx policy {0} network 10.0.0.0/8 --sandbox dev",
                  verb));
  network->callback([opts, &action] { action = [opts] { return run_add(*opts); }; });
}

}  // namespace

void add_policy_commands(CLI::App& app, command_action& action) {
  auto* policy = app.add_subcommand("policy", "Manage network rules and read the decision log");
  policy->require_subcommand(1);
  policy->footer(
      "Evaluation: deny beats allow; without a matching allow rule traffic is denied.\n"
      "Changes reach a running proxy within a second.");

  auto* init = policy->add_subcommand("init", "Replace the preset rules (local rules are kept)");
  auto preset = std::make_shared<std::string>();
  init->add_option("preset", *preset, "allow-all | balanced | deny-all")->required();
  init->callback([preset, &action] { action = [preset] { return run_init(*preset); }; });

  add_rule_command(*policy, action, action::allow);
  add_rule_command(*policy, action, action::deny);

  auto* ls = policy->add_subcommand("ls", "List rules");
  auto ls_opts = std::make_shared<ls_options>();
  ls->add_option("--sandbox", ls_opts->sandbox, "Show the rules this sandbox sees (global + own)")
      ->type_name("NAME");
  ls->add_flag("--json", ls_opts->json, "Print a JSON array");
  ls->callback([ls_opts, &action] { action = [ls_opts] { return run_ls(*ls_opts); }; });

  auto* rm = policy->add_subcommand("rm", "Remove rules by resource or by ID");
  rm->require_subcommand(0, 1);
  auto rm_opts = std::make_shared<rm_options>();
  auto* rm_id = rm->add_option("--id", rm_opts->id, "Remove the rule with this ID");
  auto* rm_network = rm->add_subcommand("network", "Remove the rules for a network resource");
  rm_network
      ->add_option("--resource", rm_opts->resource, "The resource as shown by `sbx policy ls`")
      ->required()
      ->type_name("RES");
  rm_network->add_option("--sandbox", rm_opts->sandbox, "The sandbox the rules belong to")
      ->type_name("NAME");
  rm->footer("Examples:\n  sbx policy rm network --resource example.com\n  sbx policy rm --id 12");
  rm->callback([rm_id, rm_network, rm_opts, &action] {
    bool by_id = rm_id->count() > 0;
    bool by_resource = rm_network->parsed();
    if (by_id == by_resource) {
      throw CLI::ValidationError("give either --id ID or network --resource RES");
    }
    rm_opts->by_resource = by_resource;
    action = [rm_opts] { return run_rm(*rm_opts); };
  });

  auto* check = policy->add_subcommand("check", "Show whether a destination would be allowed");
  check->require_subcommand(1);
  auto* check_network = check->add_subcommand("network", "Check a network destination");
  auto check_opts = std::make_shared<check_options>();
  check_network
      ->add_option("target", check_opts->target,
                   "host, host:port, IP, [v6]:port or URL (http -> 80, otherwise 443)")
      ->required();
  check_network->add_option("--sandbox", check_opts->sandbox, "Check as this sandbox")
      ->type_name("NAME");
  check_network
      ->add_option("--config", check_opts->config_file,
                   "Config file whose `resolve` map applies (default: $SBX_CONFIG)")
      ->type_name("FILE");
  check_network->add_flag("--json", check_opts->json, "Print one JSON object");
  check_network->footer(
      "Decided as the proxy decides: by name first (CIDR allow rules apply to IP literals and to\n"
      "names a name rule allows), then by address. No DNS lookup is made: the address checks\n"
      "apply to IP literals and to the config's `resolve` overrides only.");
  check_network->callback(
      [check_opts, &action] { action = [check_opts] { return run_check(*check_opts); }; });

  add_policy_log_command(*policy, action);
}

}  // namespace sbx::cli
