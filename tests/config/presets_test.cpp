#include <doctest/doctest.h>

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "config/config.hpp"

using sbx::config::config_error;
using sbx::config::preset_rules;
using sbx::policy::action;
using sbx::policy::resource;
using sbx::policy::rule_set;

namespace {

bool allows(const rule_set& rules, std::string_view host) {
  return rules.decide({.host = host, .port = 443}).allowed();
}

bool has_exact_host_rule(const std::vector<sbx::policy::rule>& rules, std::string_view host) {
  return std::any_of(rules.begin(), rules.end(), [&](const auto& r) {
    return r.res.k == resource::kind::host && r.res.host == host && !r.res.port;
  });
}

}  // namespace

TEST_CASE("the presets are allow-all, balanced and deny-all") {
  CHECK(sbx::config::preset_names() ==
        std::vector<std::string>{"allow-all", "balanced", "deny-all"});
  auto names = sbx::config::preset_names();
  CHECK(std::find(names.begin(), names.end(), sbx::config::default_preset) != names.end());
  for (const auto& name : names) {
    CAPTURE(name);
    CHECK_FALSE(sbx::config::preset_description(name).empty());
  }
}

TEST_CASE("allow-all is one rule allowing everything") {
  auto rules = preset_rules("allow-all");
  REQUIRE(rules.size() == 1);
  CHECK(rules[0].act == action::allow);
  CHECK(rules[0].res.k == resource::kind::everything);
  CHECK(rules[0].res.text() == "**");
  CHECK(rules[0].source == sbx::policy::rule_source::preset);
  CHECK(rules[0].sandbox.empty());
}

TEST_CASE("deny-all has no rules") {
  CHECK(preset_rules("deny-all").empty());
}

TEST_CASE("every preset rule is a global preset rule that round-trips through parse_resource") {
  for (const auto& name : sbx::config::preset_names()) {
    CAPTURE(name);
    std::set<std::string> seen;
    for (const auto& r : preset_rules(name)) {
      CAPTURE(r.res.text());
      CHECK(r.id == 0);
      CHECK(r.sandbox.empty());
      CHECK(r.source == sbx::policy::rule_source::preset);
      CHECK_FALSE(r.has_http_conditions());
      CHECK(sbx::policy::parse_resource(r.res.text()).text() == r.res.text());
      CHECK(seen.insert(r.res.text()).second);
    }
  }
}

TEST_CASE("balanced allows the curated hosts and nothing else") {
  auto rules = preset_rules("balanced");
  CHECK(rules.size() > 50);
  CHECK(std::all_of(rules.begin(), rules.end(), [](const auto& r) {
    return r.act == action::allow && r.res.k != resource::kind::everything &&
           r.res.k != resource::kind::network;
  }));
  CHECK(has_exact_host_rule(rules, "registry.npmjs.org"));
  CHECK(has_exact_host_rule(rules, "api.openai.com"));
  CHECK(has_exact_host_rule(rules, "pypi.org"));

  rule_set set(rules);
  for (auto host :
       {"registry.npmjs.org", "files.pythonhosted.org", "index.crates.io", "proxy.golang.org",
        "deb.debian.org", "dl-cdn.alpinelinux.org", "github.com", "codeload.github.com",
        "gitlab.com", "registry-1.docker.io", "ghcr.io", "mcr.microsoft.com", "r10.o.lencr.org",
        "ocsp.digicert.com", "ocsp.r2m01.amazontrust.com", "huggingface.co", "api.deepseek.com"}) {
    CAPTURE(host);
    CHECK(allows(set, host));
  }
  for (auto host : {"example.com", "evil.npmjs.org.attacker.example", "storage.googleapis.com",
                    "pastebin.com", "npmjs.org.evil.example"}) {
    CAPTURE(host);
    CHECK_FALSE(allows(set, host));
  }
}

TEST_CASE("balanced allows every host of the service catalogue") {
  auto s = sbx::config::load_from_string("{}", "test.json");
  rule_set set(preset_rules("balanced"));
  for (const auto& svc : s.services) {
    for (const auto& host : svc.hosts) {
      CAPTURE(host);
      CHECK(allows(set, host));
    }
  }
}

TEST_CASE("an unknown preset is an error listing the known ones") {
  try {
    (void)preset_rules("strict");
    FAIL("no error for an unknown preset");
  } catch (const config_error& e) {
    CHECK(std::string(e.what()) ==
          "unknown preset \"strict\" (known: allow-all, balanced, deny-all)");
  }
  CHECK_THROWS_AS((void)sbx::config::preset_description("strict"), config_error);
  CHECK_THROWS_AS((void)preset_rules(""), config_error);
}
