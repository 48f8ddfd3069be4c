// rule_set: matching, precedence, scoping, HTTP conditions and blocked addresses.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/rule.hpp"

using sbx::policy::action;
using sbx::policy::decision;
using sbx::policy::facts;
using sbx::policy::ip_address;
using sbx::policy::make_rule;
using sbx::policy::rule;
using sbx::policy::rule_set;

namespace {

struct spec {
  std::int64_t id;
  std::string sandbox;
  action act;
  std::string_view resource;
  std::string_view methods = {};
  std::string_view path = {};
};

rule_set rules_of(std::initializer_list<spec> specs) {
  std::vector<rule> rules;
  for (const auto& s : specs) {
    rules.push_back(make_rule(s.id, s.sandbox, s.act, s.resource, s.methods, s.path));
  }
  return rule_set(std::move(rules));
}

std::optional<ip_address> addr(std::string_view text) {
  const auto a = ip_address::parse(text);
  REQUIRE_MESSAGE(a.has_value(), text);
  return a;
}

constexpr std::string_view default_deny = "no matching allow rule (default deny)";

std::string blocked_reason(std::string_view address, std::string_view range) {
  return std::string(address) + " is in a blocked address range (" + std::string(range) +
         "); allow the exact host or a CIDR containing it to reach it";
}

}  // namespace

TEST_CASE("each resource form matches the hosts, addresses and ports it names") {
  struct row {
    std::string_view resource;
    std::string_view host;
    std::uint16_t port;
    bool matches;
  };
  const row rows[] = {
      {"example.com", "example.com", 443, true},
      {"example.com", "example.com", 80, true},
      {"example.com", "EXAMPLE.Com", 443, true},
      {"example.com", "example.com.", 443, true},
      {"example.com", "www.example.com", 443, false},
      {"example.com", "notexample.com", 443, false},
      {"example.com", "example.com.evil.net", 443, false},
      {"example.com", "example.co", 443, false},
      {"example.com", "", 443, false},
      {"example.com:443", "example.com", 443, true},
      {"example.com:443", "example.com", 8443, false},
      {"*.example.com", "www.example.com", 443, true},
      {"*.example.com", "WWW.example.com.", 80, true},
      {"*.example.com", "a.b.example.com", 443, false},
      {"*.example.com", "example.com", 443, false},
      {"*.example.com", "wwwexample.com", 443, false},
      {"*.example.com", ".example.com", 443, false},
      {"*.example.com:443", "www.example.com", 443, true},
      {"*.example.com:443", "www.example.com", 80, false},
      {"**.example.com", "www.example.com", 443, true},
      {"**.example.com", "a.b.c.example.com", 443, true},
      {"**.example.com", "example.com", 443, false},
      {"**.example.com", "badexample.com", 443, false},
      {"**.example.com", "a..example.com", 443, false},
      {"**.example.com", "www.example.com:443", 443, false},
      {"**.example.com:8443", "a.b.example.com", 8443, true},
      {"**.example.com:8443", "a.b.example.com", 443, false},
      {"**", "anything.at.all", 1, true},
      {"**", "192.0.2.1", 443, true},
      {"**", "[2001:db8::1]", 443, true},
      {"**", "", 443, true},
      {"**:443", "example.com", 443, true},
      {"**:443", "example.com", 80, false},
      {"192.0.2.1", "192.0.2.1", 443, true},
      {"192.0.2.1", "192.0.2.2", 443, false},
      {"192.0.2.1", "example.com", 443, false},
      {"192.0.2.1:443", "192.0.2.1", 443, true},
      {"192.0.2.1:443", "192.0.2.1", 80, false},
      {"10.0.0.0/8", "10.20.30.40", 80, true},
      {"10.0.0.0/8", "11.0.0.1", 80, false},
      {"10.0.0.0/8:22", "10.0.0.1", 22, true},
      {"10.0.0.0/8:22", "10.0.0.1", 80, false},
      {"[::1]", "[::1]", 443, true},
      {"[::1]", "::1", 443, true},
      {"[::1]", "[::2]", 443, false},
      {"[::1]:443", "[::1]", 443, true},
      {"[::1]:443", "[::1]", 80, false},
      {"2001:db8::/32", "[2001:db8::5]", 443, true},
      {"2001:db8::/32", "2001:db9::5", 443, false},
      // A host rule never matches an IP literal, and an IPv4 rule matches the mapped literal.
      {"**.2.0.192.in-addr.arpa", "192.0.2.1", 443, false},
      {"192.0.2.1", "[::ffff:192.0.2.1]", 443, true},
      {"::ffff:192.0.2.0/120", "192.0.2.1", 443, true},
      {"::ffff:192.0.2.0/120", "192.0.3.1", 443, false},
      {"::/0", "192.0.2.1", 443, true},
  };
  for (const auto& r : rows) {
    CAPTURE(r.resource);
    CAPTURE(r.host);
    CAPTURE(r.port);
    const auto set = rules_of({{1, "", action::allow, r.resource}});
    const auto d = set.decide({.host = r.host, .port = r.port});
    CHECK(d.allowed() == r.matches);
    CHECK(d.rule_id == (r.matches ? 1 : 0));
    CHECK_FALSE(d.blocked_address);
  }
}

