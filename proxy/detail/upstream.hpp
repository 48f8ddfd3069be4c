// Opening a connection to a destination the way policy demands: decide by name, resolve (a
// `resolve` override counts as the DNS answer), decide again for every address, then connect only
// to addresses that passed — the socket ends up on exactly an address policy checked.
#pragma once

#include <string>
#include <vector>

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
  tcp::endpoint endpoint;      // ... and port (a `resolve` override may change the port too)
  std::string detail;          // why it failed, for the response body and the log

  explicit upstream_result(const asio::any_io_executor& ex) : stream(ex) {}
  [[nodiscard]] bool ok() const { return result == outcome::connected; }
};

[[nodiscard]] policy::ip_address to_policy_address(const asio::ip::address& a);

// The addresses policy allows for a destination, each with its decision, before any connection.
struct upstream_choice {
  upstream_result::outcome result = upstream_result::outcome::connected;  // connected = usable
  policy::decision decision;  // the refusal, when result says so
  std::string detail;
  std::vector<tcp::endpoint> allowed;
  std::vector<policy::decision> decisions;  // one per allowed endpoint
  [[nodiscard]] bool ok() const { return result == upstream_result::outcome::connected; }
};

// Decides by name (a name no name rule allows is refused here, without a DNS query), resolves (a
// `resolve` override counts as the DNS answer) and decides again for every address. `f` carries
// sandbox, host, port and, when known, method and path.
asio::awaitable<upstream_choice> choose_upstream(const policy::rule_set& rules,
                                                 const config::settings& cfg, policy::facts f);

// Connects `out` to one of the allowed addresses of `choice` and gives it that address's decision
// (or the refusal or failure).
asio::awaitable<void> connect_upstream(upstream_choice& choice, const config::settings& cfg,
                                       const policy::facts& f, upstream_result& out);

// `f` carries sandbox, host, port and, when known, method and path; its address is filled here.
asio::awaitable<upstream_result> open_upstream(const policy::rule_set& rules,
                                               const config::settings& cfg, policy::facts f);

}  // namespace sbx::proxy::detail
