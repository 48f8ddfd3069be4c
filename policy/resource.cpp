// The rule grammar: resources (hosts, wildcards, host:port, CIDR), method lists, make_rule and the
// text forms that round-trip through it. Path patterns live in detail/path.cpp.
#include "policy/rule.hpp"

#include <algorithm>
#include <charconv>
#include <utility>

#include "policy/detail/address.hpp"
#include "policy/detail/ascii.hpp"

namespace sbx::policy {
namespace {

using detail::is_control;
using detail::is_digit;
using detail::is_space;
using detail::quoted;
using detail::to_lower;

constexpr auto npos = std::string_view::npos;
// RFC 1035 §2.3.4, for the name without its trailing dot.
constexpr std::size_t max_host_length = 253;
constexpr std::size_t max_label_length = 63;
constexpr std::string_view resource_forms =
    "a host (example.com), *.example.com (one more label), **.example.com (any depth), "
    "host:port, an address or CIDR (192.0.2.1, 10.0.0.0/8, [::1]) or ** (everything)";

// The host of a URL's authority ("user@host:port/path" -> "host:port") and its path, for the hint.
std::pair<std::string_view, std::string_view> split_url(std::string_view url) {
  auto rest = url.substr(url.find("://") + 3);
  const auto path_start = rest.find_first_of("/?#");
  auto authority = rest.substr(0, path_start);
  if (const auto at = authority.rfind('@'); at != npos) authority.remove_prefix(at + 1);
  std::string_view path;
  if (path_start != npos && rest[path_start] == '/') {
    path = rest.substr(path_start);
    path = path.substr(0, path.find_first_of("?#"));
  }
  return {authority, path};
}

[[noreturn]] void throw_url_error(std::string_view text) {
  const auto [authority, path] = split_url(text);
  std::string message = quoted(text) + " is a URL; give the host instead";
  if (!authority.empty()) message += " (" + std::string(authority) + ")";
  if (!path.empty() && path != "/") message += " and --path " + std::string(path) + " for the path";
  throw rule_error(message);
}

[[noreturn]] void throw_wildcard_error(std::string_view text) {
  throw rule_error(quoted(text) +
                   ": a wildcard must be the whole first label: *.example.com (exactly one more "
                   "label) or **.example.com (any depth); ** alone matches everything");
}

std::uint16_t parse_port(std::string_view digits, std::string_view text) {
  if (digits.empty()) {
    throw rule_error(quoted(text) + " has no port after ':'; write host:443, or leave out the ':'");
  }
  if (!std::all_of(digits.begin(), digits.end(), is_digit)) {
    throw rule_error("port " + quoted(digits) + " in " + quoted(text) +
                     " is not a number; write host:443");
  }
  unsigned long value = 0;
  const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc{} || end != digits.data() + digits.size() || value < 1 || value > 65535) {
    throw rule_error("port " + std::string(digits) + " is out of range 1-65535");
  }
  return static_cast<std::uint16_t>(value);
}

// Lower-case, without the trailing dot; labels of letters, digits, '-' and '_' (RFC 1123 §2.1,
// with '_' for service names such as _dmarc).
std::string parse_host_name(std::string_view name, std::string_view text) {
  if (!name.empty() && name.back() == '.') name.remove_suffix(1);
  if (name.empty()) {
    throw rule_error(quoted(text) + " has no host name; give " + std::string(resource_forms));
  }
  if (name.size() > max_host_length) {
    throw rule_error("host name in " + quoted(text) + " is longer than 253 characters");
  }
  std::string host = detail::to_lower_copy(name);
  for (char c : host) {
    if (c == '*') throw_wildcard_error(text);
    if (static_cast<unsigned char>(c) >= 0x80) {
      throw rule_error(quoted(text) +
                       " is not ASCII; write an internationalized name in its punycode form "
                       "(xn--...)");
    }
    if (!(detail::is_alpha(c) || is_digit(c) || c == '-' || c == '_' || c == '.')) {
      throw rule_error("host name " + quoted(text) + " contains '" + std::string(1, c) +
                       "'; host names are made of letters, digits, '-', '_' and '.'; give " +
                       std::string(resource_forms));
    }
  }
  std::string_view rest = host;
  std::string_view label;
  while (true) {
    const auto dot = rest.find('.');
    label = rest.substr(0, dot);
    if (label.empty()) throw rule_error("host name " + quoted(text) + " has an empty label (..)");
    if (label.size() > max_label_length) {
      throw rule_error("label " + quoted(label) + " in " + quoted(text) +
                       " is longer than 63 characters");
    }
    if (label.front() == '-' || label.back() == '-') {
      throw rule_error("label " + quoted(label) + " in " + quoted(text) +
                       " starts or ends with '-'");
    }
    if (dot == npos) break;
    rest.remove_prefix(dot + 1);
  }
  // RFC 3696 §2: a top-level domain is never all digits, and resolvers read "127.1" as an address.
  if (std::all_of(label.begin(), label.end(), is_digit)) {
    throw rule_error(quoted(text) +
                     " is neither an IPv4 address nor a host name (the last label of a host name "
                     "cannot be all digits)");
  }
  return host;
}

ip_network parse_network(const ip_address& address, std::optional<std::string_view> prefix_text,
                         std::string_view text) {
  const int max_prefix = address.v6 ? 128 : 32;
  ip_network network{.base = address, .prefix = max_prefix};
  if (prefix_text) {
    const auto digits = *prefix_text;
    int value = -1;
    if (digits.empty() || digits.size() > 3 ||
        !std::all_of(digits.begin(), digits.end(), is_digit)) {
      throw rule_error("prefix length " + quoted(digits) + " in " + quoted(text) +
                       " is not a number; write a CIDR such as 10.0.0.0/8");
    }
    std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (value > max_prefix) {
      throw rule_error("prefix /" + std::string(digits) + " in " + quoted(text) +
                       " is out of range 0-" + std::to_string(max_prefix) + " for " +
                       (address.v6 ? "IPv6" : "IPv4"));
    }
    network.prefix = value;
  }
  ip_network cleared = network;
  cleared.base.bytes = detail::masked(network.base.bytes, network.prefix);
  if (cleared.base != network.base) {
    throw rule_error(network.to_string() + " has host bits set; did you mean " +
                     cleared.to_string() + "?");
  }
  return network;
}

resource parse_bracketed(std::string_view text) {
  const auto close = text.find(']');
  if (close == npos) throw rule_error(quoted(text) + " is missing ']'");
  const auto inner = text.substr(1, close - 1);
  auto rest = text.substr(close + 1);
  const auto address = ip_address::parse(inner);
  if (!address || !address->v6) {
    throw rule_error(quoted(text) +
                     " is not an IPv6 address in brackets; brackets are for IPv6 only (write "
                     "[2001:db8::1] or 192.0.2.1)");
  }
  std::optional<std::string_view> prefix;
  if (!rest.empty() && rest.front() == '/') {
    const auto colon = rest.find(':');
    prefix = rest.substr(1, colon == npos ? npos : colon - 1);
    rest = colon == npos ? std::string_view() : rest.substr(colon);
  }
  resource r{.k = resource::kind::network};
  if (!rest.empty()) {
    if (rest.front() != ':') {
      throw rule_error("unexpected " + quoted(rest) + " after ']' in " + quoted(text) +
                       "; write [2001:db8::1]:443 or [2001:db8::]/32");
    }
    r.port = parse_port(rest.substr(1), text);
  }
  r.network = parse_network(*address, prefix, text);
  return r;
}

resource parse_unbracketed(std::string_view text) {
  const auto slash = text.find('/');
  const auto head = text.substr(0, slash);
  const auto tail = slash == npos ? std::string_view() : text.substr(slash + 1);

  // Two colons or more: a bare IPv6 address or network, which cannot carry a port.
  if (std::count(head.begin(), head.end(), ':') >= 2) {
    const auto address = ip_address::parse(head);
    if (!address || tail.find(':') != npos) {
      throw rule_error(quoted(text) +
                       " is neither host:port nor an IPv6 address; write [2001:db8::1]:443 for an "
                       "IPv6 address with a port");
    }
    resource r{.k = resource::kind::network};
    r.network = parse_network(*address, slash == npos ? std::nullopt : std::optional(tail), text);
    return r;
  }

  if (slash != npos) {
    const auto address = ip_address::parse(head);
    if (!address && tail.empty()) {
      throw rule_error(quoted(text) + " ends in '/'; give the host alone: " + std::string(head));
    }
    if (!address) {
      throw rule_error(quoted(text) + " contains a path; give the host (" + std::string(head) +
                       ") and --path /" + std::string(tail) + " for the path");
    }
    const auto colon = tail.find(':');
    resource r{.k = resource::kind::network};
    if (colon != npos) r.port = parse_port(tail.substr(colon + 1), text);
    r.network = parse_network(*address, tail.substr(0, colon), text);
    return r;
  }

  auto body = head;
  std::optional<std::uint16_t> port;
  if (const auto colon = body.find(':'); colon != npos) {
    port = parse_port(body.substr(colon + 1), text);
    body = body.substr(0, colon);
  }
  if (const auto address = ip_address::parse(body)) {
    resource r{.k = resource::kind::network, .port = port};
    r.network = parse_network(*address, std::nullopt, text);
    return r;
  }
  if (body == "*") {
    throw rule_error(
        "\"*\" alone is not a resource; write ** for everything or *.example.com for "
        "one label under a domain");
  }
  resource r{.port = port};
  if (body == "**") {
    r.k = resource::kind::everything;
  } else if (body.starts_with("**.")) {
    r.k = resource::kind::any_depth_wildcard;
    body.remove_prefix(3);
  } else if (body.starts_with("*.")) {
    r.k = resource::kind::one_label_wildcard;
    body.remove_prefix(2);
  }
  if (r.k != resource::kind::everything) {
    if (r.k != resource::kind::host && (body.empty() || body == ".")) {
      throw rule_error(quoted(text) + " needs a domain after the wildcard, as in *.example.com");
    }
    r.host = parse_host_name(body, text);
  }
  return r;
}

}  // namespace

