// Idle, verified upstream TLS connections kept by their I/O thread for the next intercepted
// CONNECT of the same sandbox to the same host: one pool per io_context (an Asio service), so a
// pooled socket is only ever used by the thread that owns it, without locks.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/beast/ssl/ssl_stream.hpp>

#include "proxy/detail/net.hpp"
#include "proxy/http_checks.hpp"

namespace sbx::proxy::detail {

using upstream_tls = beast::ssl_stream<beast::tcp_stream>;

struct pooled_upstream {
  std::unique_ptr<upstream_tls> stream;
  std::string key;
  tcp::endpoint endpoint;
  std::chrono::steady_clock::time_point idle_since;

  // An idle connection must have nothing to read: data is a close_notify, an alert or a response
  // nobody asked for, and end-of-stream means the upstream closed it.
  [[nodiscard]] bool looks_alive() const;
};

class upstream_pool : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;
  explicit upstream_pool(asio::execution_context& ctx) : service(ctx) {}

  static upstream_pool& of(const asio::any_io_executor& ex);

  // The most recently used live connection under `key` to one of the `allowed` endpoints.
  std::unique_ptr<pooled_upstream> take(std::string_view key,
                                        const std::vector<tcp::endpoint>& allowed);
  void put(std::unique_ptr<pooled_upstream> c, const asio::any_io_executor& ex);
  void shutdown() override { idle_.clear(); }

 private:
  asio::awaitable<void> sweep();

  std::vector<std::unique_ptr<pooled_upstream>> idle_;
  bool sweeping_ = false;
};

// Pooled connections of another interception instance (older settings), sandbox or host never mix.
[[nodiscard]] std::string pool_key(std::uint64_t generation, std::string_view sandbox,
                                   const authority& where);

}  // namespace sbx::proxy::detail