TEST_CASE("a host rule never matches an IP literal, even one equal to its text") {
  rule r = make_rule(1, "", action::allow, "example.com");
  r.res.host = "192.0.2.1";  // not something make_rule accepts; the engine must still refuse
  const rule_set set({r});
  CHECK_FALSE(set.decide({.host = "192.0.2.1", .port = 443}).allowed());
}

TEST_CASE("a network rule built by hand with host bits set still matches its network") {
  rule r = make_rule(1, "", action::allow, "10.0.0.0/8");
  r.res.network.base = *ip_address::parse("10.1.2.3");
  const rule_set set({r});
  CHECK(set.decide({.host = "10.9.9.9", .port = 443}).rule_id == 1);
  CHECK(set.decide({.host = "11.9.9.9", .port = 443}).rule_id == 0);
}

TEST_CASE("network rules match the resolved address") {
  const auto set = rules_of({{1, "", action::allow, "93.184.216.0/24"},
                             {2, "", action::deny, "10.0.0.0/8"},
                             {3, "", action::allow, "**.corp.example"}});
  // Before resolution a name is not in any network.
  auto d = set.decide({.host = "example.com", .port = 443});
  CHECK_FALSE(d.allowed());
  CHECK(d.reason == default_deny);
  // A CIDR allow alone does not allow a name, even one that resolves into it.
  d = set.decide({.host = "example.com", .port = 443, .address = addr("93.184.216.34")});
  CHECK_FALSE(d.allowed());
  CHECK(d.rule_id == 0);
  CHECK(d.reason == default_deny);
  // ... but it does allow the literal.
  d = set.decide({.host = "93.184.216.34", .port = 443});
  CHECK(d.allowed());
  CHECK(d.rule_id == 1);
  // A name allowed by its rule is still denied by the network it resolves into, in either form.
  d = set.decide({.host = "db.corp.example", .port = 5432, .address = addr("10.1.2.3")});
  CHECK_FALSE(d.allowed());
  CHECK(d.rule_id == 2);
  CHECK(d.reason == "denied by rule 2 (deny 10.0.0.0/8)");
  CHECK_FALSE(d.blocked_address);
  d = set.decide({.host = "db.corp.example", .port = 5432, .address = addr("::ffff:10.1.2.3")});
  CHECK(d.rule_id == 2);
  CHECK_FALSE(d.allowed());
  // A literal host sent elsewhere by a resolve override is judged by both addresses.
  d = set.decide({.host = "93.184.216.34", .port = 443, .address = addr("10.1.2.3")});
  CHECK(d.rule_id == 2);
  CHECK_FALSE(d.allowed());
  d = set.decide({.host = "10.1.2.3", .port = 443, .address = addr("93.184.216.34")});
  CHECK(d.rule_id == 2);
  CHECK_FALSE(d.allowed());
}

