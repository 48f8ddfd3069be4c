#include "proxy/detail/upstream_pool.hpp"

#include <sys/socket.h>
#include <cerrno>

#include <algorithm>

#include <fmt/format.h>
#include <openssl/ssl.h>

namespace sbx::proxy::detail {
namespace {

// Idle connections older than this are closed rather than used: well inside the keep-alive
// timeouts servers commonly use (nginx 75 s, most APIs 60 s or more).
constexpr std::chrono::seconds pool_idle_lifetime{30};
constexpr std::chrono::seconds pool_sweep_interval{5};
constexpr std::size_t pool_max_per_key = 16;
constexpr std::size_t pool_max_total = 128;

}  // namespace

bool pooled_upstream::looks_alive() const {
  auto& sock = beast::get_lowest_layer(*stream).socket();
  if (!sock.is_open() || SSL_pending(stream->native_handle()) > 0) return false;
  char c = 0;
  const auto n = ::recv(sock.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

upstream_pool& upstream_pool::of(const asio::any_io_executor& ex) {
  return asio::use_service<upstream_pool>(asio::query(ex, asio::execution::context));
}

std::unique_ptr<pooled_upstream> upstream_pool::take(std::string_view key,
                                                     const std::vector<tcp::endpoint>& allowed) {
  const auto now = std::chrono::steady_clock::now();
  // Most recently used first: the likeliest to be alive.
  for (auto i = idle_.size(); i-- > 0;) {
    auto& c = idle_[i];
    if (c->key != key || std::find(allowed.begin(), allowed.end(), c->endpoint) == allowed.end())
      continue;
    auto taken = std::move(c);
    idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
    if (now - taken->idle_since < pool_idle_lifetime && taken->looks_alive()) return taken;
  }
  return nullptr;
}

void upstream_pool::put(std::unique_ptr<pooled_upstream> c, const asio::any_io_executor& ex) {
  const auto same_key =
      std::count_if(idle_.begin(), idle_.end(), [&](const auto& e) { return e->key == c->key; });
  if (static_cast<std::size_t>(same_key) >= pool_max_per_key) return;  // closes it
  if (idle_.size() >= pool_max_total) idle_.erase(idle_.begin());      // the oldest goes
  c->idle_since = std::chrono::steady_clock::now();
  idle_.push_back(std::move(c));
  if (!sweeping_) {
    sweeping_ = true;
    asio::co_spawn(ex, sweep(), asio::detached);
  }
}

// Closes what expired or what the upstream closed, so idle sockets do not linger; ends when the
// pool is empty (put() starts it again).
asio::awaitable<void> upstream_pool::sweep() {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  while (!idle_.empty()) {
    timer.expires_after(pool_sweep_interval);
    auto [ec] = co_await timer.async_wait(use_nothrow);
    if (ec) break;
    const auto now = std::chrono::steady_clock::now();
    std::erase_if(idle_, [&](const auto& c) {
      return now - c->idle_since >= pool_idle_lifetime || !c->looks_alive();
    });
  }
  sweeping_ = false;
}

std::string pool_key(std::uint64_t generation, std::string_view sandbox, const authority& where) {
  return fmt::format("{}\n{}\n{}:{}", generation, sandbox, where.host, where.port);
}

}  // namespace sbx::proxy::detail
