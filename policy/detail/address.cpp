// IP addresses, networks and the address ranges the proxy refuses to reach by default.
#include <arpa/inet.h>

#include <cstring>
#include <span>

#include "policy/detail/address.hpp"
#include "policy/rule.hpp"

namespace sbx::policy {
namespace {

using detail::is_v4_mapped;
using detail::mapped_of_v4;
using detail::v4_of_mapped;

// Longest textual IPv6 address (INET6_ADDRSTRLEN) plus brackets; anything longer is not an address.
constexpr std::size_t max_address_text = 48;

bool prefix_equal(const std::array<std::uint8_t, 16>& a, const std::array<std::uint8_t, 16>& b,
                  int prefix) {
  const int whole = prefix / 8;
  if (std::memcmp(a.data(), b.data(), whole) != 0) return false;
  const int rest = prefix % 8;
  if (rest == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xff << (8 - rest));
  return (a[whole] & mask) == (b[whole] & mask);
}

struct named_range {
  std::array<std::uint8_t, 16> base;
  int prefix;
  std::string_view name;
};

// Most specific first: 0.0.0.0 is "unspecified" within 0/8 "this-network" (RFC 6890). Connecting to
// 0.0.0.0 or :: reaches the local host on Linux, hence their place here.
constexpr std::array<named_range, 8> blocked_v4{{
    {{0, 0, 0, 0}, 32, "unspecified"},
    {{0}, 8, "this-network"},
    {{127}, 8, "loopback"},
    {{10}, 8, "private"},
    {{172, 16}, 12, "private"},
    {{192, 168}, 16, "private"},
    {{169, 254}, 16, "link-local"},
    {{100, 64}, 10, "shared"},  // RFC 6598 carrier-grade NAT
}};

constexpr std::array<named_range, 4> blocked_v6{{
    {{}, 128, "unspecified"},
    {{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 128, "loopback"},
    {{0xfc}, 7, "unique-local"},  // RFC 4193
    {{0xfe, 0x80}, 10, "link-local"},
}};

}  // namespace

std::optional<ip_address> ip_address::parse(std::string_view text) {
  bool bracketed = false;
  if (text.size() >= 2 && text.front() == '[' && text.back() == ']') {
    text = text.substr(1, text.size() - 2);
    bracketed = true;
  }
  if (text.empty() || text.size() >= max_address_text) return std::nullopt;
  // inet_pton needs a terminated string; a stack copy keeps decide() free of allocations.
  char buffer[max_address_text];
  std::memcpy(buffer, text.data(), text.size());
  buffer[text.size()] = '\0';
  ip_address a;
  if (!bracketed && inet_pton(AF_INET, buffer, a.bytes.data()) == 1) return a;
  if (inet_pton(AF_INET6, buffer, a.bytes.data()) == 1) {
    a.v6 = true;
    return a;
  }
  return std::nullopt;
}

std::string ip_address::to_string() const {
  char buffer[INET6_ADDRSTRLEN];
  if (inet_ntop(v6 ? AF_INET6 : AF_INET, bytes.data(), buffer, sizeof buffer) == nullptr) return {};
  return buffer;
}

bool ip_network::contains(const ip_address& a) const {
  if (base.v6 == a.v6) return prefix_equal(base.bytes, a.bytes, prefix);
  if (!base.v6 && is_v4_mapped(a)) return prefix_equal(base.bytes, v4_of_mapped(a).bytes, prefix);
  if (base.v6 && !a.v6) return prefix_equal(base.bytes, mapped_of_v4(a).bytes, prefix);
  return false;
}

std::string ip_network::to_string() const {
  return base.to_string() + '/' + std::to_string(prefix);
}

std::string_view blocked_range_name(const ip_address& a) {
  if (is_v4_mapped(a)) return blocked_range_name(v4_of_mapped(a));
  // Most addresses are public; their first byte says so without a walk over the ranges.
  const std::uint8_t first = a.bytes[0];
  if (a.v6 ? first != 0 && (first & 0xfe) != 0xfc && first != 0xfe
           : first != 0 && first != 10 && first != 100 && first != 127 && first != 169 &&
                 first != 172 && first != 192) {
    return {};
  }
  const std::span<const named_range> ranges =
      a.v6 ? std::span<const named_range>(blocked_v6) : std::span<const named_range>(blocked_v4);
  for (const auto& range : ranges) {
    if (prefix_equal(range.base, a.bytes, range.prefix)) return range.name;
  }
  return {};
}

bool is_blocked_address(const ip_address& a) {
  return !blocked_range_name(a).empty();
}

}  // namespace sbx::policy