TEST_CASE("deny beats allow, and no allow means deny") {
  const auto set = rules_of({{1, "", action::allow, "**"},
                             {2, "", action::deny, "example.com"},
                             {3, "", action::allow, "api.example.org"},
                             {4, "", action::deny, "**.example.org"}});
  auto d = set.decide({.host = "example.com", .port = 443});
  CHECK(d.act == action::deny);
  CHECK(d.rule_id == 2);
  CHECK(d.rule_label() == "2");
  CHECK(d.reason == "denied by rule 2 (deny example.com)");
  d = set.decide({.host = "other.net", .port = 443});
  CHECK(d.act == action::allow);
  CHECK(d.reason == "allowed by rule 1 (allow **)");
  // The deny wins even over a more specific allow.
  d = set.decide({.host = "api.example.org", .port = 443});
  CHECK(d.act == action::deny);
  CHECK(d.rule_id == 4);

  for (const auto& empty :
       {rule_set(), rule_set(std::vector<rule>{}), rules_of({{9, "", action::deny, "**"}})}) {
    d = empty.decide({.host = "example.com", .port = 443});
    CHECK(d.act == action::deny);
    CHECK_FALSE(d.blocked_address);
    if (empty.rules().empty()) {
      CHECK(d.rule_id == 0);
      CHECK(d.rule_label() == "default");
      CHECK(d.reason == default_deny);
    } else {
      CHECK(d.rule_id == 9);
    }
  }
  d = rules_of({{1, "", action::allow, "example.com"}}).decide({.host = "example.net", .port = 1});
  CHECK(d.act == action::deny);
  CHECK(d.rule_id == 0);
  CHECK(d.reason == default_deny);
}

TEST_CASE("reasons keep their exact form") {
  const auto set = rules_of({{12, "", action::allow, "**.npmjs.org"},
                             {3, "", action::deny, "example.com"},
                             {5, "dev", action::allow, "api.github.com", "GET", "/repos/**"}});
  CHECK(set.decide({.host = "registry.npmjs.org", .port = 443}).reason ==
        "allowed by rule 12 (allow **.npmjs.org)");
  CHECK(set.decide({.host = "example.com", .port = 443}).reason ==
        "denied by rule 3 (deny example.com)");
  CHECK(set.decide({.sandbox = "dev", .host = "api.github.com", .port = 443}).reason ==
        "allowed by rule 5 (allow api.github.com --sandbox dev --method GET --path /repos/**)");
  CHECK(set.decide({.host = "github.com", .port = 443}).reason == default_deny);
}

TEST_CASE("a sandbox sees global rules and its own, not other sandboxes'") {
  const auto set = rules_of({{1, "", action::allow, "a.example"},
                             {2, "dev", action::allow, "b.example"},
                             {3, "prod", action::allow, "c.example"},
                             {4, "prod", action::deny, "a.example"}});
  struct row {
    std::string_view sandbox;
    std::string_view host;
    bool allowed;
    std::int64_t rule_id;
  };
  const row rows[] = {
      {"", "a.example", true, 1},      {"", "b.example", false, 0},
      {"", "c.example", false, 0},     {"dev", "a.example", true, 1},
      {"dev", "b.example", true, 2},   {"dev", "c.example", false, 0},
      {"prod", "a.example", false, 4}, {"prod", "b.example", false, 0},
      {"prod", "c.example", true, 3},  {"qa", "a.example", true, 1},
      {"qa", "b.example", false, 0},   {"DEV", "b.example", false, 0},
  };
  for (const auto& r : rows) {
    CAPTURE(r.sandbox);
    CAPTURE(r.host);
    const auto d = set.decide({.sandbox = r.sandbox, .host = r.host, .port = 443});
    CHECK(d.allowed() == r.allowed);
    CHECK(d.rule_id == r.rule_id);
  }
}

