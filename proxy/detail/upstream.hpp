// Opening a connection to a destination the way policy demands: decide by name, resolve (a
// `resolve` override counts as the DNS answer), decide again for every address, then connect only
// to addresses that passed — the socket ends up on exactly an address policy checked.
#pragma once

#include <string>

#include "config/config.hpp"
#include "policy/rule.hpp"
#include "proxy/detail/net.hpp"

namespace sbx::proxy::detail {

struct upstream_result {
  enum class outcome { connected, denied, blocked_address, dns_failed, unreachable, timeout };
  outcome result = outcome::unreachable;
  policy::decision decision;  // the decision for the address connected to (or the refusal)
  beast::tcp_stream stream;
  policy::ip_address address;  // the connected address
  std::string detail;          // why it failed, for the response body and the log

  explicit upstream_result(const asio::any_io_executor& ex) : stream(ex) {}
  [[nodiscard]] bool ok() const { return result == outcome::connected; }
};

[[nodiscard]] policy::ip_address to_policy_address(const asio::ip::address& a);

// `f` carries sandbox, host, port and, when known, method and path; its address is filled here.
asio::awaitable<upstream_result> open_upstream(const policy::rule_set& rules,
                                               const config::settings& cfg, policy::facts f);

}  // namespace sbx::proxy::detail
