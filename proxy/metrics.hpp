// Process-wide counters for /metrics (Prometheus text format) and /v1/status. Relaxed atomics:
// they are statistics, not synchronisation.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace sbx::proxy {

struct metrics {
  std::atomic<std::uint64_t> connections_total{0};
  std::atomic<std::int64_t> active_connections{0};
  std::atomic<std::int64_t> active_tunnels{0};
  std::atomic<std::uint64_t> requests_total{0};
  std::atomic<std::uint64_t> decisions_allow{0};
  std::atomic<std::uint64_t> decisions_deny{0};
  std::atomic<std::uint64_t> routes_forward{0};
  std::atomic<std::uint64_t> routes_tunnel{0};
  std::atomic<std::uint64_t> routes_intercept{0};
  std::atomic<std::uint64_t> bad_requests{0};
  std::atomic<std::uint64_t> auth_failures{0};
  std::atomic<std::uint64_t> upstream_errors{0};
  std::atomic<std::uint64_t> connection_limit_rejections{0};  // every cap: global, client, sandbox
  std::atomic<std::uint64_t> client_limit_rejections{0};      // per client address (429 at accept)
  std::atomic<std::uint64_t> credentials_injected{0};
  std::atomic<std::uint64_t> credentials_missing{0};
  std::atomic<std::uint64_t> upstream_tls_handshakes{0};  // intercepted: new verified upstream TLS
  std::atomic<std::uint64_t> upstream_tls_reused{0};      // intercepted: an idle one taken again
  std::atomic<std::uint64_t> bytes_up{0};
  std::atomic<std::uint64_t> bytes_down{0};
  std::atomic<std::uint64_t> log_waits{0};  // a session found the decision-log queue full

  static void add(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.fetch_add(n, std::memory_order_relaxed);
  }
};

}  // namespace sbx::proxy
