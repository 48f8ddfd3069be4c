// The rule grammar (resources, methods, path patterns) and the decision engine.
#include "policy/rule.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <unordered_map>
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

std::string decision::rule_label() const {
  return rule_id == 0 ? std::string("default") : std::to_string(rule_id);
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

namespace detail {

struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <class T>
using string_map = std::unordered_map<std::string, T, string_hash, std::equal_to<>>;

// The fields decide() needs for most rules, copied out of the rule to stay in one cache line.
struct entry {
  std::uint64_t rank = 0;  // lower is more specific; see make_entry()
  std::int64_t id = 0;
  std::uint32_t position = 0;  // in rule_set::rules_
  std::uint16_t port = 0;      // 0 = any port (a rule's port is 1-65535)
  action act = action::deny;
  resource::kind kind = resource::kind::host;
  bool has_http = false;
};

struct network_entry {
  entry e;
  ip_network network;
};

struct bytes_hash {
  std::size_t operator()(const address_bytes& b) const {
    std::uint64_t high = 0;
    std::uint64_t low = 0;
    std::memcpy(&high, b.data(), 8);
    std::memcpy(&low, b.data() + 8, 8);
    return std::hash<std::uint64_t>{}(high * 0x9e3779b97f4a7c15ull ^ low);
  }
};

// The network rules of one family and prefix length, keyed by their base: an address is looked up
// once per distinct prefix length instead of being compared with every network rule.
struct network_table {
  bool v6 = false;
  int prefix = 0;
  std::unordered_map<address_bytes, std::vector<network_entry>, bytes_hash> by_base;
};

// FNV-1a run from the last character to the first: one backward pass over a host name yields the
// hash of each of its label suffixes ("a.b.c", "b.c", "c"), so walking the suffixes in decide()
// hashes every character once.
constexpr std::uint64_t fnv_offset = 14695981039346656037ull;
constexpr std::uint64_t fnv_prime = 1099511628211ull;

constexpr std::uint64_t hash_step(std::uint64_t h, char c) {
  return (h ^ static_cast<unsigned char>(c)) * fnv_prime;
}

inline std::size_t hash_suffix(std::string_view s) {
  std::uint64_t h = fnv_offset;
  for (auto it = s.rbegin(); it != s.rend(); ++it) {
    h = hash_step(h, *it);
  }
  return h;
}

struct prehashed {
  std::string_view text;
  std::size_t hash;
};

struct suffix_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return hash_suffix(s); }
  std::size_t operator()(const prehashed& k) const { return k.hash; }
};

struct suffix_equal {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
  bool operator()(const prehashed& a, std::string_view b) const { return a.text == b; }
  bool operator()(std::string_view a, const prehashed& b) const { return a == b.text; }
};

struct host_bucket {
  std::vector<entry> exact;      // rules for this very host
  std::vector<entry> one_label;  // "*.<key>"
  std::vector<entry> any_depth;  // "**.<key>"
};

struct scope_index {
  // Keyed by host name or wildcard suffix.
  std::unordered_map<std::string, host_bucket, suffix_hash, suffix_equal> hosts;
  std::vector<network_table> networks;
  std::vector<entry> everything;
  bool has_network_allow = false;
};

struct rule_index {
  scope_index global;
  string_map<scope_index> sandboxes;
  std::vector<std::string> descriptions;  // rule::describe() by position, for reasons
};

}  // namespace detail

