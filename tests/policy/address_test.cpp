// ip_address, ip_network and the blocked address ranges.
#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "policy/rule.hpp"

using sbx::policy::blocked_range_name;
using sbx::policy::ip_address;
using sbx::policy::ip_network;
using sbx::policy::is_blocked_address;

namespace {

ip_address address(std::string_view text) {
  const auto a = ip_address::parse(text);
  REQUIRE_MESSAGE(a.has_value(), text);
  return *a;
}

ip_network network(std::string_view base, int prefix) {
  return {address(base), prefix};
}

}  // namespace

TEST_CASE("ip_address::parse accepts IPv4 and IPv6 and prints them canonically") {
  struct row {
    std::string_view text;
    bool v6;
    std::string_view printed;
  };
  const row rows[] = {
      {"192.0.2.1", false, "192.0.2.1"},
      {"0.0.0.0", false, "0.0.0.0"},
      {"255.255.255.255", false, "255.255.255.255"},
      {"::1", true, "::1"},
      {"[::1]", true, "::1"},
      {"::", true, "::"},
      {"2001:DB8:0:0:0:0:0:1", true, "2001:db8::1"},
      {"[2001:db8::1]", true, "2001:db8::1"},
      {"fe80::1", true, "fe80::1"},
      {"::ffff:127.0.0.1", true, "::ffff:127.0.0.1"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.text);
    const auto a = ip_address::parse(r.text);
    REQUIRE(a.has_value());
    CHECK(a->v6 == r.v6);
    CHECK(a->to_string() == r.printed);
  }
}

TEST_CASE("ip_address::parse stores network-order bytes") {
  const auto v4 = address("192.0.2.1");
  CHECK(v4.bytes[0] == 192);
  CHECK(v4.bytes[1] == 0);
  CHECK(v4.bytes[2] == 2);
  CHECK(v4.bytes[3] == 1);
  for (int i = 4; i < 16; ++i)
    CHECK(v4.bytes[i] == 0);

  const auto mapped = address("::ffff:10.0.0.1");
  CHECK(mapped.v6);
  CHECK(mapped.bytes[10] == 0xff);
  CHECK(mapped.bytes[11] == 0xff);
  CHECK(mapped.bytes[12] == 10);
  CHECK(mapped.bytes[15] == 1);
  CHECK(address("::1") == address("[0:0:0:0:0:0:0:1]"));
  CHECK_FALSE(address("10.0.0.1") == address("::ffff:10.0.0.1"));
}

TEST_CASE("ip_address::parse rejects what is not an address") {
  for (std::string_view text :
       {"", "example.com", "1.2.3", "1.2.3.4.5", "256.0.0.1", "01.2.3.4", " 1.2.3.4", "1.2.3.4 ",
        "[192.0.2.1]", "[::1", "::1]", "::g", "1::2::3", "fe80::1%eth0", "[]", "1.2.3.4:80",
        "0000000000000000000000000000000000000000000000000000::1"}) {
    CAPTURE(text);
    CHECK_FALSE(ip_address::parse(text).has_value());
  }
}

TEST_CASE("ip_network::contains and to_string") {
  struct row {
    ip_network net;
    std::string_view addr;
    bool inside;
  };
  const row rows[] = {
      {network("10.0.0.0", 8), "10.255.255.255", true},
      {network("10.0.0.0", 8), "11.0.0.0", false},
      {network("10.0.0.0", 8), "9.255.255.255", false},
      {network("172.16.0.0", 12), "172.31.0.1", true},
      {network("172.16.0.0", 12), "172.32.0.1", false},
      {network("192.0.2.1", 32), "192.0.2.1", true},
      {network("192.0.2.1", 32), "192.0.2.2", false},
      {network("0.0.0.0", 0), "203.0.113.9", true},
      {network("0.0.0.0", 0), "2001:db8::1", false},
      {network("2001:db8::", 32), "2001:db8:ffff::1", true},
      {network("2001:db8::", 32), "2001:db9::1", false},
      {network("::1", 128), "::1", true},
      {network("::1", 128), "::2", false},
      {network("::", 0), "192.0.2.1", true},
      // A dual-stack resolver may hand out the mapped form; it is the same host.
      {network("10.0.0.0", 8), "::ffff:10.1.2.3", true},
      {network("10.0.0.0", 8), "::ffff:11.1.2.3", false},
      {network("::ffff:10.0.0.0", 104), "10.9.9.9", true},
      {network("::ffff:10.0.0.0", 104), "11.9.9.9", false},
      {network("10.0.0.0", 8), "::a01:203", false},  // IPv4-compatible, not mapped
  };
  for (const auto& r : rows) {
    CAPTURE(r.net.to_string());
    CAPTURE(r.addr);
    CHECK(r.net.contains(address(r.addr)) == r.inside);
  }
  CHECK(network("10.0.0.0", 8).to_string() == "10.0.0.0/8");
  CHECK(network("::1", 128).to_string() == "::1/128");
  CHECK(network("2001:db8::", 32).to_string() == "2001:db8::/32");
}

TEST_CASE("blocked ranges: every listed range, its edges and its neighbours") {
  struct row {
    std::string_view addr;
    std::string_view range;  // empty = not blocked
  };
  const row rows[] = {
      {"0.0.0.0", "unspecified"},
      {"0.0.0.1", "this-network"},
      {"0.255.255.255", "this-network"},
      {"1.0.0.0", ""},
      {"127.0.0.1", "loopback"},
      {"127.255.255.255", "loopback"},
      {"126.255.255.255", ""},
      {"128.0.0.0", ""},
      {"10.0.0.0", "private"},
      {"10.255.255.255", "private"},
      {"11.0.0.0", ""},
      {"172.16.0.0", "private"},
      {"172.31.255.255", "private"},
      {"172.15.255.255", ""},
      {"172.32.0.0", ""},
      {"192.168.0.1", "private"},
      {"192.168.255.255", "private"},
      {"192.167.255.255", ""},
      {"192.169.0.0", ""},
      {"169.254.169.254", "link-local"},
      {"169.253.255.255", ""},
      {"169.255.0.0", ""},
      {"100.64.0.0", "shared"},
      {"100.127.255.255", "shared"},
      {"100.63.255.255", ""},
      {"100.128.0.0", ""},
      {"8.8.8.8", ""},
      {"::", "unspecified"},
      {"::1", "loopback"},
      {"::2", ""},
      {"fc00::1", "unique-local"},
      {"fdff:ffff::1", "unique-local"},
      {"fbff:ffff::1", ""},
      {"fe00::1", ""},
      {"fe80::1", "link-local"},
      {"febf:ffff::1", "link-local"},
      {"fec0::1", ""},
      {"2001:db8::1", ""},
      {"::ffff:127.0.0.1", "loopback"},
      {"::ffff:10.1.1.1", "private"},
      {"::ffff:172.16.0.1", "private"},
      {"::ffff:192.168.1.1", "private"},
      {"::ffff:169.254.169.254", "link-local"},
      {"::ffff:100.64.0.1", "shared"},
      {"::ffff:0.0.0.0", "unspecified"},
      {"::ffff:0.1.2.3", "this-network"},
      {"::ffff:8.8.8.8", ""},
  };
  for (const auto& r : rows) {
    CAPTURE(r.addr);
    CHECK(blocked_range_name(address(r.addr)) == r.range);
    CHECK(is_blocked_address(address(r.addr)) == !r.range.empty());
  }
}