TEST_CASE("rules with HTTP conditions: at the tunnel and per request") {
  const auto set = rules_of({{1, "", action::allow, "api.github.com", "GET,HEAD", "/repos/**"},
                             {2, "", action::allow, "api.openai.com"},
                             {3, "", action::deny, "api.openai.com", "", "/v1/files/**"},
                             {4, "", action::deny, "api.openai.com", "DELETE"},
                             {5, "", action::allow, "uploads.example", "", "/in/*"}});
  struct row {
    std::string_view host;
    std::string_view method;
    std::string_view path;
    bool allowed;
    std::int64_t rule_id;
  };
  const row rows[] = {
      // Tunnel: an allow with conditions opens it, a deny with conditions waits for requests.
      {"api.github.com", "", "", true, 1},
      {"api.openai.com", "", "", true, 2},
      {"uploads.example", "", "", true, 5},
      // Requests.
      {"api.github.com", "GET", "/repos/sbx/issues", true, 1},
      {"api.github.com", "get", "/repos/sbx/issues", true, 1},
      {"api.github.com", "HEAD", "/repos", true, 1},
      {"api.github.com", "POST", "/repos/sbx/issues", false, 0},
      {"api.github.com", "GET", "/user", false, 0},
      {"api.github.com", "GET", "/repository", false, 0},
      {"api.openai.com", "POST", "/v1/chat/completions", true, 2},
      {"api.openai.com", "POST", "/v1/files/abc", false, 3},
      {"api.openai.com", "GET", "/v1/files", false, 3},
      {"api.openai.com", "DELETE", "/v1/models/x", false, 4},
      {"api.openai.com", "delete", "/v1/models/x", false, 4},
      {"uploads.example", "PUT", "/in/a.bin", true, 5},
      {"uploads.example", "PUT", "/in/a/b.bin", false, 0},
      // Half known: the unknown condition counts as a match for allows only.
      {"api.github.com", "GET", "", true, 1},
      {"api.github.com", "POST", "", false, 0},
      {"api.github.com", "", "/repos/x", true, 1},
      {"api.github.com", "", "/gists", false, 0},
      {"api.openai.com", "GET", "", true, 2},
      {"api.openai.com", "", "/v1/files/x", false, 3},
  };
  for (const auto& r : rows) {
    CAPTURE(r.host);
    CAPTURE(r.method);
    CAPTURE(r.path);
    const auto d = set.decide({.host = r.host, .port = 443, .method = r.method, .path = r.path});
    CHECK(d.allowed() == r.allowed);
    CHECK(d.rule_id == r.rule_id);
  }
}

TEST_CASE("needs_interception: a rule in scope with HTTP conditions for this host and port") {
  const auto set = rules_of({{1, "", action::allow, "api.github.com", "GET"},
                             {2, "", action::allow, "**.example.com"},
                             {3, "", action::deny, "*.corp.example", "", "/admin/**"},
                             {4, "", action::allow, "10.0.0.0/8", "", "/metrics"},
                             {5, "dev", action::allow, "uploads.example.com:443", "PUT"},
                             {6, "", action::allow, "**:8080", "", "/health"}});
  struct row {
    std::string_view sandbox;
    std::string_view host;
    std::uint16_t port;
    bool needed;
  };
  const row rows[] = {
      {"", "api.github.com", 443, true},
      {"", "API.GITHUB.COM.", 443, true},
      {"", "github.com", 443, false},
      {"", "www.example.com", 443, false},
      {"", "x.corp.example", 443, true},
      {"", "x.y.corp.example", 443, false},
      {"", "10.1.2.3", 443, true},
      {"", "11.1.2.3", 443, false},
      {"", "uploads.example.com", 443, false},
      {"dev", "uploads.example.com", 443, true},
      {"dev", "uploads.example.com", 8443, false},
      {"prod", "uploads.example.com", 443, false},
      {"", "anything.net", 8080, true},
      {"", "anything.net", 443, false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.sandbox);
    CAPTURE(r.host);
    CAPTURE(r.port);
    CHECK(set.needs_interception(r.sandbox, r.host, r.port) == r.needed);
  }
  CHECK_FALSE(rule_set().needs_interception("", "api.github.com", 443));
}