namespace {

using detail::entry;
using detail::scope_index;

int kind_order(resource::kind k) {
  switch (k) {
    case resource::kind::host:
      return 0;
    case resource::kind::one_label_wildcard:
      return 1;
    case resource::kind::any_depth_wildcard:
      return 2;
    case resource::kind::network:
      return 3;
    case resource::kind::everything:
      return 4;
  }
  return 4;
}

// Packs the specificity order of rule_set's comment into one number: scope, kind, port, HTTP
// conditions, then the longer suffix or prefix.
entry make_entry(const rule& r, std::uint32_t position) {
  const int depth = r.res.k == resource::kind::network ? r.res.network.prefix
                                                       : static_cast<int>(r.res.host.size());
  const std::uint64_t rank = (std::uint64_t{r.sandbox.empty()} << 62) |
                             (static_cast<std::uint64_t>(kind_order(r.res.k)) << 58) |
                             (std::uint64_t{!r.res.port.has_value()} << 57) |
                             (std::uint64_t{!r.has_http_conditions()} << 56) |
                             (static_cast<std::uint64_t>(255 - std::clamp(depth, 0, 255)) << 48);
  return entry{.rank = rank,
               .id = r.id,
               .position = position,
               .port = r.res.port.value_or(0),
               .act = r.act,
               .kind = r.res.k,
               .has_http = r.has_http_conditions()};
}

// The lower-case form of each character a host name may hold, '\0' for the others.
constexpr std::array<char, 256> host_chars = [] {
  std::array<char, 256> table{};
  for (int c = 0; c < 256; ++c) {
    const char ch = static_cast<char>(c);
    if (detail::is_alpha(ch) || is_digit(ch) || ch == '-' || ch == '_' || ch == '.') {
      table[c] = to_lower(ch);
    }
  }
  return table;
}();

// facts.host prepared once per decision: an IP literal, or a lower-case host name without its
// trailing dot in a stack buffer with the hashes of its label suffixes (decide() does not
// allocate), or neither.
class host_key {
 public:
  explicit host_key(std::string_view host) {
    if (host.empty()) return;
    auto text = host;
    if (text.back() == '.') text.remove_suffix(1);
    bool digits_and_dots = true;
    if (scan_name(text, digits_and_dots)) {
      // Digits and dots make a valid name too: "192.0.2.1" is decided as the address it is.
      if (digits_and_dots) literal_ = ip_address::parse(host);
      if (!literal_) name_ = std::string_view(buffer_, text.size());
      return;
    }
    if (std::all_of(host.begin(), host.end(), [](char c) {
          return detail::is_hex_digit(c) || c == '.' || c == ':' || c == '[' || c == ']';
        })) {
      literal_ = ip_address::parse(host);
    }
  }

  [[nodiscard]] std::string_view name() const { return name_; }
  [[nodiscard]] const std::optional<ip_address>& literal() const { return literal_; }

  [[nodiscard]] detail::prehashed whole() const { return {name_, name_hash_}; }
  // The label suffixes after the first label, left to right: suffix(0) of "a.b.c" is "b.c".
  [[nodiscard]] std::size_t suffix_count() const { return suffix_count_; }
  [[nodiscard]] detail::prehashed suffix(std::size_t i) const {
    const auto k = suffix_count_ - 1 - i;  // recorded right to left
    return {name_.substr(suffix_start_[k]), suffix_hash_[k]};
  }

 private:
  // Lower-cases text into buffer_ from its end, hashing as it goes; false when text is not a host
  // name (only ** and network rules can match it then).
  bool scan_name(std::string_view text, bool& digits_and_dots) {
    if (text.empty() || text.size() > max_host_length) return false;
    std::uint64_t h = detail::fnv_offset;
    bool label_empty = true;
    for (std::size_t i = text.size(); i-- > 0;) {
      const char c = host_chars[static_cast<unsigned char>(text[i])];
      if (c == '\0') return false;
      if (c == '.') {
        if (label_empty) return false;
        suffix_start_[suffix_count_] = static_cast<std::uint8_t>(i + 1);
        suffix_hash_[suffix_count_] = h;
        ++suffix_count_;
        label_empty = true;
      } else {
        label_empty = false;
        digits_and_dots = digits_and_dots && is_digit(c);
      }
      buffer_[i] = c;
      h = detail::hash_step(h, c);
    }
    name_hash_ = h;
    return !label_empty;
  }

  // A 253-character name has at most 126 dots between non-empty labels.
  static constexpr std::size_t max_suffixes = max_host_length / 2;

