// Text checks of the config loader (see detail/text.hpp).
#include "config/detail/text.hpp"

#include <arpa/inet.h>

#include <algorithm>

#include <fmt/format.h>

namespace sbx::config::detail {
namespace {

constexpr std::size_t max_host_length = 253;  // RFC 1035 §2.3.4, without the trailing dot
constexpr std::size_t max_label_length = 63;

}  // namespace

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), ascii_lower);
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

std::string_view without_trailing_dot(std::string_view host) {
  if (host.ends_with('.')) host.remove_suffix(1);
  return host;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_lower_alnum(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z');
}
bool is_alnum(char c) {
  return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

bool is_token_char(char c) {
  return is_alnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_ipv4_literal(std::string_view text) {
  in_addr out{};
  return inet_pton(AF_INET, std::string(text).c_str(), &out) == 1;
}

bool is_ipv6_literal(std::string_view text) {
  in6_addr out{};
  return inet_pton(AF_INET6, std::string(text).c_str(), &out) == 1;
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
  if (text.empty() || text.size() > 5) return std::nullopt;
  std::uint32_t value = 0;
  for (char c : text) {
    if (!is_digit(c)) return std::nullopt;
    value = value * 10 + static_cast<std::uint32_t>(c - '0');
  }
  if (value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

std::variant<split_host_port, std::string> split(std::string_view text) {
  if (text.starts_with('[')) {
    auto close = text.find(']');
    if (close == text.npos) return std::string("missing ']' after the IPv6 address");
    auto rest = text.substr(close + 1);
    if (!rest.starts_with(':')) return std::string("missing \":PORT\" after the address");
    return split_host_port{text.substr(1, close - 1), rest.substr(1), true};
  }
  auto colon = text.rfind(':');
  if (colon == text.npos) return std::string("missing \":PORT\"");
  auto host = text.substr(0, colon);
  if (host.find(':') != host.npos) {
    return std::string("IPv6 addresses go in brackets, as in [::1]:3128");
  }
  return split_host_port{host, text.substr(colon + 1), false};
}

std::string endpoint_problem(std::string_view text, endpoint& out) {
  auto parts = split(text);
  if (auto* why = std::get_if<std::string>(&parts)) return std::move(*why);
  auto& p = std::get<split_host_port>(parts);
  if (p.bracketed ? !is_ipv6_literal(p.host) : !is_ipv4_literal(p.host)) {
    return fmt::format(
        "\"{}\" is not an IP address (expected IP:PORT such as 127.0.0.1:3128 or "
        "[::1]:3128; host names are not accepted here)",
        p.host);
  }
  auto port = parse_port(p.port);
  if (!port) return fmt::format("port \"{}\" is not a number from 0 to 65535", p.port);
  out = endpoint{std::string(p.host), *port};
  return {};
}

std::string host_name_problem(std::string_view host) {
  if (host.empty()) return "the host name is empty";
  if (host.find('*') != host.npos) {
    return "wildcards are not allowed: a credential goes only to hosts named in full";
  }
  if (host.find("://") != host.npos || host.find('/') != host.npos) {
    return "expected a host name, not a URL";
  }
  if (host.find(':') != host.npos) return "expected a host name without a port";
  if (host.size() > max_host_length) return "the host name is longer than 253 characters";
  std::size_t label_start = 0;
  while (label_start <= host.size()) {
    auto dot = host.find('.', label_start);
    auto label = host.substr(label_start, dot == host.npos ? host.npos : dot - label_start);
    if (label.empty()) return "the host name has an empty label";
    if (label.size() > max_label_length) return "a label is longer than 63 characters";
    // '_' is not valid in host names, but it appears in real ones (and DNS allows it).
    for (char c : label) {
      if (!is_lower_alnum(c) && c != '-' && c != '_') {
        return fmt::format("'{}' is not allowed in a host name", c);
      }
    }
    if (dot == host.npos) break;
    label_start = dot + 1;
  }
  return {};
}

std::string normalized_host(std::string_view host) {
  return to_lower(without_trailing_dot(host));
}

std::string resolve_key(std::string_view host, std::uint16_t port) {
  auto h = normalized_host(host);
  if (h.find(':') != h.npos && !h.starts_with('[')) h = fmt::format("[{}]", h);
  return fmt::format("{}:{}", h, port);
}

}  // namespace sbx::config::detail