TEST_CASE("CIDR allows apply to IP literals and to names a name rule allows, never alone") {
  struct row {
    std::string_view why;
    std::initializer_list<spec> rules;
    facts f;
    bool allowed;
    std::int64_t rule_id;
  };
  const auto ten = *ip_address::parse("10.1.2.3");
  const auto public_address = *ip_address::parse("192.0.2.7");
  const row rows[] = {
      {"a name only a CIDR allow would match, before resolution",
       {{1, "", action::allow, "10.0.0.0/8"}},
       {.host = "exfil-abc.denied.example", .port = 443},
       false,
       0},
      {"... and after (a caller must not resolve it, but decide() agrees anyway)",
       {{1, "", action::allow, "10.0.0.0/8"}},
       {.host = "exfil-abc.denied.example", .port = 443, .address = ten},
       false,
       0},
      {"a sandbox's CIDR allow alone does not allow a name either",
       {{1, "dev", action::allow, "0.0.0.0/0"}, {2, "dev", action::allow, "::/0"}},
       {.sandbox = "dev", .host = "anything.example", .port = 443, .address = public_address},
       false,
       0},
      {"an IP literal in the CIDR",
       {{1, "", action::allow, "10.0.0.0/8"}},
       {.host = "10.1.2.3", .port = 443},
       true,
       1},
      {"a bracketed IPv6 literal in the CIDR",
       {{1, "", action::allow, "2001:db8::/32"}},
       {.host = "[2001:db8::7]", .port = 443},
       true,
       1},
      {"a name a wildcard allows, resolved into a blocked range the CIDR unlocks",
       {{1, "", action::allow, "**.corp.example"}, {2, "", action::allow, "10.0.0.0/8"}},
       {.host = "db.corp.example", .port = 5432, .address = ten},
       true,
       2},
      {"a name ** allows, resolved into the CIDR",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "192.0.2.0/24"}},
       {.host = "svc.example", .port = 443, .address = public_address},
       true,
       2},
      {"a name rule of another port does not make the name allowed",
       {{1, "", action::allow, "svc.example:8443"}, {2, "", action::allow, "192.0.2.0/24"}},
       {.host = "svc.example", .port = 443, .address = public_address},
       false,
       0},
      {"a name rule whose path does not match does not make the name allowed",
       {{1, "", action::allow, "svc.example", "", "/v1/**"},
        {2, "", action::allow, "192.0.2.0/24"}},
       {.host = "svc.example", .port = 443, .address = public_address, .path = "/v2/x"},
       false,
       0},
      {"a CIDR deny still refuses a name a name rule allows",
       {{1, "", action::allow, "**"}, {2, "", action::deny, "192.0.2.0/24"}},
       {.host = "svc.example", .port = 443, .address = public_address},
       false,
       2},
  };
  for (const auto& r : rows) {
    CAPTURE(r.why);
    const auto d = rules_of(r.rules).decide(r.f);
    CHECK(d.allowed() == r.allowed);
    CHECK(d.rule_id == r.rule_id);
    CHECK_FALSE(d.blocked_address);
    if (r.rule_id == 0) CHECK(d.reason == default_deny);
  }
}

