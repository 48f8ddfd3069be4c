#include "proxy/client_hello.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

#include <fmt/format.h>

namespace sbx::proxy {

namespace {

using status = client_hello_result::status;

constexpr std::uint8_t content_type_handshake = 22;    // RFC 8446 §5.1
constexpr std::uint8_t handshake_client_hello = 1;     // RFC 8446 §4
constexpr std::uint8_t tls_major_version = 3;          // SSL 3.0 and every TLS version
constexpr std::size_t max_record_payload = 16 * 1024;  // 2^14, RFC 8446 §5.1
constexpr std::size_t handshake_header_size = 4;       // type + 24-bit length
constexpr std::uint16_t extension_server_name = 0;     // RFC 6066 §3
constexpr std::uint8_t name_type_host_name = 0;
constexpr std::size_t max_session_id = 32;
constexpr std::size_t max_host_name = 253;  // RFC 1035 §2.3.4, without the trailing dot
constexpr std::size_t max_label = 63;
// legacy_version + random + the three length fields with the smallest legal contents.
constexpr std::size_t min_client_hello_body = 2 + 32 + 1 + 2 + 2 + 1 + 1;

client_hello_result need_more() {
  return {};
}
client_hello_result not_tls() {
  return {.state = status::not_tls};
}
client_hello_result malformed(std::string why) {
  return {.state = status::malformed, .reason = std::move(why)};
}

// A bounds-checked cursor: every read says whether the bytes were there, nothing reads past end.
class cursor {
 public:
  explicit cursor(std::string_view data) : data_(data) {}

  [[nodiscard]] bool empty() const { return pos_ == data_.size(); }
  [[nodiscard]] std::size_t left() const { return data_.size() - pos_; }

  [[nodiscard]] bool u8(std::uint8_t& v) {
    if (left() < 1) return false;
    v = static_cast<std::uint8_t>(data_[pos_++]);
    return true;
  }
  [[nodiscard]] bool u16(std::uint16_t& v) {
    if (left() < 2) return false;
    v = static_cast<std::uint16_t>((byte(0) << 8) | byte(1));
    pos_ += 2;
    return true;
  }
  [[nodiscard]] bool take(std::size_t n, std::string_view& out) {
    if (left() < n) return false;
    out = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  // A vector with a 1- or 2-byte length prefix (RFC 8446 §3.4).
  [[nodiscard]] bool vec8(std::string_view& out) {
    std::uint8_t n = 0;
    return u8(n) && take(n, out);
  }
  [[nodiscard]] bool vec16(std::string_view& out) {
    std::uint16_t n = 0;
    return u16(n) && take(n, out);
  }

 private:
  [[nodiscard]] unsigned byte(std::size_t i) const {
    return static_cast<unsigned char>(data_[pos_ + i]);
  }
  std::string_view data_;
  std::size_t pos_ = 0;
};

unsigned at(std::string_view s, std::size_t i) {
  return static_cast<unsigned char>(s[i]);
}

// The host_name as policy compares it: lower-case, no trailing dot, labels of letters, digits,
// '-' and '_' (as policy host rules accept), 1-63 bytes each, 253 in all. Anything else (a NUL,
// a space, a '*', UTF-8) is refused: a server may read such a name differently from us.
std::optional<std::string> normalise_host_name(std::string_view raw, std::string& why) {
  if (!raw.empty() && raw.back() == '.') raw.remove_suffix(1);
  if (raw.empty()) {
    why = "empty host name";
    return std::nullopt;
  }
  if (raw.size() > max_host_name) {
    why = fmt::format("host name of {} bytes (at most {})", raw.size(), max_host_name);
    return std::nullopt;
  }
  std::string out;
  out.reserve(raw.size());
  std::size_t label = 0;
  for (const char c0 : raw) {
    const auto c = static_cast<unsigned char>(c0);
    if (c == '.') {
      if (label == 0 || out.back() == '-') {
        why = "host name with an empty label or a label ending in '-'";
        return std::nullopt;
      }
      label = 0;
      out.push_back('.');
      continue;
    }
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && c != '-' && c != '_') {
      why = fmt::format("host name with byte 0x{:02x}", c);
      return std::nullopt;
    }
    if (c == '-' && label == 0) {
      why = "host name with a label starting with '-'";
      return std::nullopt;
    }
    if (++label > max_label) {
      why = fmt::format("host name with a label longer than {} bytes", max_label);
      return std::nullopt;
    }
    out.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : static_cast<char>(c));
  }
  if (label == 0 || out.back() == '-') {
    why = "host name with an empty label or a label ending in '-'";
    return std::nullopt;
  }
  return out;
}

// server_name extension data (RFC 6066 §3). Exactly one entry, of type host_name: the RFC forbids
// two names of one type, and servers (OpenSSL among them) read only the first entry, so a list
// with more than one could be read differently by us and by the server.
client_hello_result parse_server_name(std::string_view data) {
  cursor c(data);
  std::string_view list;
  if (!c.vec16(list) || !c.empty()) return malformed("server_name extension length mismatch");
  cursor l(list);
  std::uint8_t type = 0;
  std::string_view name;
  if (!l.u8(type) || !l.vec16(name)) return malformed("empty or truncated server_name list");
  if (type != name_type_host_name) return malformed(fmt::format("server_name of type {}", type));
  if (!l.empty()) return malformed("more than one entry in server_name");
  std::string why;
  auto host = normalise_host_name(name, why);
  if (!host) return malformed("server_name: " + why);
  return {.state = status::ok, .sni = std::move(host)};
}

// The ClientHello body (RFC 8446 §4.1.2; TLS 1.2 §7.4.1.2 has the same layout).
client_hello_result parse_body(std::string_view body) {
  cursor c(body);
  std::string_view skipped;
  std::string_view session_id;
  std::string_view suites;
  std::string_view compression;
  if (!c.take(2 + 32, skipped) || !c.vec8(session_id) || !c.vec16(suites) || !c.vec8(compression)) {
    return malformed("ClientHello fields overrun the message");
  }
  if (session_id.size() > max_session_id) return malformed("session id longer than 32 bytes");
  if (suites.empty() || suites.size() % 2 != 0) return malformed("bad cipher_suites length");
  if (compression.empty()) return malformed("empty compression_methods");
  // A ClientHello that ends here has no extensions (SSL 3.0 style), hence no SNI.
  if (c.empty()) return {.state = status::ok};
  std::string_view extensions;
  if (!c.vec16(extensions) || !c.empty()) return malformed("extensions length mismatch");

  cursor e(extensions);
  std::vector<std::uint16_t> seen;
  client_hello_result out{.state = status::ok};
  while (!e.empty()) {
    std::uint16_t type = 0;
    std::string_view data;
    if (!e.u16(type) || !e.vec16(data)) return malformed("truncated extension");
    seen.push_back(type);
    if (type == extension_server_name) {
      out = parse_server_name(data);
      if (out.state != status::ok) return out;
    }
  }
  // RFC 8446 §4.2: no extension type twice (two server_names would be read differently).
  std::sort(seen.begin(), seen.end());
  if (auto dup = std::adjacent_find(seen.begin(), seen.end()); dup != seen.end()) {
    return malformed(fmt::format("extension {} appears twice", *dup));
  }
  return out;
}

}  // namespace

