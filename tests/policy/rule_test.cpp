// The rule grammar: resources, methods, make_rule and describe.
#include <doctest/doctest.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "policy/rule.hpp"

using sbx::policy::action;
using sbx::policy::decision;
using sbx::policy::make_rule;
using sbx::policy::parse_methods;
using sbx::policy::parse_resource;
using sbx::policy::resource;
using sbx::policy::rule_error;
using sbx::policy::rule_source;
using kind = sbx::policy::resource::kind;

namespace {

std::string resource_error(std::string_view text) {
  try {
    (void)parse_resource(text);
  } catch (const rule_error& e) {
    return e.what();
  }
  return "<accepted>";
}

std::string methods_error(std::string_view csv) {
  try {
    (void)parse_methods(csv);
  } catch (const rule_error& e) {
    return e.what();
  }
  return "<accepted>";
}

}  // namespace

TEST_CASE("parse_resource: host and wildcard forms") {
  struct row {
    std::string_view text;
    kind k;
    std::string_view host;
    std::optional<std::uint16_t> port;
    std::string_view canonical;
  };
  const row rows[] = {
      {"example.com", kind::host, "example.com", std::nullopt, "example.com"},
      {"Example.COM", kind::host, "example.com", std::nullopt, "example.com"},
      {"example.com.", kind::host, "example.com", std::nullopt, "example.com"},
      {"  example.com ", kind::host, "example.com", std::nullopt, "example.com"},
      {"localhost", kind::host, "localhost", std::nullopt, "localhost"},
      {"_dmarc.example.com", kind::host, "_dmarc.example.com", std::nullopt, "_dmarc.example.com"},
      {"a-b.c-d.example", kind::host, "a-b.c-d.example", std::nullopt, "a-b.c-d.example"},
      {"xn--bcher-kva.example", kind::host, "xn--bcher-kva.example", std::nullopt,
       "xn--bcher-kva.example"},
      {"1.2.3.com", kind::host, "1.2.3.com", std::nullopt, "1.2.3.com"},
      {"api.github.com:443", kind::host, "api.github.com", 443, "api.github.com:443"},
      {"example.com:1", kind::host, "example.com", 1, "example.com:1"},
      {"example.com:65535", kind::host, "example.com", 65535, "example.com:65535"},
      {"example.com:0443", kind::host, "example.com", 443, "example.com:443"},
      {"*.example.com", kind::one_label_wildcard, "example.com", std::nullopt, "*.example.com"},
      {"*.Example.com.", kind::one_label_wildcard, "example.com", std::nullopt, "*.example.com"},
      {"*.example.com:8443", kind::one_label_wildcard, "example.com", 8443, "*.example.com:8443"},
      {"**.npmjs.org", kind::any_depth_wildcard, "npmjs.org", std::nullopt, "**.npmjs.org"},
      {"**.npmjs.org:443", kind::any_depth_wildcard, "npmjs.org", 443, "**.npmjs.org:443"},
      {"*.com", kind::one_label_wildcard, "com", std::nullopt, "*.com"},
      {"**", kind::everything, "", std::nullopt, "**"},
      {"**:443", kind::everything, "", 443, "**:443"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.text);
    const auto res = parse_resource(r.text);
    CHECK(res.k == r.k);
    CHECK(res.host == r.host);
    CHECK(res.port == r.port);
    CHECK(res.text() == r.canonical);
  }
}

TEST_CASE("parse_resource: addresses and networks") {
  struct row {
    std::string_view text;
    std::string_view network;
    std::optional<std::uint16_t> port;
    std::string_view canonical;
  };
  const row rows[] = {
      {"192.0.2.1", "192.0.2.1/32", std::nullopt, "192.0.2.1"},
      {"192.0.2.1:443", "192.0.2.1/32", 443, "192.0.2.1:443"},
      {"10.0.0.0/8", "10.0.0.0/8", std::nullopt, "10.0.0.0/8"},
      {"10.0.0.0/8:443", "10.0.0.0/8", 443, "10.0.0.0/8:443"},
      {"0.0.0.0/0", "0.0.0.0/0", std::nullopt, "0.0.0.0/0"},
      {"192.0.2.1/32", "192.0.2.1/32", std::nullopt, "192.0.2.1"},
      {"::1", "::1/128", std::nullopt, "::1"},
      {"[::1]", "::1/128", std::nullopt, "::1"},
      {"[::1]:443", "::1/128", 443, "[::1]:443"},
      {"2001:db8::/32", "2001:db8::/32", std::nullopt, "2001:db8::/32"},
      {"[2001:db8::]/32", "2001:db8::/32", std::nullopt, "2001:db8::/32"},
      {"[2001:db8::]/32:443", "2001:db8::/32", 443, "[2001:db8::]/32:443"},
      {"2001:DB8::1", "2001:db8::1/128", std::nullopt, "2001:db8::1"},
      {"fc00::/7", "fc00::/7", std::nullopt, "fc00::/7"},
      {"::ffff:127.0.0.1", "::ffff:127.0.0.1/128", std::nullopt, "::ffff:127.0.0.1"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.text);
    const auto res = parse_resource(r.text);
    CHECK(res.k == kind::network);
    CHECK(res.host.empty());
    CHECK(res.network.to_string() == r.network);
    CHECK(res.port == r.port);
    CHECK(res.text() == r.canonical);
  }
}

