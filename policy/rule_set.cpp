// The decision engine: rule_set indexes rules by scope, host suffix, kind and network prefix, and
// decide() walks the host's label suffixes and the address's prefixes to find the rules that
// apply.
#include <algorithm>
#include <charconv>
#include <cstring>
#include <unordered_map>
#include <utility>

#include "policy/detail/address.hpp"
#include "policy/detail/ascii.hpp"
#include "policy/rule.hpp"

namespace sbx::policy {

namespace {
using detail::is_digit;
using detail::to_lower;
// RFC 1035 §2.3.4, for the name without its trailing dot.
constexpr std::size_t max_host_length = 253;
}  // namespace

std::string decision::rule_label() const {
  return rule_id == 0 ? std::string("default") : std::to_string(rule_id);
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
    } else if (!path_matches(r.path, f.path, /*fold_case=*/r.act == action::deny)) {
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
  bool allowed_by_name = false;
  const auto consider = [&](const entry& e, const ip_network* network) {
    if (e.has_http && !request_may_match(rules_[e.position], f)) return;
    if (e.act == action::deny) {
      deny.offer(e);
      return;
    }
    allow.offer(e);
    allowed_by_name = allowed_by_name || e.kind != resource::kind::network;
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
  // A CIDR allow alone does not allow a name: the proxy resolves only names a name rule allows, so
  // that a denied name never reaches a resolver, and decide() answers the same with or without the
  // address.
  if (!allow.best || (!host.literal() && !allowed_by_name)) {
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
