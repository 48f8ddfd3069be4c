// Byte-level helpers shared by ip_network and the rule index.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>

#include "policy/rule.hpp"

namespace sbx::policy::detail {

using address_bytes = std::array<std::uint8_t, 16>;

// RFC 4291 §2.5.5.2: ::ffff:a.b.c.d carries an IPv4 address.
inline constexpr std::array<std::uint8_t, 12> v4_mapped_prefix{0, 0, 0, 0, 0,    0,
                                                               0, 0, 0, 0, 0xff, 0xff};

[[nodiscard]] inline bool is_v4_mapped(const ip_address& a) {
  return a.v6 && std::memcmp(a.bytes.data(), v4_mapped_prefix.data(), v4_mapped_prefix.size()) == 0;
}

[[nodiscard]] inline ip_address v4_of_mapped(const ip_address& a) {
  ip_address v4;
  std::memcpy(v4.bytes.data(), a.bytes.data() + 12, 4);
  return v4;
}

[[nodiscard]] inline ip_address mapped_of_v4(const ip_address& a) {
  ip_address v6{.v6 = true};
  std::memcpy(v6.bytes.data(), v4_mapped_prefix.data(), v4_mapped_prefix.size());
  std::memcpy(v6.bytes.data() + 12, a.bytes.data(), 4);
  return v6;
}

// The first prefix bits of bytes, the rest cleared.
[[nodiscard]] inline address_bytes masked(const address_bytes& bytes, int prefix) {
  address_bytes out{};
  const int whole = prefix / 8;
  std::memcpy(out.data(), bytes.data(), whole);
  if (const int rest = prefix % 8; rest != 0) {
    out[whole] = static_cast<std::uint8_t>(bytes[whole] & (0xff << (8 - rest)));
  }
  return out;
}

}  // namespace sbx::policy::detail