std::string_view to_string(action a) {
  return a == action::allow ? "allow" : "deny";
}
std::string_view to_string(rule_source s) {
  return s == rule_source::preset ? "preset" : "local";
}

resource parse_resource(std::string_view input) {
  const auto text = detail::trim(input);
  if (text.empty()) throw rule_error("empty resource; give " + std::string(resource_forms));
  if (text.find("://") != npos) throw_url_error(text);
  for (char c : text) {
    if (is_space(c) || is_control(c)) {
      throw rule_error(quoted(text) +
                       " contains a space or control character; give one resource such as "
                       "example.com");
    }
    if (c == ',') {
      throw rule_error(quoted(text) + " contains ','; give one resource at a time");
    }
    if (c == '@') {
      throw rule_error(quoted(text) + " contains '@'; give the host only, without a user name");
    }
    if (c == '?' || c == '#') {
      throw rule_error(quoted(text) + " contains '" + std::string(1, c) +
                       "'; give the host only, and --path for the path");
    }
  }
  return text.front() == '[' ? parse_bracketed(text) : parse_unbracketed(text);
}

std::string resource::text() const {
  std::string out;
  switch (k) {
    case kind::host:
      out = host;
      break;
    case kind::one_label_wildcard:
      out = "*." + host;
      break;
    case kind::any_depth_wildcard:
      out = "**." + host;
      break;
    case kind::everything:
      out = "**";
      break;
    case kind::network: {
      const bool single = network.prefix == (network.base.v6 ? 128 : 32);
      out = network.base.to_string();
      // Brackets keep an IPv6 address apart from its port ("[::1]:443", RFC 3986 §3.2.2).
      if (network.base.v6 && port) out = '[' + out + ']';
      if (!single) out += '/' + std::to_string(network.prefix);
      break;
    }
  }
  if (port) out += ':' + std::to_string(*port);
  return out;
}

