#include "proxy/client_hello.hpp"

#include <openssl/bio.h>
#include <openssl/ssl.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <doctest/doctest.h>

using sbx::proxy::client_hello_max_message;
using sbx::proxy::client_hello_max_records;
using sbx::proxy::client_hello_result;
using sbx::proxy::parse_client_hello;
using status = client_hello_result::status;

namespace {

// The first flight of a real OpenSSL client: SSL_connect on memory BIOs writes its ClientHello
// and then waits for a ServerHello that never comes.
std::string openssl_client_hello(const char* sni, int max_version = TLS1_3_VERSION) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  REQUIRE(ctx != nullptr);
  SSL_CTX_set_max_proto_version(ctx, max_version);
  SSL* ssl = SSL_new(ctx);
  REQUIRE(ssl != nullptr);
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  if (sni != nullptr) REQUIRE(SSL_set_tlsext_host_name(ssl, sni) == 1);
  CHECK(SSL_connect(ssl) == -1);
  char* data = nullptr;
  const long n = BIO_get_mem_data(out, &data);
  REQUIRE(n > 0);
  std::string hello(data, static_cast<std::size_t>(n));
  SSL_free(ssl);
  SSL_CTX_free(ctx);
  return hello;
}

void put16(std::string& s, std::size_t v) {
  s.push_back(static_cast<char>((v >> 8) & 0xff));
  s.push_back(static_cast<char>(v & 0xff));
}

std::string record(std::string_view payload, std::uint8_t type = 22) {
  std::string r{static_cast<char>(type), 3, 1};
  put16(r, payload.size());
  r.append(payload);
  return r;
}

// The handshake message carried by a single-record first flight.
std::string message_of(const std::string& flight) {
  REQUIRE(flight.size() > 5);
  const std::size_t len =
      (static_cast<unsigned char>(flight[3]) << 8) | static_cast<unsigned char>(flight[4]);
  REQUIRE(flight.size() >= 5 + len);
  return flight.substr(5, len);
}

// The same handshake message re-framed into records of at most `size` bytes.
std::string reframe(std::string_view message, std::size_t size) {
  std::string out;
  for (std::size_t i = 0; i < message.size(); i += size)
    out += record(message.substr(i, size));
  return out;
}

std::string handshake(std::string_view body, std::uint8_t type = 1) {
  std::string m{static_cast<char>(type), static_cast<char>((body.size() >> 16) & 0xff)};
  put16(m, body.size());
  m.append(body);
  return m;
}

// A hand-built ClientHello body with the given extensions block (nullopt: none at all).
std::string hello_body(std::optional<std::string> extensions) {
  std::string b{3, 3};
  b.append(32, '\x11');  // random
  b.push_back(0);        // session id
  put16(b, 2);
  b.append("\x13\x01", 2);  // TLS_AES_128_GCM_SHA256
  b.push_back(1);
  b.push_back(0);  // null compression
  if (extensions) {
    put16(b, extensions->size());
    b.append(*extensions);
  }
  return b;
}

std::string extension(std::uint16_t type, std::string_view data) {
  std::string e;
  put16(e, type);
  put16(e, data.size());
  e.append(data);
  return e;
}

std::string server_name_ext(std::string_view name, std::uint8_t name_type = 0) {
  std::string entry{static_cast<char>(name_type)};
  put16(entry, name.size());
  entry.append(name);
  std::string list;
  put16(list, entry.size());
  list.append(entry);
  return extension(0, list);
}

std::string flight_with(std::optional<std::string> extensions) {
  return record(handshake(hello_body(std::move(extensions))));
}

client_hello_result parse(std::string_view s) {
  return parse_client_hello(s);
}

}  // namespace

TEST_CASE("a real ClientHello yields its SNI, lower-cased and without the trailing dot") {
  for (int version : {TLS1_3_VERSION, TLS1_2_VERSION}) {
    CAPTURE(version);
    auto r = parse(openssl_client_hello("Api.Example.COM.", version));
    REQUIRE(r.state == status::ok);
    REQUIRE(r.sni.has_value());
    CHECK(*r.sni == "api.example.com");
  }
}

TEST_CASE("a ClientHello without server_name is ok with no SNI") {
  auto r = parse(openssl_client_hello(nullptr));
  CHECK(r.state == status::ok);
  CHECK_FALSE(r.sni.has_value());
  r = parse(flight_with(std::nullopt));  // no extensions block at all
  CHECK(r.state == status::ok);
  CHECK_FALSE(r.sni.has_value());
  r = parse(flight_with(std::string{}));  // an empty one
  CHECK(r.state == status::ok);
  CHECK_FALSE(r.sni.has_value());
}

