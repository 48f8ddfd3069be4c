// The `limits` section (timeouts, header size, connection caps) and the sizing of the caps the
// config leaves out from the open-file limit.
#include <algorithm>

#include <fmt/format.h>

#include "config/detail/sections.hpp"

namespace sbx::config {
namespace detail {
namespace {

// Ranges a config may set. Timeouts down to 10 ms let tests provoke them quickly; beyond a day a
// stuck peer would in practice hold its connection slot for ever.
constexpr std::int64_t min_timeout_ms = 10;
constexpr std::int64_t max_timeout_ms = 24LL * 60 * 60 * 1000;
constexpr std::int64_t max_shutdown_grace_ms = 10LL * 60 * 1000;
constexpr std::int64_t min_header_bytes = 1024;
constexpr std::int64_t max_header_bytes = 1024 * 1024;
constexpr std::int64_t max_connection_cap = 1'000'000;

constexpr std::string_view limits_keys[] = {"header_timeout_ms",
                                            "idle_timeout_ms",
                                            "first_byte_timeout_ms",
                                            "connect_timeout_ms",
                                            "upstream_timeout_ms",
                                            "tunnel_idle_timeout_ms",
                                            "shutdown_grace_ms",
                                            "max_header_bytes",
                                            "max_connections",
                                            "max_connections_per_client",
                                            "max_connections_per_sandbox"};

}  // namespace

void apply_limits(const json_reader& r, const json& value, limits& lim, bool complete) {
  r.object(value, "limits");
  r.only_known_keys(value, "limits", limits_keys);
  if (complete) r.all_keys_present(value, "limits", limits_keys);
  auto read_ms = [&](std::string_view key, std::chrono::milliseconds& out, std::int64_t min,
                     std::int64_t max) {
    if (value.contains(key)) {
      out = std::chrono::milliseconds(r.integer(value.at(key), join_path("limits", key), min, max));
    }
  };
  auto read_count = [&](std::string_view key, std::size_t& out, std::int64_t min, std::int64_t max,
                        bool* set = nullptr) {
    if (value.contains(key)) {
      out = static_cast<std::size_t>(r.integer(value.at(key), join_path("limits", key), min, max));
      if (set != nullptr && !complete) *set = true;
    }
  };
  read_ms("header_timeout_ms", lim.header_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("idle_timeout_ms", lim.idle_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("first_byte_timeout_ms", lim.first_byte_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("connect_timeout_ms", lim.connect_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("upstream_timeout_ms", lim.upstream_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("tunnel_idle_timeout_ms", lim.tunnel_idle_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("shutdown_grace_ms", lim.shutdown_grace, 0, max_shutdown_grace_ms);
  read_count("max_header_bytes", lim.max_header_bytes, min_header_bytes, max_header_bytes);
  read_count("max_connections", lim.max_connections, 1, max_connection_cap,
             &lim.max_connections_set);
  read_count("max_connections_per_client", lim.max_connections_per_client, 1, max_connection_cap,
             &lim.max_connections_per_client_set);
  read_count("max_connections_per_sandbox", lim.max_connections_per_sandbox, 1, max_connection_cap,
             &lim.max_connections_per_sandbox_set);
  // The point of the per-client cap is that one address alone cannot fill the proxy.
  if (lim.max_connections_set && lim.max_connections_per_client_set && lim.max_connections > 1 &&
      lim.max_connections_per_client >= lim.max_connections) {
    r.fail(fmt::format(
        "limits.max_connections_per_client ({}) must be below limits.max_connections ({}), so "
        "that one client address cannot take every connection slot",
        lim.max_connections_per_client, lim.max_connections));
  }
}

}  // namespace detail

namespace {

// Descriptors that are not client or upstream sockets: policy.db with its -wal and -shm for each
// of the few SQLite connections, the control socket and its clients, an eventfd, epoll and
// netlink socket per I/O thread, the CA files, stderr. 128 leaves room to spare.
constexpr std::uint64_t reserved_descriptors = 128;
// A client connection holds its socket and at most one upstream socket at a time.
constexpr std::uint64_t descriptors_per_connection = 2;
// Per-client and per-sandbox defaults: a quarter of the total. One hostile sandbox then leaves
// three quarters of the slots to everyone else, while one busy build (package managers open tens
// of connections, rarely hundreds) still gets far more than it needs.
constexpr std::size_t share_divisor = 4;

}  // namespace

std::string fit_connection_caps(limits& lim, std::uint64_t open_files) {
  const auto by_descriptors = static_cast<std::size_t>(std::max<std::uint64_t>(
      1, open_files > reserved_descriptors
             ? (open_files - reserved_descriptors) / descriptors_per_connection
             : 1));
  std::string note;
  if (!lim.max_connections_set) {
    if (by_descriptors < lim.max_connections) {
      note = fmt::format("; max_connections lowered from {} to fit the open-file limit",
                         lim.max_connections);
    }
    lim.max_connections = std::min(lim.max_connections, by_descriptors);
  } else if (lim.max_connections > by_descriptors) {
    note = fmt::format("; max_connections {} may run out of file descriptors (room for about {})",
                       lim.max_connections, by_descriptors);
  }
  const auto share = std::max<std::size_t>(1, lim.max_connections / share_divisor);
  if (!lim.max_connections_per_client_set) {
    lim.max_connections_per_client = std::min(lim.max_connections_per_client, share);
  }
  if (!lim.max_connections_per_sandbox_set) {
    lim.max_connections_per_sandbox = std::min(lim.max_connections_per_sandbox, share);
  }
  // A per-client cap set in the config may exceed a total that was lowered to fit the descriptors.
  if (lim.max_connections > 1 && lim.max_connections_per_client >= lim.max_connections) {
    note += fmt::format("; max_connections_per_client lowered from {} to stay below the total",
                        lim.max_connections_per_client);
    lim.max_connections_per_client = lim.max_connections - 1;
  }
  return fmt::format(
      "connection caps: {} in total, {} per client address, {} per sandbox (open-file limit "
      "{}){}",
      lim.max_connections, lim.max_connections_per_client, lim.max_connections_per_sandbox,
      open_files, note);
}

}  // namespace sbx::config
