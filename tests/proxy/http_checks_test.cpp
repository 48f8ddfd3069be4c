#include <doctest/doctest.h>

#include <string>

#include "proxy/http_checks.hpp"

using namespace sbx::proxy;

TEST_CASE("check_raw_head accepts a well-formed head") {
  CHECK(
      check_raw_head("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Tab: a\tb\r\n\r\n").empty());
}

TEST_CASE("check_raw_head refuses what RFC 9112 forbids") {
  struct row {
    std::string head;
    std::string reason_part;
  };
  const row rows[] = {
      {"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", "obs-fold"},
      {"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n", "obs-fold"},
      {"GET / HTTP/1.1\r\nX: a\x01"
       "b\r\n\r\n",
       "control character 0x01"},
      {"GET / HTTP/1.1\r\nX: a\x7f\r\n\r\n", "control character 0x7f"},
      {"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", "bare CR"},
      {"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF"},
      {std::string("GET / HTTP/1.1\r\nX: a") + '\0' + "b\r\n\r\n", "control character 0x00"},
      {"GET /\x02 HTTP/1.1\r\n\r\n", "request line"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.head);
    const auto reason = check_raw_head(r.head);
    CHECK(reason.find(r.reason_part) != std::string::npos);
  }
}

TEST_CASE("parse_authority") {
  auto a = parse_authority("Example.COM.:8443");
  REQUIRE(a);
  CHECK(a->host == "example.com");
  CHECK(a->port == 8443);
  CHECK(a->text() == "example.com:8443");

  auto v6 = parse_authority("[2001:DB8::1]:443");
  REQUIRE(v6);
  CHECK(v6->host == "2001:db8::1");
  CHECK(v6->ipv6);
  CHECK(v6->text() == "[2001:db8::1]:443");

  CHECK(parse_authority("example.com", 80)->port == 80);
  CHECK_FALSE(parse_authority("example.com"));  // CONNECT needs a port
  CHECK_FALSE(parse_authority("example.com:"));
  CHECK_FALSE(parse_authority("example.com:0"));
  CHECK_FALSE(parse_authority("example.com:65536"));
  CHECK_FALSE(parse_authority("example.com:44x"));
  CHECK_FALSE(parse_authority("exa mple.com:443"));
  CHECK_FALSE(parse_authority("user@example.com:443"));
  CHECK_FALSE(parse_authority("[::1"));
  CHECK_FALSE(parse_authority("[zz::1]:443"));
  CHECK_FALSE(parse_authority(":443"));
}

TEST_CASE("parse_absolute_target") {
  auto t = parse_absolute_target("http://Api.Test:8080/v1/x?q=secret#frag");
  REQUIRE(t);
  CHECK(t->scheme == "http");
  CHECK(t->where.host == "api.test");
  CHECK(t->where.port == 8080);
  CHECK(t->origin_form == "/v1/x?q=secret");
  CHECK(t->path == "/v1/x");

  auto bare = parse_absolute_target("HTTP://a.test");
  REQUIRE(bare);
  CHECK(bare->where.port == 80);
  CHECK(bare->origin_form == "/");

  auto query_only = parse_absolute_target("http://a.test?x=1");
  REQUIRE(query_only);
  CHECK(query_only->origin_form == "/?x=1");
  CHECK(query_only->path == "/");

  CHECK(parse_absolute_target("https://a.test/")->where.port == 443);
  CHECK_FALSE(parse_absolute_target("/relative"));
  CHECK_FALSE(parse_absolute_target("ftp://a.test/"));
  CHECK_FALSE(parse_absolute_target("http://user:pw@a.test/"));
  CHECK_FALSE(parse_absolute_target("http://a.test:99999/"));
}

TEST_CASE("is_hop_by_hop") {
  for (auto f : {"Connection", "keep-alive", "Proxy-Connection", "Proxy-Authorization", "TE",
                 "Upgrade", "proxy-authenticate"}) {
    CAPTURE(f);
    CHECK(is_hop_by_hop(f));
  }
  for (auto f :
       {"Host", "Authorization", "Content-Length", "Transfer-Encoding", "Trailer", "x-api-key"}) {
    CAPTURE(f);
    CHECK_FALSE(is_hop_by_hop(f));
  }
}
