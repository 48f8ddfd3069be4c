#include <doctest/doctest.h>

#include <cstring>
#include <string>

#include "proxy/detail/request_head.hpp"
#include "proxy/http_checks.hpp"

using namespace sbx::proxy;
using namespace sbx::proxy::detail;

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
  // Found by the fuzzer: empty labels, and brackets around what is not an IPv6 address.
  CHECK(parse_authority("example.com.:443")->host == "example.com");
  CHECK_FALSE(parse_authority("a..:1"));
  CHECK_FALSE(parse_authority(".a:1"));
  CHECK_FALSE(parse_authority("a..b:1"));
  CHECK_FALSE(parse_authority(".:1"));
  CHECK_FALSE(parse_authority("[f:::ffff:127.0.0.1]:8080"));
  CHECK_FALSE(parse_authority("[127.0.0.1]:80"));
  CHECK_FALSE(parse_authority("[:]:80"));
  CHECK(parse_authority("[::ffff:127.0.0.1]:80")->ipv6);
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

TEST_CASE("check_request_line: RFC 9112 §3 request lines only") {
  for (auto ok : {"GET http://a.test/x?q=1 HTTP/1.1", "CONNECT a.test:443 HTTP/1.1",
                  "POST /v1/x HTTP/1.0", "OPTIONS * HTTP/1.1", "M-SEARCH * HTTP/1.1"}) {
    CAPTURE(ok);
    CHECK(check_request_line(ok).empty());
  }
  struct row {
    std::string line;
    std::string reason_part;
  };
  const row rows[] = {
      {"GET /", "HTTP/0.9"},
      {"GET http://a.test/?secret=1", "HTTP/0.9"},
      {"GARBAGE", "without a target"},
      {"GET / HTTP/2.0", "unsupported HTTP version"},
      {"GET / HTTP/1.2", "unsupported HTTP version"},
      {"GET / HTTP/1.10", "unsupported HTTP version"},
      {"GET / http/1.1", "unsupported HTTP version"},
      {"GET / HTTP/1.1 ", "one space"},
      {"GET  / HTTP/1.1", "one space"},
      {"GET /  HTTP/1.1", "one space"},
      {"GET\t/ HTTP/1.1", "invalid method"},
      {"G(T / HTTP/1.1", "invalid method"},
      {" GET / HTTP/1.1", "invalid method"},
      {"GET /a\tb HTTP/1.1", "visible ASCII"},
      {"GET /caf\xc3\xa9 HTTP/1.1", "visible ASCII"},
      {"GET /public#/../admin HTTP/1.1", "#fragment"},
      {"GET http://a.test/x?q=1#f HTTP/1.1", "#fragment"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.line);
    const auto reason = check_request_line(r.line);
    CHECK(reason.find(r.reason_part) != std::string::npos);
    CHECK(reason.find("secret") == std::string::npos);  // never a copy of the target
  }
}

TEST_CASE("check_transfer_encoding accepts exactly one chunked coding") {
  for (auto ok : {"chunked", "CHUNKED", "Chunked", " chunked ", "chunked\t"}) {
    CAPTURE(ok);
    CHECK(check_transfer_encoding(ok).empty());
  }
  for (auto bad : {"identity, chunked", "gzip, chunked", "chunked, chunked", "chunked,",
                   ", chunked", "xchunked", "chunked;q=1", "chunked ;q=1", "identity", "",
                   "chun ked", "chunked, identity", "\"chunked\""}) {
    CAPTURE(bad);
    CHECK(!check_transfer_encoding(bad).empty());
  }
}

TEST_CASE("check_content_length: 1*DIGIT, no sign, list or leading zero") {
  for (auto ok : {"0", "5", "1234567890", "999999999999999999"}) {
    CAPTURE(ok);
    CHECK(check_content_length(ok).empty());
  }
  for (auto bad : {"", "-1", "+5", "05", "00", "5, 5", "5,5", "0x10", "5 5", "1e3",
                   "99999999999999999999", "4x"}) {
    CAPTURE(bad);
    CHECK(!check_content_length(bad).empty());
  }
}