client_hello_result parse_client_hello(std::string_view bytes) {
  if (bytes.empty()) return need_more();
  // A TLS client's first record is a handshake record of a 3.x version; anything else is another
  // protocol (SSH, SMTP, an SSLv2-format hello, which carries no extensions) and is relayed.
  if (at(bytes, 0) != content_type_handshake) return not_tls();
  if (bytes.size() < 2) return need_more();
  if (at(bytes, 1) != tls_major_version) return not_tls();

  // Walk the records, collecting the handshake bytes they carry, until the ClientHello (whose
  // length its 4-byte header gives) is complete.
  std::array<std::string_view, client_hello_max_records> fragments;
  std::size_t fragment_count = 0;
  std::size_t have = 0;                     // handshake bytes collected
  std::optional<std::size_t> message_size;  // header included, once the header is in
  std::size_t pos = 0;
  for (;;) {
    if (message_size && have >= *message_size) break;
    if (pos == bytes.size()) return need_more();
    const std::size_t header_have = std::min(bytes.size() - pos, tls_record_header_size);
    if (at(bytes, pos) != content_type_handshake) {
      return malformed(fmt::format("record of type {} inside the ClientHello", at(bytes, pos)));
    }
    if (header_have >= 2 && at(bytes, pos + 1) != tls_major_version) {
      return malformed("record version is not 3.x");
    }
    if (header_have < tls_record_header_size) return need_more();
    const std::size_t length = (at(bytes, pos + 3) << 8) | at(bytes, pos + 4);
    if (length == 0) return malformed("empty handshake record");  // RFC 8446 §5.1
    if (length > max_record_payload) return malformed("record longer than 2^14 bytes");
    if (fragment_count == fragments.size()) {
      return malformed(
          fmt::format("ClientHello spread over more than {} records", client_hello_max_records));
    }
    const std::size_t start = pos + tls_record_header_size;
    const std::size_t available = std::min(length, bytes.size() - start);
    fragments[fragment_count++] = bytes.substr(start, available);
    have += available;

    if (!message_size && have >= handshake_header_size) {
      std::array<unsigned, handshake_header_size> header{};
      std::size_t filled = 0;
      for (std::size_t i = 0; i < fragment_count && filled < header.size(); ++i) {
        for (std::size_t j = 0; j < fragments[i].size() && filled < header.size(); ++j) {
          header[filled++] = at(fragments[i], j);
        }
      }
      if (header[0] != handshake_client_hello) {
        return malformed(
            fmt::format("first handshake message is of type {}, not ClientHello", header[0]));
      }
      const std::size_t body = (header[1] << 16) | (header[2] << 8) | header[3];
      if (body + handshake_header_size > client_hello_max_message) {
        return malformed(fmt::format("ClientHello of {} bytes (at most {})",
                                     body + handshake_header_size, client_hello_max_message));
      }
      if (body < min_client_hello_body) return malformed("ClientHello too short");
      message_size = body + handshake_header_size;
    }
    if (available < length) {
      if (message_size && have >= *message_size) break;
      return need_more();
    }
    pos = start + length;
  }

  // One record (the usual case): parse in place; else join the fragments.
  std::string joined;
  std::string_view message;
  if (fragments[0].size() >= *message_size) {
    message = fragments[0].substr(0, *message_size);
  } else {
    joined.reserve(*message_size);
    for (std::size_t i = 0; i < fragment_count && joined.size() < *message_size; ++i) {
      joined.append(fragments[i].substr(0, *message_size - joined.size()));
    }
    message = joined;
  }
  return parse_body(message.substr(handshake_header_size));
}

}  // namespace sbx::proxy
