// Small text checks shared by the config loader's sections: ASCII case folding, "ip:port" and
// "host:port" splitting, host name rules. Private to sbx_config.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>

#include "config/config.hpp"

namespace sbx::config::detail {

[[nodiscard]] char ascii_lower(char c);
[[nodiscard]] std::string to_lower(std::string_view text);
[[nodiscard]] bool iequals(std::string_view a, std::string_view b);
[[nodiscard]] std::string_view without_trailing_dot(std::string_view host);
[[nodiscard]] bool is_digit(char c);
[[nodiscard]] bool is_lower_alnum(char c);
[[nodiscard]] bool is_alnum(char c);
// RFC 9110 §5.6.2: field names are tokens.
[[nodiscard]] bool is_token_char(char c);
[[nodiscard]] bool is_ipv4_literal(std::string_view text);
[[nodiscard]] bool is_ipv6_literal(std::string_view text);
// 1 to 5 digits, at most 65535.
[[nodiscard]] std::optional<std::uint16_t> parse_port(std::string_view text);

struct split_host_port {
  std::string_view host;  // without brackets
  std::string_view port;
  bool bracketed = false;
};
// Splits "host:port" / "[v6]:port"; the reason when it cannot.
[[nodiscard]] std::variant<split_host_port, std::string> split(std::string_view text);
// The reason `text` is not an "ip:port" endpoint, or empty when it is one (then `out` is set).
[[nodiscard]] std::string endpoint_problem(std::string_view text, endpoint& out);
// The reason `host` (already lower-case, without a trailing dot) is not an exact host name, or
// empty. IPv4 literals pass: they are valid names for a credential to go to.
[[nodiscard]] std::string host_name_problem(std::string_view host);
[[nodiscard]] std::string normalized_host(std::string_view host);
// The key of the `resolve` map: lower-case host (IPv6 in brackets), ':', port.
[[nodiscard]] std::string resolve_key(std::string_view host, std::uint16_t port);

}  // namespace sbx::config::detail