TEST_CASE("resource::text round-trips through parse_resource") {
  for (std::string_view text :
       {"example.com", "example.com:8080", "*.example.com", "*.example.com:443", "**.example.com",
        "**.example.com:1", "**", "**:443", "192.0.2.1", "192.0.2.1:443", "10.0.0.0/8",
        "10.0.0.0/8:22", "::1", "[::1]:443", "2001:db8::/32", "[2001:db8::]/32:443",
        "::ffff:10.0.0.0/104", "0.0.0.0/0", "::/0"}) {
    CAPTURE(text);
    const auto first = parse_resource(text);
    CHECK(first.text() == text);
    const auto again = parse_resource(first.text());
    CHECK(again.k == first.k);
    CHECK(again.host == first.host);
    CHECK(again.port == first.port);
    CHECK(again.network.base == first.network.base);
    CHECK(again.network.prefix == first.network.prefix);
  }
}

TEST_CASE("parse_resource rejects bad resources with the reason") {
  struct row {
    std::string_view text;
    std::string_view reason;
  };
  const row rows[] = {
      {"", "empty resource"},
      {"   ", "empty resource"},
      {"https://x.com/v1/chat", "is a URL; give the host instead (x.com)"},
      {"http://user@x.com:8080/", "(x.com:8080)"},
      {"example.com/v1", "contains a path; give the host (example.com) and --path /v1"},
      {"example.com/", "give the host alone: example.com"},
      {"example.com?x=1", "give the host only"},
      {"user@example.com", "contains '@'"},
      {"a.com,b.com", "one resource at a time"},
      {"exa mple.com", "contains a space"},
      {"*", "\"*\" alone is not a resource"},
      {"*example.com", "a wildcard must be the whole first label"},
      {"foo.*.com", "a wildcard must be the whole first label"},
      {"***.x", "a wildcard must be the whole first label"},
      {"**.*.x", "a wildcard must be the whole first label"},
      {"example.*", "a wildcard must be the whole first label"},
      {"*.", "needs a domain after the wildcard"},
      {"**.", "needs a domain after the wildcard"},
      {"*.:443", "needs a domain after the wildcard"},
      {".", "has no host name"},
      {":443", "has no host name"},
      {"a..b", "empty label"},
      {".example.com", "empty label"},
      {"example.com..", "empty label"},
      {"-a.example.com", "starts or ends with '-'"},
      {"a-.example.com", "starts or ends with '-'"},
      {"ex!ample.com", "contains '!'"},
      {"b\xc3\xbc"
       "cher.example",
       "punycode"},
      {"1.2.3", "neither an IPv4 address nor a host name"},
      {"256.1.1.1", "neither an IPv4 address nor a host name"},
      {"example.com:", "no port after ':'"},
      {"example.com:http", "port \"http\" in \"example.com:http\" is not a number"},
      {"example.com:0", "port 0 is out of range 1-65535"},
      {"example.com:70000", "port 70000 is out of range 1-65535"},
      {"example.com:99999999999999999999", "out of range 1-65535"},
      {"example.com:-1", "is not a number"},
      {"example.com:80:90", "neither host:port nor an IPv6 address"},
      {"10.1.0.0/8", "10.1.0.0/8 has host bits set; did you mean 10.0.0.0/8?"},
      {"192.0.2.1/24", "did you mean 192.0.2.0/24?"},
      {"2001:db8::1/32", "2001:db8::1/32 has host bits set; did you mean 2001:db8::/32?"},
      {"10.0.0.0/33", "prefix /33 in \"10.0.0.0/33\" is out of range 0-32 for IPv4"},
      {"::/129", "out of range 0-128 for IPv6"},
      {"10.0.0.0/", "is not a number"},
      {"10.0.0.0/x", "is not a number"},
      {"10.0.0.0/8:", "no port after ':'"},
      {"[::1", "missing ']'"},
      {"[192.0.2.1]", "brackets are for IPv6 only"},
      {"[example.com]", "brackets are for IPv6 only"},
      {"[::1]x", "unexpected \"x\" after ']'"},
      {"[::1]:0", "out of range 1-65535"},
      {"[::1]/129", "out of range 0-128"},
      {"[2001:db8::1]/32", "did you mean 2001:db8::/32?"},
      {"::1/128:443", "write [2001:db8::1]:443"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.text);
    const auto error = resource_error(r.text);
    CAPTURE(error);
    CHECK(error.find(r.reason) != std::string::npos);
  }
  const std::string long_label(64, 'a');
  CHECK(resource_error(long_label + ".com") ==
        "label \"" + long_label + "\" in \"" + long_label + ".com\" is longer than 63 characters");
  CHECK(resource_error(std::string(63, 'a') + ".com") == "<accepted>");
  std::string long_host;
  while (long_host.size() < 250)
    long_host += "abcdefghi.";
  long_host += "com";  // 253 characters
  CHECK(resource_error(long_host) == "<accepted>");
  CHECK(resource_error(long_host + ".") == "<accepted>");
  CHECK(resource_error("a" + long_host).find("longer than 253 characters") != std::string::npos);
  CHECK(resource_error("example.com:70000") == "port 70000 is out of range 1-65535");
  CHECK(resource_error("10.1.0.0/8") == "10.1.0.0/8 has host bits set; did you mean 10.0.0.0/8?");
}

