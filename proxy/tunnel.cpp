#include "proxy/detail/tunnel.hpp"

#include <array>
#include <optional>
#include <vector>

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

// Large relay buffers are lent per I/O thread while bytes flow and returned when a read comes back
// small: a tunnel that sits idle (the usual state of thousands of agent connections) holds only
// its small buffer per direction.
class buffer_pool {
 public:
  std::unique_ptr<char[]> take() {
    if (free_.empty()) return std::make_unique<char[]>(tunnel_large_buffer);
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give_back(std::unique_ptr<char[]> b) {
    if (free_.size() < max_free) free_.push_back(std::move(b));
  }

 private:
  static constexpr std::size_t max_free = 64;
  std::vector<std::unique_ptr<char[]>> free_;
};

thread_local buffer_pool large_buffers;

}  // namespace
}  // namespace relay_detail

borrowed_buffer::borrowed_buffer() : data_(relay_detail::large_buffers.take()) {}

borrowed_buffer::~borrowed_buffer() {
  if (data_) relay_detail::large_buffers.give_back(std::move(data_));
}

namespace relay_detail {
namespace {

// The raw-socket pump: the same loop as pump() but on tcp::socket, where shutdown is direct. It
// reads into a small buffer; a read that fills it means bytes are flowing, so the next reads use
// a large one until a read fits in the small one again.
asio::awaitable<void> pump_socket(tcp::socket& from, tcp::socket& to, std::uint64_t& total,
                                  clock::time_point& last, tcp::socket& a, tcp::socket& b) {
  std::array<char, tunnel_small_buffer> small;
  std::optional<borrowed_buffer> large;
  for (;;) {
    char* data = large ? large->get() : small.data();
    const std::size_t size = large ? tunnel_large_buffer : small.size();
    auto [ec, n] = co_await from.async_read_some(asio::buffer(data, size), use_nothrow);
    if (n > 0) {
      last = clock::now();
      auto [wec, wn] = co_await asio::async_write(to, asio::buffer(data, n), use_nothrow);
      total += wn;
      if (wec) {
        error_code ignored;
        a.close(ignored);
        b.close(ignored);
        co_return;
      }
      if (!large && n == size) {
        large.emplace();
      } else if (large && n <= small.size()) {
        large.reset();
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
