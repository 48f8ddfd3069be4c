// The rule parser (policy/rule.hpp). Input: "resource\nmethods\npath". Properties: a parsed
// resource's text() parses back to the same resource; parse_methods gives upper-case tokens; a
// rule that make_rule accepts decides without crashing, and an allow rule for a host (no port, no
// HTTP conditions) allows that host and a deny rule beside it wins.
#include <cstdint>
#include <string>

#include "policy/rule.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::policy;
using sbx::fuzz::require;

namespace {

bool same(const resource& a, const resource& b) {
  return a.k == b.k && a.host == b.host && a.port == b.port && a.text() == b.text() &&
         (a.k != resource::kind::network ||
          (a.network.base == b.network.base && a.network.prefix == b.network.prefix));
}

// A host the resource matches, when one follows from its text.
std::string example_host(const resource& r) {
  switch (r.k) {
    case resource::kind::host:
      return r.host;
    case resource::kind::one_label_wildcard:
    case resource::kind::any_depth_wildcard:
      return "x." + r.host;
    case resource::kind::everything:
      return "example.com";
    case resource::kind::network:
      return {};
  }
  return {};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto [resource_text, methods_text, path_text] =
      sbx::fuzz::split_lines<3>(sbx::fuzz::as_text(data, size));

  try {
    const auto r = parse_resource(resource_text);
    const auto canonical = r.text();
    const auto again = parse_resource(canonical);
    require(same(again, r), "resource text() parses to the same resource");
  } catch (const rule_error&) {
  }

  try {
    for (const auto& m : parse_methods(methods_text)) {
      require(!m.empty(), "a method is not empty");
      for (char c : m)
        require(!(c >= 'a' && c <= 'z'), "methods are upper-case");
    }
  } catch (const rule_error&) {
  }

  try {
    auto allow = make_rule(1, "", action::allow, resource_text, methods_text, path_text);
    (void)allow.describe();
    const auto host = example_host(allow.res);
    const std::uint16_t port = allow.res.port.value_or(443);
    const facts f{.host = host, .port = port, .method = "GET", .path = "/"};
    const rule_set allowing({allow});
    const auto d = allowing.decide(f);
    if (!host.empty() && !allow.has_http_conditions() && !ip_address::parse(host)) {
      require(d.allowed(), "an allow rule allows the host it names");
      auto deny = allow;
      deny.id = 2;
      deny.act = action::deny;
      require(!rule_set({allow, deny}).decide(f).allowed(), "deny wins");
    }
  } catch (const rule_error&) {
  }
  return 0;
}
