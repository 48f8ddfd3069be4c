#include "proxy/detail/tunnel.hpp"

namespace sbx::proxy::detail {

using namespace asio::experimental::awaitable_operators;

namespace relay_detail {

asio::awaitable<void> watchdog(const clock::time_point& last, std::chrono::milliseconds idle,
                               bool& fired) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    const auto deadline = last + idle;
    if (clock::now() >= deadline) {
      fired = true;
      co_return;
    }
    timer.expires_at(deadline);
    auto [ec] = co_await timer.async_wait(use_nothrow);
    if (ec) co_return;  // cancelled: the relay finished first
  }
}

namespace {

// The raw-socket pump: the same loop as pump() but on tcp::socket, where shutdown is direct.
asio::awaitable<void> pump_socket(tcp::socket& from, tcp::socket& to, std::uint64_t& total,
                                  clock::time_point& last, tcp::socket& a, tcp::socket& b) {
  auto buf = std::make_unique<char[]>(tunnel_buffer_size);
  for (;;) {
    auto [ec, n] =
        co_await from.async_read_some(asio::buffer(buf.get(), tunnel_buffer_size), use_nothrow);
    if (n > 0) {
      last = clock::now();
      auto [wec, wn] = co_await asio::async_write(to, asio::buffer(buf.get(), n), use_nothrow);
      total += wn;
      if (wec) {
        error_code ignored;
        a.close(ignored);
        b.close(ignored);
        co_return;
      }
    }
    if (ec) {
      error_code ignored;
      if (ec == asio::error::eof) {
        to.shutdown(tcp::socket::shutdown_send, ignored);
      } else {
        a.close(ignored);
        b.close(ignored);
      }
      co_return;
    }
  }
}

}  // namespace
}  // namespace relay_detail

asio::awaitable<relay_totals> run_tunnel(tcp::socket& client, tcp::socket& upstream,
                                         std::string_view initial_up,
                                         std::chrono::milliseconds idle_timeout) {
  relay_totals totals;
  if (!initial_up.empty()) {
    auto [ec, n] = co_await asio::async_write(upstream, asio::buffer(initial_up), use_nothrow);
    totals.up += n;
    if (ec) co_return totals;
  }
  auto last = relay_detail::clock::now();
  co_await ((relay_detail::pump_socket(client, upstream, totals.up, last, client, upstream) &&
             relay_detail::pump_socket(upstream, client, totals.down, last, client, upstream)) ||
            relay_detail::watchdog(last, idle_timeout, totals.idle_timeout));
  if (totals.idle_timeout) {
    error_code ignored;
    client.close(ignored);
    upstream.close(ignored);
  }
  co_return totals;
}

}  // namespace sbx::proxy::detail
