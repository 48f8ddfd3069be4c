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

// Checks a request line (without its CRLF) against RFC 9112 §3: `method SP target SP HTTP/1.x`,
// one space between the parts, a token for the method, a target of visible ASCII without a
// `#fragment` (no request-target form has one, §3.2), and exactly "HTTP/1.0" or "HTTP/1.1"
// (case-sensitive, §2.3). A line without a version is HTTP/0.9, which is refused. Returns the
// reason, or empty; the reason never repeats the target (it may carry a query string).
[[nodiscard]] std::string check_request_line(std::string_view line);

// Checks the Transfer-Encoding field values of a request (all its lines, joined with ", ") and
// returns the reason to refuse it, or empty. Only exactly one coding, `chunked` (any case, no
// parameters), is accepted: Beast reads "chunked" as the last token, but another parser may read
// "chunked, chunked", "identity, chunked" or "xchunked" differently, and no client needs more
// (RFC 9112 §6.1 removed identity; compressing a request body with a transfer coding is unused).
// The upstream then always gets `Transfer-Encoding: chunked` exactly.
[[nodiscard]] std::string check_transfer_encoding(std::string_view value);

// Checks one Content-Length value: 1*DIGIT (RFC 9112 §6.2), no sign, no list, no leading zero
// (a parser reading "010" as octal would disagree about the length), at most 18 digits.
[[nodiscard]] std::string check_content_length(std::string_view value);

// `s` without the optional whitespace (spaces, tabs) around it (RFC 9110 §5.6.3 OWS).
[[nodiscard]] std::string_view trim_ows(std::string_view s);

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
// TE, Upgrade), HTTP2-Settings (connection-specific, RFC 9113 §3.2.1) and the proxy's own
// Proxy-Authorization / Proxy-Authenticate. Transfer-Encoding is
// left out on purpose: it frames the body and the relay re-frames it.
[[nodiscard]] bool is_hop_by_hop(std::string_view field_name);

// True when an Upgrade field value (all its lines joined with ", ") asks for exactly one
// protocol, WebSocket (RFC 6455 §4.1: "websocket", any case, no version). The only upgrade the
// proxy relays: after any other 101 a connection would be a raw pipe no rule sees.
[[nodiscard]] bool upgrade_is_websocket(std::string_view value);

}  // namespace sbx::proxy