  char buffer_[max_host_length];
  std::string_view name_;
  std::size_t name_hash_ = 0;
  std::size_t suffix_count_ = 0;
  std::uint8_t suffix_start_[max_suffixes];
  std::size_t suffix_hash_[max_suffixes];
  std::optional<ip_address> literal_;
};

// Visits the network rules containing a, in the sense of ip_network::contains(): an IPv4 address
// is also looked up in its mapped IPv6 form and a mapped address in its IPv4 form.
template <class Visit>
void visit_networks(const scope_index& scope, const ip_address& a, std::uint16_t port,
                    Visit& visit) {
  const bool has_v4 = !a.v6 || detail::is_v4_mapped(a);
  const ip_address v4 = a.v6 ? detail::v4_of_mapped(a) : a;
  const ip_address v6 = a.v6 ? a : detail::mapped_of_v4(a);
  for (const auto& table : scope.networks) {
    if (!table.v6 && !has_v4) continue;
    const auto key = detail::masked(table.v6 ? v6.bytes : v4.bytes, table.prefix);
    const auto it = table.by_base.find(key);
    if (it == table.by_base.end()) continue;
    for (const auto& n : it->second) {
      if (n.e.port == 0 || n.e.port == port) visit(n.e, &n.network);
    }
  }
}

// Calls visit(entry, network or nullptr) for every rule in scope whose resource and port match.
template <class Visit>
void for_each_resource_match(const scope_index& scope, const host_key& host, std::uint16_t port,
                             const std::optional<ip_address>& address, Visit&& visit) {
  const auto visit_all = [&](const std::vector<entry>& entries) {
    for (const auto& e : entries) {
      if (e.port == 0 || e.port == port) visit(e, nullptr);
    }
  };
  if (!host.name().empty() && !scope.hosts.empty()) {
    if (const auto it = scope.hosts.find(host.whole()); it != scope.hosts.end()) {
      visit_all(it->second.exact);
    }
    for (std::size_t i = 0; i < host.suffix_count(); ++i) {
      const auto it = scope.hosts.find(host.suffix(i));
      if (it == scope.hosts.end()) continue;
      if (i == 0) visit_all(it->second.one_label);
      visit_all(it->second.any_depth);
    }
  }
  if (!scope.networks.empty()) {
    if (host.literal()) visit_networks(scope, *host.literal(), port, visit);
    if (address && address != host.literal()) visit_networks(scope, *address, port, visit);
  }
  visit_all(scope.everything);
}

bool request_may_match(const rule& r, const facts& f) {
  bool unknown = false;
  if (!r.methods.empty()) {
    if (f.method.empty()) {
      unknown = true;
    } else if (std::none_of(r.methods.begin(), r.methods.end(), [&](const std::string& m) {
                 // RFC 9110 §9.1 makes methods case-sensitive, but some servers fold case; a
                 // deny for DELETE must also stop "delete".
                 return detail::iequals(m, f.method);
               })) {
      return false;
    }
  }
  if (!r.path.empty()) {
    if (f.path.empty()) {
      unknown = true;
    } else if (!path_matches(r.path, f.path)) {
      return false;
    }
  }
  // A tunnel cannot be judged by its requests yet: an allow lets it open, to be checked request
  // by request once intercepted; a deny waits for a request it can judge.
  return !unknown || r.act == action::allow;
}

struct most_specific {
  const entry* best = nullptr;
  void offer(const entry& e) {
    if (best == nullptr || e.rank < best->rank || (e.rank == best->rank && e.id < best->id)) {
      best = &e;
    }
  }
};

constexpr std::string_view default_deny_reason = "no matching allow rule (default deny)";

// One allocation: this runs for every decision.
std::string rule_reason(std::string_view verb, std::int64_t id, std::string_view description) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof digits, id).ptr;
  const std::string_view id_text(digits, end - digits);
  constexpr std::string_view by_rule = " by rule ";
  std::string reason;
  reason.reserve(verb.size() + by_rule.size() + id_text.size() + description.size() + 3);
  reason.append(verb).append(by_rule).append(id_text).append(" (").append(description) += ')';
  return reason;
}

void add_network(scope_index& scope, const detail::network_entry& n) {
  const bool v6 = n.network.base.v6;
  auto table = std::find_if(scope.networks.begin(), scope.networks.end(), [&](const auto& t) {
    return t.v6 == v6 && t.prefix == n.network.prefix;
  });
  if (table == scope.networks.end()) {
    table = scope.networks.insert(scope.networks.end(), {.v6 = v6, .prefix = n.network.prefix});
  }
  // Masked again for a rule built by hand rather than by parse_resource, which clears host bits.
  table->by_base[detail::masked(n.network.base.bytes, n.network.prefix)].push_back(n);
}

}  // namespace