TEST_CASE(
    "every prefix of a ClientHello needs more; the whole one is read (split at every offset)") {
  const auto hello = openssl_client_hello("denied.test");
  for (std::size_t n = 0; n < hello.size(); ++n) {
    CAPTURE(n);
    REQUIRE(parse(std::string_view(hello).substr(0, n)).state == status::need_more);
  }
  auto r = parse(hello);
  REQUIRE(r.state == status::ok);
  CHECK(*r.sni == "denied.test");
}

TEST_CASE("a ClientHello spread over several records is reassembled") {
  const auto message = message_of(openssl_client_hello("multi.example.org"));
  const std::size_t smallest = (message.size() + client_hello_max_records - 1) /
                               client_hello_max_records;  // 32 records at most
  for (std::size_t size :
       {smallest, std::size_t{64}, std::size_t{100}, message.size() / 2 + 1, message.size() - 1}) {
    if (size < smallest) continue;
    CAPTURE(size);
    const auto flight = reframe(message, size);
    for (std::size_t n = 0; n < flight.size(); ++n) {
      CAPTURE(n);
      REQUIRE(parse(std::string_view(flight).substr(0, n)).state == status::need_more);
    }
    auto r = parse(flight);
    REQUIRE(r.state == status::ok);
    CHECK(*r.sni == "multi.example.org");
  }
  SUBCASE("the handshake header itself split across records") {
    auto flight =
        record(message.substr(0, 1)) + record(message.substr(1, 2)) + record(message.substr(3));
    auto r = parse(flight);
    REQUIRE(r.state == status::ok);
    CHECK(*r.sni == "multi.example.org");
  }
  SUBCASE("more records than allowed") {
    auto r = parse(reframe(message, 1));
    CHECK(r.state == status::malformed);
    CHECK(r.reason.find("records") != std::string::npos);
  }
}

TEST_CASE("bytes after the ClientHello do not change the answer") {
  const auto hello = openssl_client_hello("a.example");
  auto r = parse(hello + record("\x01", 20) + "garbage");
  REQUIRE(r.state == status::ok);
  CHECK(*r.sni == "a.example");
  // The ClientHello complete inside a longer record that is not all here yet.
  auto message = message_of(hello);
  auto longer = record(message + std::string(100, '\0'));
  r = parse(std::string_view(longer).substr(0, 5 + message.size()));
  REQUIRE(r.state == status::ok);
  CHECK(*r.sni == "a.example");
}

TEST_CASE("other protocols are not TLS") {
  for (std::string_view s :
       {std::string_view("SSH-2.0-OpenSSH_9.2\r\n"), std::string_view("GET / HTTP/1.1\r\n"),
        std::string_view("EHLO x\r\n"), std::string_view("\x16\x01\x00", 3),
        std::string_view("\x80\x2e\x01"), std::string_view("\x00", 1)}) {
    CAPTURE(s);
    CHECK(parse(s).state == status::not_tls);
  }
  CHECK(parse("").state == status::need_more);
  CHECK(parse("\x16").state == status::need_more);
  CHECK(parse("\x16\x03").state == status::need_more);
}

