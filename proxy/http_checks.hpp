// Request checks a proxy must make that Beast's parser leaves to the application, and parsing of
// request targets. Pure functions over text: unit-tested without sockets.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace sbx::proxy {

// Checks a raw request head (request line and fields, ending with the empty line) for what
// RFC 9112 forbids but parsers commonly tolerate: obs-fold continuation lines (§5.2), a bare CR or
// LF (§2.2), and control characters in field lines (RFC 9110 §5.5). Returns the reason, or empty.
[[nodiscard]] std::string check_raw_head(std::string_view head);

struct authority {
  std::string host;  // lower-case, brackets removed from IPv6, trailing dot removed
  std::uint16_t port = 0;
  bool ipv6 = false;
  // "host:port" or "[v6]:port" as it goes on the wire.
  [[nodiscard]] std::string text() const;
};

// "host:port", "[2001:db8::1]:443", "host" (when default_port is given). nullopt when malformed,
// when the port is missing and no default applies, or out of range.
[[nodiscard]] std::optional<authority> parse_authority(
    std::string_view text, std::optional<std::uint16_t> default_port = std::nullopt);

struct absolute_target {
  std::string scheme;  // "http"
  authority where;
  std::string origin_form;  // "/path?query" as sent upstream (never empty: "/" at least)
  std::string path;         // without query
};

// "http://host[:port]/path?query" (scheme case-insensitive). nullopt when not absolute-form,
// when it carries userinfo, or when the authority is malformed.
[[nodiscard]] std::optional<absolute_target> parse_absolute_target(std::string_view target);

// True for the fields RFC 9110 §7.6.1 makes hop-by-hop (Connection, Keep-Alive, Proxy-Connection,
// TE, Upgrade) and the proxy's own Proxy-Authorization / Proxy-Authenticate. Transfer-Encoding is
// left out on purpose: it frames the body and the relay re-frames it.
[[nodiscard]] bool is_hop_by_hop(std::string_view field_name);

}  // namespace sbx::proxy
