// CONNECT authorities and absolute-form request targets (proxy/http_checks.hpp). Properties: what
// parse_authority accepts is normalised (lower case, no trailing dot, a port) and its text() parses
// back to the same authority; an IPv6 authority is an address; an absolute target's origin-form
// starts with '/' and carries no fragment, its path is the origin-form without the query, and the
// target rebuilt from its parts parses back to the same parts.
#include <cstdint>
#include <optional>
#include <string>

#include "policy/rule.hpp"
#include "proxy/http_checks.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::proxy;
using sbx::fuzz::require;

namespace {

bool same(const authority& a, const authority& b) {
  return a.host == b.host && a.port == b.port && a.ipv6 == b.ipv6;
}

void check_authority(const authority& a) {
  require(!a.host.empty(), "authority host is not empty");
  require(a.port != 0, "authority port is not 0");
  for (char c : a.host)
    require(!(c >= 'A' && c <= 'Z'), "authority host is lower case");
  if (!a.ipv6) require(!a.host.ends_with('.'), "authority host has no trailing dot");
  if (a.ipv6) {
    require(sbx::policy::ip_address::parse(a.host).has_value(), "a bracketed host is an address");
  }
  const auto again = parse_authority(a.text());
  require(again.has_value(), "authority text() parses again");
  require(same(*again, a), "authority text() parses to the same authority");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  // The first byte chooses whether a default port applies (CONNECT has none).
  const bool with_default = data[0] & 1;
  const auto text = sbx::fuzz::as_text(data + 1, size - 1);

  if (auto a =
          parse_authority(text, with_default ? std::optional<std::uint16_t>(80) : std::nullopt)) {
    check_authority(*a);
  }

  if (auto t = parse_absolute_target(text)) {
    require(t->scheme == "http" || t->scheme == "https", "scheme is http or https");
    check_authority(t->where);
    require(t->origin_form.starts_with('/'), "origin-form starts with '/'");
    require(t->origin_form.find('#') == std::string::npos, "origin-form has no fragment");
    require(t->path == t->origin_form.substr(0, t->origin_form.find('?')),
            "path is origin-form without the query");
    const auto rebuilt = t->scheme + "://" + t->where.text() + t->origin_form;
    const auto again = parse_absolute_target(rebuilt);
    require(again.has_value(), "rebuilt absolute target parses again");
    require(same(again->where, t->where) && again->origin_form == t->origin_form &&
                again->path == t->path,
            "rebuilt absolute target parses to the same parts");
  }
  return 0;
}