std::vector<std::string> parse_methods(std::string_view csv) {
  std::vector<std::string> methods;
  if (detail::trim(csv).empty()) return methods;
  std::string_view rest = csv;
  while (true) {
    const auto comma = rest.find(',');
    const auto method = detail::trim(rest.substr(0, comma));
    if (method.empty()) {
      throw rule_error("method list " + quoted(csv) +
                       " has an empty entry; write methods separated by ',' as in GET,POST");
    }
    if (method == "*") {
      throw rule_error("\"*\" is not a method; leave out --method to match any method");
    }
    for (char c : method) {
      // RFC 9110 §9.1: a method is a token.
      if (!detail::is_tchar(c)) {
        throw rule_error("method " + quoted(method) +
                         " is not an HTTP method name; write names such as GET,POST");
      }
    }
    std::string upper(method);
    for (char& c : upper)
      c = detail::to_upper(c);
    if (std::find(methods.begin(), methods.end(), upper) == methods.end()) {
      methods.push_back(std::move(upper));
    }
    if (comma == npos) break;
    rest.remove_prefix(comma + 1);
  }
  return methods;
}

rule make_rule(std::int64_t id, std::string sandbox, action act, std::string_view resource_text,
               std::string_view methods_csv, std::string_view path_pattern, rule_source source) {
  rule r;
  r.id = id;
  r.sandbox = std::move(sandbox);
  r.act = act;
  r.res = parse_resource(resource_text);
  r.methods = parse_methods(methods_csv);
  if (!path_pattern.empty()) r.path = validate_path_pattern(path_pattern);
  r.source = source;
  return r;
}

std::string rule::describe() const {
  std::string out(to_string(act));
  out += ' ';
  out += res.text();
  if (!sandbox.empty()) out += " --sandbox " + sandbox;
  if (!methods.empty()) {
    out += " --method ";
    for (std::size_t i = 0; i < methods.size(); ++i) {
      if (i != 0) out += ',';
      out += methods[i];
    }
  }
  if (!path.empty()) out += " --path " + path;
  return out;
}

}  // namespace sbx::policy
