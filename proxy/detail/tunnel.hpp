// Full-duplex byte relays: a CONNECT tunnel between two TCP sockets, and the same over any two
// streams (an upgraded WebSocket inside an intercepted TLS session).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "policy/rule.hpp"
#include "proxy/detail/net.hpp"

namespace sbx::proxy::detail {

// 16 KiB per direction for relays over TLS streams: one TLS record.
inline constexpr std::size_t tunnel_buffer_size = 16 * 1024;
// CONNECT tunnels read into a small buffer per direction, enough for a request or an event, and
// borrow a large one while bulk data flows (tunnel.cpp).
inline constexpr std::size_t tunnel_small_buffer = 2 * 1024;
inline constexpr std::size_t tunnel_large_buffer = 64 * 1024;

// A tunnel_large_buffer lent by the calling I/O thread's pool: connections hold one only while
// bytes move (a body, bulk tunnel reads), not while they sit idle between requests.
class borrowed_buffer {
 public:
  borrowed_buffer();
  ~borrowed_buffer();
  borrowed_buffer(const borrowed_buffer&) = delete;
  borrowed_buffer& operator=(const borrowed_buffer&) = delete;
  [[nodiscard]] char* get() const { return data_.get(); }

 private:
  std::unique_ptr<char[]> data_;
};

struct relay_totals {
  std::uint64_t up = 0;    // client -> upstream
  std::uint64_t down = 0;  // upstream -> client
  bool idle_timeout = false;
  // Set when the client's first flight was refused (run_tunnel with a first_flight_check): the
  // tunnel was closed and none of that flight went upstream. The caller logs it as the row's deny.
  std::optional<policy::decision> refused;
};

// Judges a tunnel's first client flight by the server name of its TLS ClientHello (nullopt: a
// ClientHello without server_name). Returns the refusal, or nullopt to relay. Not called for a
// first flight that is not TLS.
using first_flight_check =
    std::function<std::optional<policy::decision>(std::optional<std::string_view> sni)>;

// The check for a tunnelled CONNECT to `connect_host`:`port` by `sandbox`: an SNI equal to the
// CONNECT host (case and a trailing dot aside) passes (the host was decided already); any other
// SNI, an IP-literal CONNECT's included, must itself be allowed by name for that sandbox and port,
// else the refusal's reason reads "SNI <sni> does not match CONNECT host <host>: <why>". No SNI
// passes: the CONNECT host's decision stands.
[[nodiscard]] first_flight_check sni_policy_check(std::shared_ptr<const policy::rule_set> rules,
                                                  std::string sandbox, std::string connect_host,
                                                  std::uint16_t port);

// Relays until both directions reached end-of-stream (each EOF is passed on as a half-close), an
// error ends both, or no byte moved either way for `idle_timeout`. `initial_up` holds bytes the
// client sent right behind its CONNECT request; they go upstream first. The client's first flight
// (`initial_up` and what follows) is held back until it is known not to be TLS, or its ClientHello
// is complete and `check` accepts it. A ClientHello must be complete within `first_flight_timeout`
// of its first byte and within client_hello_max_bytes; a TLS record that is not a readable
// ClientHello is refused (fail closed). Upstream bytes flow to the client from the start
// (server-speaks-first protocols: SSH, SMTP). After the first flight the relay is exactly
// run_tunnel's. `check` must outlive the call.
asio::awaitable<relay_totals> run_tunnel(tcp::socket& client, tcp::socket& upstream,
                                         std::string_view initial_up,
                                         std::chrono::milliseconds idle_timeout,
                                         const first_flight_check& check,
                                         std::chrono::milliseconds first_flight_timeout);

namespace relay_detail {

using clock = std::chrono::steady_clock;

template <class From, class To, class Close>
asio::awaitable<void> pump(From& from, To& to, std::uint64_t& total, clock::time_point& last,
                           Close close_both) {
  auto buf = std::make_unique<char[]>(tunnel_buffer_size);
  for (;;) {
    auto [ec, n] =
        co_await from.async_read_some(asio::buffer(buf.get(), tunnel_buffer_size), use_nothrow);
    if (n > 0) {
      last = clock::now();
      auto [wec, wn] = co_await asio::async_write(to, asio::buffer(buf.get(), n), use_nothrow);
      total += wn;
      if (wec) {
        close_both();
        co_return;
      }
    }
    if (ec) {
      if (ec == asio::error::eof) {
        // Half-close: the other direction may still have a response to deliver.
        error_code ignored;
        beast::get_lowest_layer(to).socket().shutdown(tcp::socket::shutdown_send, ignored);
      } else {
        close_both();
      }
      co_return;
    }
  }
}

asio::awaitable<void> watchdog(const clock::time_point& last, std::chrono::milliseconds idle,
                               bool& fired);

}  // namespace relay_detail

// Generic version for streams (e.g. ssl_stream) whose lowest layer is a beast::tcp_stream.
template <class A, class B>
asio::awaitable<relay_totals> relay_streams(A& client, B& upstream,
                                            std::chrono::milliseconds idle_timeout) {
  using namespace asio::experimental::awaitable_operators;
  relay_totals totals;
  auto last = relay_detail::clock::now();
  auto close_both = [&] {
    error_code ignored;
    beast::get_lowest_layer(client).socket().close(ignored);
    beast::get_lowest_layer(upstream).socket().close(ignored);
  };
  beast::get_lowest_layer(client).expires_never();
  beast::get_lowest_layer(upstream).expires_never();
  co_await ((relay_detail::pump(client, upstream, totals.up, last, close_both) &&
             relay_detail::pump(upstream, client, totals.down, last, close_both)) ||
            relay_detail::watchdog(last, idle_timeout, totals.idle_timeout));
  if (totals.idle_timeout) close_both();
  co_return totals;
}

}  // namespace sbx::proxy::detail
