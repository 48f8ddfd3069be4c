// Policy rules and the decision engine: pure logic, no I/O, no clock, no sockets.
//
// A rule says allow or deny for a resource (host pattern, host:port, CIDR or everything),
// optionally scoped to one sandbox and narrowed to HTTP methods and a path pattern. The engine
// answers one question: given the facts about a destination (and, when the proxy sees it, the
// request), is it allowed, and which rule said so.
//
//   using sbx::policy::action;
//   auto rules = sbx::policy::rule_set({sbx::policy::make_rule(1, "", action::allow,
//                                                              "**.npmjs.org")});
//   auto d = rules.decide({.host = "registry.npmjs.org", .port = 443});
//   // d.act == action::allow, d.rule_id == 1
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace sbx::policy {

enum class action { allow, deny };
enum class rule_source { preset, local };

[[nodiscard]] std::string_view to_string(action a);       // "allow" | "deny"
[[nodiscard]] std::string_view to_string(rule_source s);  // "preset" | "local"

// Raised for a rule, resource, method list or path pattern that cannot be accepted; what() is the
// reason in words a user can act on ("port 70000 is out of range 1-65535").
class rule_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An IPv4 or IPv6 address as bytes (network order). IPv4 uses the first 4 bytes. Kept free of Asio
// so that policy/ needs no networking headers.
struct ip_address {
  bool v6 = false;
  std::array<std::uint8_t, 16> bytes{};

  // Accepts dotted IPv4 and IPv6 (with or without [brackets]); IPv4-mapped IPv6 stays IPv6.
  [[nodiscard]] static std::optional<ip_address> parse(std::string_view text);
  [[nodiscard]] std::string to_string() const;
  friend bool operator==(const ip_address&, const ip_address&) = default;
};

struct ip_network {
  ip_address base;  // host bits cleared
  int prefix = 0;
  // An IPv4 network also contains the IPv4-mapped IPv6 form of its addresses (::ffff:a.b.c.d), and
  // an IPv6 network containing ::ffff:a.b.c.d contains a.b.c.d: a dual-stack resolver may answer in
  // either form, and a deny rule must not be sidestepped by the other one.
  [[nodiscard]] bool contains(const ip_address& a) const;
  [[nodiscard]] std::string to_string() const;  // "10.0.0.0/8", "::1/128"
};

// What a rule applies to. Host names are stored lower-case without a trailing dot.
struct resource {
  enum class kind {
    host,                // "example.com": that host, not subdomains
    one_label_wildcard,  // "*.example.com": exactly one more label
    any_depth_wildcard,  // "**.example.com": one or more labels
    everything,          // "**"
    network,             // "10.0.0.0/8", "192.0.2.1", "[::1]", "2001:db8::/32"
  };
  kind k = kind::host;
  std::string host;                   // for wildcards: the suffix ("example.com")
  std::optional<std::uint16_t> port;  // "host:port"; absent = any port
  ip_network network;                 // when k == network

  [[nodiscard]] std::string text() const;  // canonical form, round-trips through parse_resource
};

// Parses one resource. Throws rule_error with the reason.
[[nodiscard]] resource parse_resource(std::string_view text);
// "GET,post" -> {"GET","POST"}; empty input -> {} (any method). Throws rule_error.
[[nodiscard]] std::vector<std::string> parse_methods(std::string_view csv);
// Paths have two forms.
//
// The normalized path (normalize_path) is what the proxy logs, decides on and forwards: query and
// fragment cut off, percent-encoded unreserved characters decoded (RFC 3986 §2.3), other escapes
// upper-cased, dot-segments removed (RFC 3986 §5.2.4) and repeated slashes collapsed, so that
// "/v1/../admin" cannot pass a "/v1/**" rule. A path that a server may read differently from us
// is refused (nullopt): no leading '/', control characters, bad percent-encoding, '\', an encoded
// '/', '\' or NUL (%2F, %5C, %00), and segments a server may read as a dot-segment ("..;x", ".;",
// "...", "..%20": Tomcat reads "/a/..;/b" as "/b", Windows "/a/.. /b" as "/b").
//   normalize_path("/a/./b/../%63?x=1") == "/a/c"
//
// The match key is what path patterns are compared with, derived from the normalized path segment
// by segment: parameters dropped (from the first ';' or %3B: Tomcat routes "/admin;jsessionid=1/x"
// as "/admin/x"), then trailing dots and %20 dropped (Windows reads "/admin./x" as "/admin/x"),
// then segments left empty dropped ("/;x/admin" is "/admin"). A path whose last segment is left
// empty ("/exact/", "/exact/;x") matches a pattern with or without that trailing empty segment, so
// "/exact" matches "/exact/", "/exact;x" and "/exact/." (normalized to "/exact/"), and "/v1/*"
// still matches "/v1/". Paths are case-sensitive (RFC 3986 §6.2.2.1), except that deny rules
// compare ASCII letters without case: a case-insensitive server (IIS, macOS) reads "/ADMIN" as
// "/admin", and a deny must not be sidestepped by it while an allow must not be widened.
//
// Checks a path pattern ("/v1/**", "/repos/*/issues"); returns it unchanged. A pattern that could
// never equal a match key is refused: one with ';' or %3B, a segment ending in '.' or %20, an
// empty segment before the last, a dot-segment. Throws rule_error.
std::string validate_path_pattern(std::string_view pattern);
// Matches a pattern against the match key of a normalized path: '*' matches within one segment,
// '**' any number of segments (including none). fold_case compares ASCII letters without case
// (deny rules).
[[nodiscard]] bool path_matches(std::string_view pattern, std::string_view path,
                                bool fold_case = false);
[[nodiscard]] std::optional<std::string> normalize_path(std::string_view raw);

struct rule {
  std::int64_t id = 0;
  std::string sandbox;  // empty = global
  action act = action::deny;
  resource res;
  std::vector<std::string> methods;  // upper-case; empty = any method
  std::string path;                  // empty = any path
  rule_source source = rule_source::local;

  [[nodiscard]] bool has_http_conditions() const { return !methods.empty() || !path.empty(); }
  // "allow api.github.com --method GET --path /repos/**"; " --sandbox S" follows the resource of a
  // sandbox-scoped rule.
  [[nodiscard]] std::string describe() const;
};

// Builds a rule from user text. Throws rule_error with the reason.
[[nodiscard]] rule make_rule(std::int64_t id, std::string sandbox, action act,
                             std::string_view resource_text, std::string_view methods_csv = {},
                             std::string_view path_pattern = {},
                             rule_source source = rule_source::local);

// The facts about one destination or request. Strings are views: the caller keeps them alive.
struct facts {
  std::string_view sandbox;  // empty = no sandbox (global rules only)
  std::string_view host;     // as the client named it; IP literals allowed; any case
  std::uint16_t port = 0;
  // The address the proxy is about to connect to (a DNS answer, a resolve override, or the
  // literal). Absent before resolution: then CIDR rules match only when host is itself an IP
  // literal.
  std::optional<ip_address> address;
  std::string_view method;  // empty when not known (a CONNECT that is not intercepted)
  std::string_view path;    // empty when not known; no query string
};

struct decision {
  action act = action::deny;
  std::int64_t rule_id = 0;  // 0 = no rule matched (default deny) or a blocked address
  bool blocked_address = false;
  // "allowed by rule 12 (allow **.npmjs.org)", "no matching allow rule (default deny)"
  std::string reason;

  [[nodiscard]] bool allowed() const { return act == action::allow; }
  [[nodiscard]] std::string rule_label() const;  // rule id as text, or "default"
};

// Addresses refused after resolution unless an allow rule names the exact host or a CIDR containing
// the address: 127/8, 10/8, 172.16/12, 192.168/16, 169.254/16, 100.64/10, 0/8, ::1, fc00::/7,
// fe80::/10 (and IPv4-mapped forms of the IPv4 ranges).
[[nodiscard]] bool is_blocked_address(const ip_address& a);
// The range's name for messages ("loopback", "private", "link-local", ...), empty when not blocked.
[[nodiscard]] std::string_view blocked_range_name(const ip_address& a);

namespace detail {
struct rule_index;
}

// An immutable set of rules; safe to share between threads once built. The constructor indexes the
// rules by scope, host suffix and kind, so decide() costs a few hash lookups per host label
// whatever the number of rules, and allocates nothing but the reason text.
//
// Evaluation: only rules that are global or belong to facts.sandbox are considered.
// - A rule matches when its resource matches host/port (or the address, for network resources) and
//   its methods/path match the request. When method/path are unknown (a tunnel), a rule with HTTP
//   conditions is treated as: allow -> matches (the requests will be checked one by one once
//   intercepted), deny -> does not match (it can only be judged per request).
// - Any matching deny wins. Otherwise any matching allow allows. Otherwise default deny.
// - Network (CIDR) allow rules allow IP-literal hosts, and names some name rule (host, wildcard,
//   **) allows: a name that only a CIDR allow matches is denied, with or without facts.address.
//   So the caller decides a name first without an address and resolves it only when allowed: a
//   denied name never reaches a resolver (where a sandbox could hide data in it). Once resolved,
//   CIDR rules still judge each address: a CIDR deny refuses it, and a CIDR allow containing a
//   blocked address unlocks it (below).
// - Then, when facts.address is set and in a blocked range, an allow stands only if an allow rule
//   of kind host names exactly facts.host, or a network allow rule contains the address. (Either
//   rule must itself match the facts, port included.) When facts.address is absent and facts.host
//   is an IP literal, the literal is the address checked.
// - The decision names the most specific of the rules that decided it: sandbox-scoped before
//   global, then exact host, *.x, **.x, network, **; then a rule with a port, then one with HTTP
//   conditions; then the longer suffix or prefix; then the lower id.
class rule_set {
 public:
  rule_set() = default;
  explicit rule_set(std::vector<rule> rules);

  [[nodiscard]] decision decide(const facts& f) const;

  // True when a rule in scope with method/path conditions matches this host and port: the proxy
  // must intercept the tunnel so it can judge each request.
  [[nodiscard]] bool needs_interception(std::string_view sandbox, std::string_view host,
                                        std::uint16_t port) const;

  [[nodiscard]] const std::vector<rule>& rules() const { return rules_; }

 private:
  std::vector<rule> rules_;
  std::shared_ptr<const detail::rule_index> index_;  // positions in rules_; shared by copies
};

}  // namespace sbx::policy