TEST_CASE("blocked ranges are refused after resolution, for every listed range") {
  struct row {
    std::string_view address;
    std::string_view printed;
    std::string_view range;
  };
  const row rows[] = {
      {"127.0.0.1", "127.0.0.1", "loopback"},
      {"127.8.9.10", "127.8.9.10", "loopback"},
      {"10.0.0.1", "10.0.0.1", "private"},
      {"172.16.5.4", "172.16.5.4", "private"},
      {"172.31.255.254", "172.31.255.254", "private"},
      {"192.168.1.1", "192.168.1.1", "private"},
      {"169.254.169.254", "169.254.169.254", "link-local"},
      {"100.64.0.1", "100.64.0.1", "shared"},
      {"100.127.1.1", "100.127.1.1", "shared"},
      {"0.0.0.0", "0.0.0.0", "unspecified"},
      {"0.1.2.3", "0.1.2.3", "this-network"},
      {"::1", "::1", "loopback"},
      {"::", "::", "unspecified"},
      {"fc00::1", "fc00::1", "unique-local"},
      {"fd12:3456::1", "fd12:3456::1", "unique-local"},
      {"fe80::1", "fe80::1", "link-local"},
      {"::ffff:127.0.0.1", "::ffff:127.0.0.1", "loopback"},
      {"::ffff:10.9.8.7", "::ffff:10.9.8.7", "private"},
      {"::ffff:172.20.0.1", "::ffff:172.20.0.1", "private"},
      {"::ffff:192.168.0.1", "::ffff:192.168.0.1", "private"},
      {"::ffff:169.254.1.1", "::ffff:169.254.1.1", "link-local"},
      {"::ffff:100.100.0.1", "::ffff:100.100.0.1", "shared"},
      {"::ffff:0.0.0.1", "::ffff:0.0.0.1", "this-network"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.address);
    const auto address = addr(r.address);
    const facts f{.host = "svc.internal.example", .port = 443, .address = address};
    for (const auto* wildcard :
         {"**", "**.internal.example", "*.internal.example", "**:443", "**.example"}) {
      CAPTURE(wildcard);
      const auto d = rules_of({{1, "", action::allow, wildcard}}).decide(f);
      CHECK(d.act == action::deny);
      CHECK(d.rule_id == 0);
      CHECK(d.rule_label() == "default");
      CHECK(d.blocked_address);
      CHECK(d.reason == blocked_reason(r.printed, r.range));
    }
    // An allow naming the exact host reaches it.
    auto d =
        rules_of({{1, "", action::allow, "**"}, {2, "", action::allow, "svc.internal.example"}})
            .decide(f);
    CHECK(d.allowed());
    CHECK(d.rule_id == 2);
    CHECK_FALSE(d.blocked_address);
    // So does an allow CIDR containing the address.
    const auto cidr = address->v6 && r.address.find('.') == std::string_view::npos
                          ? std::string(r.address) + "/128"
                          : std::string(r.address.substr(r.address.rfind(':') + 1)) + "/32";
    CAPTURE(cidr);
    d = rules_of({{1, "", action::allow, "**"}, {2, "", action::allow, cidr}}).decide(f);
    CHECK(d.allowed());
    CHECK(d.rule_id == 2);
    CHECK_FALSE(d.blocked_address);
  }
}

