#include "proxy/http_checks.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <vector>

#include <fmt/format.h>

#include "policy/rule.hpp"

namespace sbx::proxy {
namespace {

char lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(),
                                            [](char x, char y) { return lower(x) == lower(y); });
}

std::optional<std::uint16_t> parse_port(std::string_view s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  unsigned v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size() || v == 0 || v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

// RFC 9110 §5.6.2 tchar.
bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

// The elements of a comma-separated list (RFC 9110 §5.6.1), OWS trimmed, empty ones kept (so a
// caller can refuse them).
std::vector<std::string_view> list_elements(std::string_view value) {
  std::vector<std::string_view> out;
  for (;;) {
    const auto comma = value.find(',');
    out.push_back(trim_ows(value.substr(0, comma)));
    if (comma == std::string_view::npos) break;
    value.remove_prefix(comma + 1);
  }
  return out;
}

bool valid_reg_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}

}  // namespace

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

std::string check_raw_head(std::string_view head) {
  std::size_t line_start = 0;
  bool first_line = true;
  for (std::size_t i = 0; i < head.size(); ++i) {
    const auto c = static_cast<unsigned char>(head[i]);
    if (c == '\r') {
      if (i + 1 >= head.size() || head[i + 1] != '\n') return "bare CR in request head";
      ++i;  // the LF
      line_start = i + 1;
      first_line = false;
      continue;
    }
    if (c == '\n') return "bare LF in request head (lines must end with CRLF)";
    if (i == line_start && !first_line && (c == ' ' || c == '\t')) {
      return "obsolete line folding (obs-fold) in a header field";
    }
    // HTAB is allowed inside field values; every other control character is not.
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      return first_line ? "control character in request line"
                        : fmt::format("control character 0x{:02x} in a header field", c);
    }
  }
  return {};
}

std::string check_request_line(std::string_view line) {
  const auto sp1 = line.find(' ');
  if (sp1 == std::string_view::npos) {
    return "request line without a target and HTTP version";
  }
  const auto method = line.substr(0, sp1);
  if (method.empty() || !std::all_of(method.begin(), method.end(), is_tchar)) {
    return "invalid method in request line";
  }
  const auto rest = line.substr(sp1 + 1);
  const auto sp2 = rest.find(' ');
  if (sp2 == std::string_view::npos) {
    // "GET /path" and nothing more: an HTTP/0.9 request, which has no headers and no framing.
    return "request line without an HTTP version (HTTP/0.9 is not supported)";
  }
  const auto target = rest.substr(0, sp2);
  const auto version = rest.substr(sp2 + 1);
  if (target.empty() || version.find(' ') != std::string_view::npos) {
    return "request line must be: method, one space, target, one space, version";
  }
  for (char ch : target) {
    const auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f) return "request target with a character outside visible ASCII";
    if (c == '#') return "request target with a #fragment (never sent in a request, RFC 9112 §3.2)";
  }
  if (version != "HTTP/1.1" && version != "HTTP/1.0") {
    return "unsupported HTTP version (only HTTP/1.0 and HTTP/1.1, upper-case)";
  }
  return {};
}

std::string check_transfer_encoding(std::string_view value) {
  const auto codings = list_elements(value);
  if (codings.size() != 1 || !iequals(codings.front(), "chunked")) {
    return "Transfer-Encoding must be exactly \"chunked\" (RFC 9112 §6.1)";
  }
  return {};
}

std::string check_content_length(std::string_view value) {
  const auto v = trim_ows(value);
  if (v.empty() || v.size() > 18 ||
      !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return "invalid Content-Length";
  }
  if (v.size() > 1 && v.front() == '0') return "Content-Length with a leading zero";
  return {};
}

bool upgrade_is_websocket(std::string_view value) {
  const auto protocols = list_elements(value);
  return protocols.size() == 1 && iequals(protocols.front(), "websocket");
}

std::string authority::text() const {
  return ipv6 ? fmt::format("[{}]:{}", host, port) : fmt::format("{}:{}", host, port);
}

std::optional<authority> parse_authority(std::string_view text,
                                         std::optional<std::uint16_t> default_port) {
  authority a;
  std::string_view host;
  std::string_view port_text;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    host = text.substr(1, close - 1);
    auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':') return std::nullopt;
      port_text = rest.substr(1);
      if (port_text.empty()) return std::nullopt;
    }
    // Brackets hold an IPv6 address and nothing else (RFC 3986 §3.2.2): "[f:::1]" or
    // "[127.0.0.1]" would otherwise reach policy as a name no rule meant.
    const auto address = policy::ip_address::parse(host);
    if (!address || !address->v6) return std::nullopt;
    a.ipv6 = true;
  } else {
    const auto colon = text.rfind(':');
    if (colon != std::string_view::npos) {
      host = text.substr(0, colon);
      port_text = text.substr(colon + 1);
      if (port_text.empty()) return std::nullopt;
    } else {
      host = text;
    }
    if (host.empty() || !std::all_of(host.begin(), host.end(), valid_reg_name_char)) {
      return std::nullopt;
    }
  }
  if (port_text.empty()) {
    if (!default_port) return std::nullopt;
    a.port = *default_port;
  } else {
    auto p = parse_port(port_text);
    if (!p) return std::nullopt;
    a.port = *p;
  }
  a.host.reserve(host.size());
  for (char c : host)
    a.host.push_back(lower(c));
  if (!a.ipv6) {
    // One trailing dot names the same host (the root label); an empty label anywhere else
    // ("a..", ".a", "a..b") names none, and must not become a name that matches a rule.
    if (a.host.ends_with('.')) a.host.pop_back();
    if (a.host.empty() || a.host.front() == '.' || a.host.ends_with('.') ||
        a.host.find("..") != std::string::npos) {
      return std::nullopt;
    }
  }
  return a;
}

std::optional<absolute_target> parse_absolute_target(std::string_view target) {
  const auto scheme_end = target.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  absolute_target t;
  for (char c : target.substr(0, scheme_end))
    t.scheme.push_back(lower(c));
  if (t.scheme != "http" && t.scheme != "https") return std::nullopt;
  auto rest = target.substr(scheme_end + 3);
  const auto auth_end = rest.find_first_of("/?#");
  auto auth_text = rest.substr(0, auth_end);
  if (auth_text.find('@') != std::string_view::npos) return std::nullopt;  // userinfo
  auto where = parse_authority(auth_text, t.scheme == "https" ? 443 : 80);
  if (!where) return std::nullopt;
  t.where = std::move(*where);
  std::string_view tail =
      auth_end == std::string_view::npos ? std::string_view{} : rest.substr(auth_end);
  if (const auto hash = tail.find('#'); hash != std::string_view::npos) tail = tail.substr(0, hash);
  if (tail.empty() || tail[0] == '?') {
    t.origin_form = "/";
    t.origin_form.append(tail);
  } else {
    t.origin_form.assign(tail);
  }
  t.path = t.origin_form.substr(0, t.origin_form.find('?'));
  return t;
}

bool is_hop_by_hop(std::string_view name) {
  // Transfer-Encoding is hop-by-hop too, but it is the message framing: the serializer re-frames
  // each relayed body, so callers keep it.
  static constexpr std::array<std::string_view, 8> fields = {
      "connection",         "keep-alive", "proxy-connection", "proxy-authorization",
      "proxy-authenticate", "te",         "upgrade",          "http2-settings"};
  return std::any_of(fields.begin(), fields.end(),
                     [&](std::string_view f) { return iequals(f, name); });
}

}  // namespace sbx::proxy