TEST_CASE("upgrade_is_websocket: only a switch to WebSocket") {
  for (auto ok : {"websocket", "WebSocket", " websocket "}) {
    CAPTURE(ok);
    CHECK(upgrade_is_websocket(ok));
  }
  for (auto bad : {"h2c", "websocket, h2c", "h2c, websocket", "TLS/1.0", "websocket/13", "HTTP/2.0",
                   "", "xwebsocket"}) {
    CAPTURE(bad);
    CHECK_FALSE(upgrade_is_websocket(bad));
  }
  CHECK(is_hop_by_hop("HTTP2-Settings"));
}

// Reading and judging request heads: a malformed head is handed over as soon as it is certain to
// be refused (never a wait for an end it will not send), and Beast's reading of every
// Transfer-Encoding / Content-Length trick is pinned down.
namespace {

// How much of `data` head_scan hands over when it arrives in one piece, and byte by byte (the
// answer must not depend on how the bytes are split).
std::size_t scan_all(std::string_view data) {
  head_scan whole;
  const auto n = whole.advance(data);
  head_scan trickled;
  std::size_t m = 0;
  for (std::size_t i = 1; i <= data.size() && m == 0; ++i)
    m = trickled.advance(data.substr(0, i));
  CHECK(n == m);
  return n;
}

struct judged {
  std::string reason;
  bool chunked = false;
};

judged judge(const std::string& head) {
  beast::flat_buffer buf;
  auto b = buf.prepare(head.size());
  std::memcpy(b.data(), head.data(), head.size());
  buf.commit(head.size());
  request_parser p;
  judged j;
  j.reason = parse_request_head(buf, head.size(), 64 * 1024, p);
  j.chunked = p.is_header_done() && p.chunked();
  return j;
}

std::string post(std::string_view fields) {
  return "POST http://a.test/x HTTP/1.1\r\nHost: a.test\r\n" + std::string(fields) + "\r\n";
}

}  // namespace

TEST_CASE("head_scan hands over a complete head at its empty line") {
  const std::string head = "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n";
  CHECK(scan_all(head) == head.size());
  CHECK(scan_all(head + "GET http://a.test/next HTTP/1.1\r\n") == head.size());
  CHECK(scan_all("GET http://a.test/ HTTP/1.1\r\n\r\n") == 31);
  CHECK(scan_all("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n") == 0);  // more to come
  CHECK(scan_all("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r") == 0);
  CHECK(scan_all("GET http://a.te") == 0);
}

TEST_CASE("head_scan hands over a malformed head at once") {
  // A bare LF anywhere: at the LF, whatever follows.
  CHECK(scan_all("GET http://x/ HTTP/1.1\nHost: x\n\n") == 23);
  CHECK(scan_all("GET http://x/ HTTP/1.1\r\nHost: x\n") == 32);
  CHECK(scan_all("\n") == 1);
  // A bare CR: at the byte after it.
  CHECK(scan_all("GET http://x/ HTTP/1.1\r\nHost: x\rY") == 33);
  // HTTP/0.9 and other bad request lines: at the end of the line.
  CHECK(scan_all("GET /\r\n") == 7);
  CHECK(scan_all("GET / HTTP/2.0\r\n") == 16);
  CHECK(scan_all("GET /#x HTTP/1.1\r\nHost: x\r\n") == 18);
}

TEST_CASE("parse_request_head refuses a head handed over early, with the reason") {
  CHECK(judge("GET http://x/ HTTP/1.1\n").reason.find("bare LF") != std::string::npos);
  CHECK(judge("GET /?secret=1\r\n").reason.find("HTTP/0.9") != std::string::npos);
  CHECK(judge("GET /?secret=1\r\n").reason.find("secret") == std::string::npos);
  CHECK(judge("GET http://x/ http/1.1\r\n").reason.find("version") != std::string::npos);
  CHECK(judge("GET http://x/ HTTP/1.1\r\nHost: x\r\n").reason == "incomplete request head");
}