TEST_CASE("malformed ClientHellos are refused with a reason") {
  const auto message = message_of(openssl_client_hello("x.example"));
  struct bad_case {
    const char* name;
    std::string bytes;
    const char* reason_part;
  };
  std::vector<bad_case> cases{
      {"not a ClientHello", record(handshake(hello_body(std::nullopt), 2)), "type 2"},
      {"empty record", record("") + record(message), "empty"},
      {"record too long", std::string("\x16\x03\x01\x40\x01", 5) + std::string(0x4001, '\x01'),
       "2^14"},
      {"message too long", record(std::string("\x01\x00\x40\x00", 4) + std::string(200, '\0')),
       "at most"},
      {"message too short", record(handshake("\x03\x03")), "too short"},
      {"alert inside", record(message.substr(0, 10)) + record("\x02\x28", 21), "type 21"},
      {"bad version in 2nd record",
       record(message.substr(0, 10)) + std::string("\x16\x02\x01\x00\x01x", 6), "3.x"},
      {"session id too long",
       [] {
         auto b = hello_body(std::nullopt);
         b[34] = 33;
         b.insert(35, 33, 'x');
         return record(handshake(b));
       }(),
       "session id"},
      {"fields overrun", record(handshake(std::string(2 + 32, 'x') + "\xff" + std::string(8, 'x'))),
       "overrun"},
      {"odd cipher suites",
       [] {
         auto b = hello_body(std::nullopt);
         b[36] = 3;
         b.insert(39, 1, 'x');
         return record(handshake(b));
       }(),
       "cipher_suites"},
      {"extensions length mismatch",
       record(handshake(hello_body(std::nullopt) + std::string("\x00\x09xx", 4))),
       "extensions length"},
      {"truncated extension", flight_with(std::string("\x00\x00\x00\x09xx", 6)), "truncated"},
      {"two server_name extensions",
       flight_with(server_name_ext("a.test") + server_name_ext("b.test")), "twice"},
      {"duplicate other extension",
       flight_with(extension(10, "ab") + server_name_ext("a.test") + extension(10, "ab")), "twice"},
      {"two host names",
       [] {
         std::string entries;
         for (std::string_view n : {"a.test", "b.test"}) {
           entries.push_back(0);
           put16(entries, n.size());
           entries.append(n);
         }
         std::string list;
         put16(list, entries.size());
         return flight_with(extension(0, list + entries));
       }(),
       "more than one"},
      {"empty server_name list", flight_with(extension(0, std::string("\x00\x00", 2))), "empty"},
      {"server_name list length mismatch",
       flight_with(extension(0, std::string("\x00\x05\x00", 3))), "mismatch"},
      {"other name type", flight_with(server_name_ext("a.test", 1)), "type 1"},
      {"NUL in name", flight_with(server_name_ext(std::string_view("a.test\0b", 8))), "0x00"},
      {"space in name", flight_with(server_name_ext("a b.test")), "0x20"},
      {"wildcard", flight_with(server_name_ext("*.test")), "0x2a"},
      {"empty name", flight_with(server_name_ext("")), "empty host"},
      {"only a dot", flight_with(server_name_ext(".")), "empty host"},
      {"empty label", flight_with(server_name_ext("a..test")), "empty label"},
      {"two trailing dots", flight_with(server_name_ext("a.test..")), "empty label"},
      {"leading hyphen", flight_with(server_name_ext("-a.test")), "starting"},
      {"trailing hyphen", flight_with(server_name_ext("a-.test")), "ending"},
      {"label too long", flight_with(server_name_ext(std::string(64, 'a') + ".test")), "label"},
      {"name too long", flight_with(server_name_ext(std::string(300, 'a'))), "bytes"},
      {"UTF-8", flight_with(server_name_ext("b\xc3\xbc.test")), "0xc3"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto r = parse(c.bytes);
    CHECK(r.state == status::malformed);
    CHECK_MESSAGE(r.reason.find(c.reason_part) != std::string::npos, r.reason);
  }
}

TEST_CASE("name rules: accepted forms") {
  auto sni = [](std::string_view n) {
    auto r = parse(flight_with(server_name_ext(n)));
    REQUIRE(r.state == status::ok);
    return *r.sni;
  };
  CHECK(sni("UPPER.Example") == "upper.example");
  CHECK(sni("_dmarc.x-y.test.") == "_dmarc.x-y.test");
  CHECK(sni(std::string(63, 'a') + ".test") == std::string(63, 'a') + ".test");
  CHECK(sni("127.0.0.1") == "127.0.0.1");  // decided as an IP literal by policy
  // Unknown extensions around the server_name are skipped.
  auto r = parse(flight_with(extension(43, "\x02\x03\x04") + server_name_ext("mid.test") +
                             extension(0xfe0d, "ech")));
  REQUIRE(r.state == status::ok);
  CHECK(*r.sni == "mid.test");
}

TEST_CASE("a large ClientHello up to the limit is read; one byte more is refused") {
  const std::size_t overhead =
      handshake(hello_body(server_name_ext("big.test") + extension(21, ""))).size();
  auto padded = [&](std::size_t total) {  // padding extension (RFC 7685) up to `total` bytes
    return handshake(hello_body(server_name_ext("big.test") +
                                extension(21, std::string(total - overhead, '\0'))));
  };
  auto at_limit = padded(client_hello_max_message);
  REQUIRE(at_limit.size() == client_hello_max_message);
  auto r = parse(reframe(at_limit, 16 * 1024 - 1));
  REQUIRE(r.state == status::ok);
  CHECK(*r.sni == "big.test");
  r = parse(reframe(padded(client_hello_max_message + 1), 1000));
  CHECK(r.state == status::malformed);
}

TEST_CASE("garbage after a TLS record header never crashes and never passes as a ClientHello") {
  std::mt19937 rng(12345);
  const auto real = openssl_client_hello("fuzz.test");
  for (int i = 0; i < 20000; ++i) {
    std::string s = i % 2 == 0 ? std::string("\x16\x03", 2) : real;
    if (i % 2 == 0) {
      const std::size_t n = rng() % 600;
      for (std::size_t k = 0; k < n; ++k)
        s.push_back(static_cast<char>(rng()));
    } else {
      // Flip a few bytes of a real one, or cut it.
      for (int k = 0; k < 3; ++k)
        s[rng() % s.size()] = static_cast<char>(rng());
      if (rng() % 4 == 0) s.resize(rng() % s.size());
    }
    auto r = parse(s);
    if (r.state == status::ok && r.sni) {
      // Whatever passed is a clean DNS-style name.
      for (char c : *r.sni) {
        CHECK(
            ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'));
      }
    }
  }
}