TEST_CASE("blocked ranges: what unlocks an address and what does not") {
  const ip_address loopback = *ip_address::parse("127.0.0.1");
  const facts local{.host = "localhost", .port = 8080, .address = loopback};
  struct row {
    std::string_view why;
    std::initializer_list<spec> rules;
    facts f;
    bool allowed;
    std::int64_t rule_id;
    bool blocked;
  };
  const row rows[] = {
      {"** does not unlock loopback", {{1, "", action::allow, "**"}}, local, false, 0, true},
      {"*.x does not unlock it",
       {{1, "", action::allow, "*.example.com"}},
       {.host = "a.example.com", .port = 443, .address = loopback},
       false,
       0,
       true},
      {"the exact host does", {{1, "", action::allow, "localhost"}}, local, true, 1, false},
      {"the exact host with the right port does",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "localhost:8080"}},
       local,
       true,
       2,
       false},
      {"the exact host with another port does not",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "localhost:9000"}},
       local,
       false,
       0,
       true},
      {"a CIDR containing it does",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "127.0.0.0/8"}},
       local,
       true,
       2,
       false},
      {"an IPv4 CIDR contains the mapped form",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "127.0.0.0/8"}},
       {.host = "localhost", .port = 80, .address = *ip_address::parse("::ffff:127.0.0.1")},
       true,
       2,
       false},
      {"a CIDR not containing it does not",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "127.1.0.0/16"}},
       local,
       false,
       0,
       true},
      {"a CIDR with another port does not",
       {{1, "", action::allow, "**"}, {2, "", action::allow, "127.0.0.0/8:22"}},
       local,
       false,
       0,
       true},
      {"a CIDR alone does not allow the name that resolves into it",
       {{1, "", action::allow, "10.0.0.0/8"}},
       {.host = "db.internal", .port = 5432, .address = *ip_address::parse("10.1.1.1")},
       false,
       0,
       false},
      {"a literal host is the address when none is given",
       {{1, "", action::allow, "**"}},
       {.host = "127.0.0.1", .port = 80},
       false,
       0,
       true},
      {"a literal host in a CIDR allow",
       {{1, "", action::allow, "127.0.0.1"}},
       {.host = "127.0.0.1", .port = 80},
       true,
       1,
       false},
      {"a bracketed literal",
       {{1, "", action::allow, "**"}},
       {.host = "[::1]", .port = 80},
       false,
       0,
       true},
      {"a CIDR matching the literal but not the address it was resolved to",
       {{1, "", action::allow, "203.0.113.5"}},
       {.host = "203.0.113.5", .port = 80, .address = loopback},
       false,
       0,
       true},
      {"deny still wins over the exception",
       {{1, "", action::allow, "localhost"}, {2, "", action::deny, "127.0.0.0/8"}},
       local,
       false,
       2,
       false},
      {"no allow at all is a plain default deny",
       {{1, "", action::allow, "example.com"}},
       local,
       false,
       0,
       false},
      {"an address outside the ranges is not blocked",
       {{1, "", action::allow, "**"}},
       {.host = "example.com", .port = 443, .address = *ip_address::parse("93.184.216.34")},
       true,
       1,
       false},
      {"the exception in a sandbox rule",
       {{1, "", action::allow, "**"}, {2, "dev", action::allow, "localhost"}},
       {.sandbox = "dev", .host = "localhost", .port = 8080, .address = loopback},
       true,
       2,
       false},
      {"another sandbox's exception does not count",
       {{1, "", action::allow, "**"}, {2, "dev", action::allow, "localhost"}},
       {.sandbox = "prod", .host = "localhost", .port = 8080, .address = loopback},
       false,
       0,
       true},
      {"the exception names the rule that made it, not the most specific allow",
       {{1, "", action::allow, "*.corp.example"}, {2, "", action::allow, "10.0.0.0/8"}},
       {.host = "db.corp.example", .port = 5432, .address = *ip_address::parse("10.2.2.2")},
       true,
       2,
       false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.why);
    const auto d = rules_of(r.rules).decide(r.f);
    CHECK(d.allowed() == r.allowed);
    CHECK(d.rule_id == r.rule_id);
    CHECK(d.blocked_address == r.blocked);
  }
  const auto d = rules_of({{1, "", action::allow, "**"}}).decide(local);
  CHECK(d.reason ==
        "127.0.0.1 is in a blocked address range (loopback); allow the exact host or a CIDR "
        "containing it to reach it");
  CHECK(rules_of({{1, "", action::allow, "**"}}).decide({.host = "[::1]", .port = 80}).reason ==
        blocked_reason("::1", "loopback"));
}