rule_set::rule_set(std::vector<rule> rules) : rules_(std::move(rules)) {
  auto index = std::make_shared<detail::rule_index>();
  index->descriptions.reserve(rules_.size());
  for (std::uint32_t i = 0; i < rules_.size(); ++i) {
    const rule& r = rules_[i];
    index->descriptions.push_back(r.describe());
    auto& scope = r.sandbox.empty() ? index->global : index->sandboxes[r.sandbox];
    const entry e = make_entry(r, i);
    switch (r.res.k) {
      case resource::kind::host:
        scope.hosts[detail::to_lower_copy(r.res.host)].exact.push_back(e);
        break;
      case resource::kind::one_label_wildcard:
        scope.hosts[detail::to_lower_copy(r.res.host)].one_label.push_back(e);
        break;
      case resource::kind::any_depth_wildcard:
        scope.hosts[detail::to_lower_copy(r.res.host)].any_depth.push_back(e);
        break;
      case resource::kind::network:
        add_network(scope, {e, r.res.network});
        if (r.act == action::allow) scope.has_network_allow = true;
        break;
      case resource::kind::everything:
        scope.everything.push_back(e);
        break;
    }
  }
  index_ = std::move(index);
}

decision rule_set::decide(const facts& f) const {
  decision d;
  if (!index_) {
    d.reason = default_deny_reason;
    return d;
  }

  const host_key host(f.host);
  const std::optional<ip_address>& address = f.address ? f.address : host.literal();
  most_specific deny;
  most_specific allow;
  most_specific exception;  // allows that may reach a blocked address
  const auto consider = [&](const entry& e, const ip_network* network) {
    if (e.has_http && !request_may_match(rules_[e.position], f)) return;
    if (e.act == action::deny) {
      deny.offer(e);
      return;
    }
    allow.offer(e);
    if (e.kind == resource::kind::host || (network && address && network->contains(*address))) {
      exception.offer(e);
    }
  };
  if (!f.sandbox.empty()) {
    if (const auto it = index_->sandboxes.find(f.sandbox); it != index_->sandboxes.end()) {
      for_each_resource_match(it->second, host, f.port, address, consider);
    }
  }
  for_each_resource_match(index_->global, host, f.port, address, consider);

  if (deny.best) {
    d.rule_id = deny.best->id;
    d.reason = rule_reason("denied", deny.best->id, index_->descriptions[deny.best->position]);
    return d;
  }
  if (!allow.best) {
    d.reason = default_deny_reason;
    return d;
  }
  const entry* decisive = allow.best;
  if (address) {
    if (const auto range = blocked_range_name(*address); !range.empty()) {
      if (!exception.best) {
        d.blocked_address = true;
        d.reason = address->to_string() + " is in a blocked address range (" + std::string(range) +
                   "); allow the exact host or a CIDR containing it to reach it";
        return d;
      }
      decisive = exception.best;
    }
  }
  d.act = action::allow;
  d.rule_id = decisive->id;
  d.reason = rule_reason("allowed", decisive->id, index_->descriptions[decisive->position]);
  return d;
}

bool rule_set::has_network_allow(std::string_view sandbox) const {
  if (!index_) return false;
  if (index_->global.has_network_allow) return true;
  if (sandbox.empty()) return false;
  const auto it = index_->sandboxes.find(sandbox);
  return it != index_->sandboxes.end() && it->second.has_network_allow;
}

bool rule_set::needs_interception(std::string_view sandbox, std::string_view host,
                                  std::uint16_t port) const {
  if (!index_) return false;
  const host_key key(host);
  bool needed = false;
  const auto consider = [&](const entry& e, const ip_network*) { needed = needed || e.has_http; };
  if (!sandbox.empty()) {
    if (const auto it = index_->sandboxes.find(sandbox); it != index_->sandboxes.end()) {
      for_each_resource_match(it->second, key, port, std::nullopt, consider);
    }
  }
  for_each_resource_match(index_->global, key, port, std::nullopt, consider);
  return needed;
}

}  // namespace sbx::policy