TEST_CASE("Transfer-Encoding: what Beast reads as chunked is accepted only when unambiguous") {
  // Each variant: what Beast alone makes of it (chunked or not, error or not) does not matter;
  // what must hold is that only the one unambiguous spelling passes.
  CHECK(judge(post("Transfer-Encoding: chunked\r\n")).reason.empty());
  CHECK(judge(post("Transfer-Encoding: CHUNKED\r\n")).reason.empty());
  CHECK(judge(post("Transfer-Encoding:\tchunked\r\n")).reason.empty());
  CHECK(judge(post("Transfer-Encoding:  chunked  \r\n")).chunked);
  for (auto fields : {
           "Transfer-Encoding: identity, chunked\r\n",
           "Transfer-Encoding: gzip, chunked\r\n",
           "Transfer-Encoding: chunked, chunked\r\n",
           "Transfer-Encoding: xchunked\r\n",
           "Transfer-Encoding: chunked;q=1\r\n",
           "Transfer-Encoding: chunked, identity\r\n",
           "Transfer-Encoding: identity\r\n",
           "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
           "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
           "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
           "Transfer-Encoding: \r\nTransfer-Encoding: chunked\r\n",
           "Transfer-Encoding : chunked\r\n",
           "Transfer_Encoding: chunked\r\nContent-Length: 3\r\n",  // not TE: CL frames it
           "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
           "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
           "Content-Length: 3\r\nTransfer-Encoding: xchunked\r\n",
       }) {
    const std::string shown = fields;
    CAPTURE(shown);
    const auto j = judge(post(fields));
    if (std::string_view(fields).starts_with("Transfer_Encoding")) {
      CHECK(j.reason.empty());  // an unknown field; the length is the Content-Length
      CHECK_FALSE(j.chunked);
    } else {
      CHECK_FALSE(j.reason.empty());
    }
  }
  // HTTP/1.0 has no chunked coding (RFC 9112 §6.1).
  CHECK_FALSE(
      judge("POST http://a.test/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n").reason.empty());
}

TEST_CASE("Content-Length, Host, Expect and field-count checks") {
  CHECK(judge(post("Content-Length: 3\r\n")).reason.empty());
  CHECK(judge(post("Expect: 100-continue\r\nContent-Length: 3\r\n")).reason.empty());
  for (auto fields : {
           "Content-Length: 3\r\nContent-Length: 3\r\n",
           "Content-Length: 3, 3\r\n",
           "Content-Length: 3\r\nContent-Length: 4\r\n",
           "Content-Length: -1\r\n",
           "Content-Length: +3\r\n",
           "Content-Length: 003\r\n",
           "Content-Length: 99999999999999999999999\r\n",
           "Content-Length: 3 3\r\n",
           "Host: b.test\r\n",
           "Expect: 100-continue, x\r\n",
           "Expect: something\r\n",
           "Expect: 100-continue\r\nExpect: 100-continue\r\n",
       }) {
    CAPTURE(fields);
    CHECK_FALSE(judge(post(fields)).reason.empty());
  }
  // Host (post) + these: one more than a request may have, so that what goes upstream (plus Via
  // and a credential field) stays within max_header_fields.
  constexpr auto most = max_header_fields - proxy_added_fields;
  std::string many;
  for (std::size_t i = 0; i < most; ++i)
    many += "X-" + std::to_string(i) + ": v\r\n";
  CHECK(judge(post(many)).reason.find("header fields") != std::string::npos);
  std::string enough;
  for (std::size_t i = 0; i + 1 < most; ++i)
    enough += "X-" + std::to_string(i) + ": v\r\n";
  CHECK(judge(post(enough)).reason.empty());
}