TEST_CASE("the most specific matching rule is reported") {
  const auto set = rules_of({{1, "", action::allow, "**"},
                             {2, "", action::allow, "**.example.com"},
                             {3, "", action::allow, "*.example.com"},
                             {4, "", action::allow, "api.example.com"},
                             {5, "", action::allow, "api.example.com:443"},
                             {6, "", action::allow, "api.example.com:443", "GET"},
                             {7, "dev", action::allow, "**"},
                             {8, "", action::allow, "**.a.example.com"},
                             {9, "", action::allow, "93.184.216.0/24"},
                             {10, "", action::allow, "93.184.216.34"},
                             {11, "", action::allow, "**"}});
  struct row {
    std::string_view why;
    facts f;
    std::int64_t rule_id;
  };
  const row rows[] = {
      {"HTTP conditions first", {.host = "api.example.com", .port = 443, .method = "GET"}, 6},
      {"sandbox first",
       {.sandbox = "dev", .host = "api.example.com", .port = 443, .method = "GET"},
       7},
      {"then port", {.host = "api.example.com", .port = 443, .method = "POST"}, 5},
      {"then exact host", {.host = "api.example.com", .port = 80}, 4},
      {"then one label", {.host = "www.example.com", .port = 443}, 3},
      {"then any depth", {.host = "x.y.example.com", .port = 443}, 2},
      {"longer suffix first", {.host = "x.a.example.com", .port = 443}, 8},
      {"lower id among equals", {.host = "other.org", .port = 443}, 1},
      {"network before everything, longer prefix first",
       {.host = "other.org", .port = 443, .address = *ip_address::parse("93.184.216.34")},
       10},
      {"network before everything",
       {.host = "other.org", .port = 443, .address = *ip_address::parse("93.184.216.35")},
       9},
      {"exact host before network",
       {.host = "api.example.com", .port = 80, .address = *ip_address::parse("93.184.216.34")},
       4},
  };
  for (const auto& r : rows) {
    CAPTURE(r.why);
    const auto d = set.decide(r.f);
    CHECK(d.allowed());
    CHECK(d.rule_id == r.rule_id);
  }

  const auto denies = rules_of({{1, "", action::deny, "**.example.com"},
                                {2, "", action::deny, "api.example.com"},
                                {3, "", action::allow, "api.example.com:443", "GET"}});
  const auto d = denies.decide({.host = "api.example.com", .port = 443, .method = "GET"});
  CHECK(d.act == action::deny);
  CHECK(d.rule_id == 2);
}

TEST_CASE("copies share the index and decide alike") {
  auto original = rules_of({{1, "", action::allow, "a.example"}, {2, "", action::deny, "**"}});
  const rule_set copy = original;
  const rule_set moved = std::move(original);
  for (const auto* set : {&copy, &moved}) {
    CHECK(set->rules().size() == 2);
    CHECK(set->decide({.host = "a.example", .port = 443}).rule_id == 2);
    CHECK(set->decide({.host = "b.example", .port = 443}).rule_id == 2);
  }
}

TEST_CASE("a thousand rules still find the right one") {
  std::vector<rule> rules;
  for (int i = 1; i <= 1000; ++i) {
    const auto n = std::to_string(i);
    switch (i % 4) {
      case 0:
        rules.push_back(make_rule(i, "", action::allow, "svc" + n + ".example.com"));
        break;
      case 1:
        rules.push_back(make_rule(i, "", action::allow, "*.team" + n + ".example.net"));
        break;
      case 2:
        rules.push_back(make_rule(i, "sb" + n, action::allow, "**.zone" + n + ".example.org"));
        break;
      default:
        rules.push_back(
            make_rule(i, "", action::deny, "10." + std::to_string(i % 256) + ".0.0/16"));
        break;
    }
  }
  const rule_set set(std::move(rules));
  CHECK(set.decide({.host = "svc400.example.com", .port = 443}).rule_id == 400);
  CHECK(set.decide({.host = "svc401.example.com", .port = 443}).rule_id == 0);
  CHECK(set.decide({.host = "x.team401.example.net", .port = 443}).rule_id == 401);
  CHECK(set.decide({.host = "x.y.team401.example.net", .port = 443}).rule_id == 0);
  CHECK(set.decide({.host = "a.b.zone402.example.org", .port = 443}).rule_id == 0);
  CHECK(set.decide({.sandbox = "sb402", .host = "a.b.zone402.example.org", .port = 443}).rule_id ==
        402);
  const auto d = set.decide(
      {.host = "svc400.example.com", .port = 443, .address = *ip_address::parse("10.3.1.1")});
  CHECK(d.rule_id == 3);
  CHECK(d.act == action::deny);
}