TEST_CASE("parse_methods") {
  struct row {
    std::string_view csv;
    std::vector<std::string> methods;
  };
  const row rows[] = {
      {"", {}},
      {"  ", {}},
      {"GET", {"GET"}},
      {"get", {"GET"}},
      {"GET,post", {"GET", "POST"}},
      {" GET , POST ", {"GET", "POST"}},
      {"GET,get,Get,POST,GET", {"GET", "POST"}},
      {"PROPFIND,M-SEARCH", {"PROPFIND", "M-SEARCH"}},
  };
  for (const auto& r : rows) {
    CAPTURE(r.csv);
    CHECK(parse_methods(r.csv) == r.methods);
  }
  struct bad {
    std::string_view csv;
    std::string_view reason;
  };
  const bad bads[] = {
      {"GET,,POST", "has an empty entry"},
      {"GET,", "has an empty entry"},
      {",GET", "has an empty entry"},
      {"GE T", "\"GE T\" is not an HTTP method name"},
      {"GET/1", "is not an HTTP method name"},
      {"G\xc3\x89T", "is not an HTTP method name"},
      {"*", "leave out --method"},
  };
  for (const auto& b : bads) {
    CAPTURE(b.csv);
    const auto error = methods_error(b.csv);
    CAPTURE(error);
    CHECK(error.find(b.reason) != std::string::npos);
  }
}

TEST_CASE("make_rule fills every field and describe() prints it back") {
  const auto r = make_rule(7, "dev", action::allow, "API.github.com", "get,POST", "/repos/**",
                           rule_source::preset);
  CHECK(r.id == 7);
  CHECK(r.sandbox == "dev");
  CHECK(r.act == action::allow);
  CHECK(r.res.k == kind::host);
  CHECK(r.res.host == "api.github.com");
  CHECK(r.methods == std::vector<std::string>{"GET", "POST"});
  CHECK(r.path == "/repos/**");
  CHECK(r.source == rule_source::preset);
  CHECK(r.has_http_conditions());
  CHECK(r.describe() == "allow api.github.com --sandbox dev --method GET,POST --path /repos/**");

  struct row {
    std::string_view resource;
    action act;
    std::string_view methods;
    std::string_view path;
    std::string_view described;
  };
  const row rows[] = {
      {"**.npmjs.org", action::allow, "", "", "allow **.npmjs.org"},
      {"example.com", action::deny, "", "", "deny example.com"},
      {"api.github.com", action::allow, "GET,POST", "/repos/**",
       "allow api.github.com --method GET,POST --path /repos/**"},
      {"api.github.com", action::deny, "delete", "", "deny api.github.com --method DELETE"},
      {"[::1]:8080", action::allow, "", "/health", "allow [::1]:8080 --path /health"},
      {"10.0.0.0/8", action::deny, "", "", "deny 10.0.0.0/8"},
  };
  for (const auto& row : rows) {
    CAPTURE(row.described);
    const auto made = make_rule(1, "", row.act, row.resource, row.methods, row.path);
    CHECK(made.describe() == row.described);
    CHECK(made.source == rule_source::local);
    CHECK(made.has_http_conditions() == (!row.methods.empty() || !row.path.empty()));
  }
}

TEST_CASE("make_rule reports the part that is wrong") {
  CHECK_THROWS_WITH_AS((void)make_rule(1, "", action::allow, "example.com:0"),
                       "port 0 is out of range 1-65535", rule_error);
  CHECK_THROWS_WITH_AS((void)make_rule(1, "", action::allow, "example.com", "GET,,PUT"),
                       doctest::Contains("empty entry"), rule_error);
  CHECK_THROWS_WITH_AS((void)make_rule(1, "", action::allow, "example.com", "", "v1"),
                       doctest::Contains("must start with '/'"), rule_error);
}

TEST_CASE("names and labels") {
  CHECK(sbx::policy::to_string(action::allow) == "allow");
  CHECK(sbx::policy::to_string(action::deny) == "deny");
  CHECK(sbx::policy::to_string(rule_source::preset) == "preset");
  CHECK(sbx::policy::to_string(rule_source::local) == "local");
  decision d;
  CHECK(d.rule_label() == "default");
  CHECK_FALSE(d.allowed());
  d.rule_id = 42;
  d.act = action::allow;
  CHECK(d.rule_label() == "42");
  CHECK(d.allowed());
}
