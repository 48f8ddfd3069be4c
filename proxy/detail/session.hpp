// One client connection: reads requests one after another (keep-alive) through the request
// pipeline (pipeline.hpp), and for a CONNECT tunnels it or hands it to interception. The
// connection is the pipeline's plain-HTTP route: absolute-form targets, sandbox identity from
// Proxy-Authorization, upstream connections kept per destination.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "proxy/detail/exchange.hpp"
#include "proxy/detail/identity.hpp"
#include "proxy/detail/net.hpp"
#include "proxy/detail/pipeline.hpp"
#include "proxy/detail/state.hpp"

namespace sbx::proxy::detail {

class client_session {
 public:
  // `client_slot` is the connection's place under limits.max_connections_per_client, held until
  // the session ends.
  client_session(tcp::socket socket, proxy_state& st, limiter_slot client_slot = {});
  ~client_session();
  client_session(const client_session&) = delete;
  client_session& operator=(const client_session&) = delete;

  asio::awaitable<void> run();
  // SIGTERM: finish the exchange in flight, then close; close at once when waiting for a request.
  void drain();
  // Grace period over: close the sockets now.
  void force_close();

  // --- route hooks for serve_request (pipeline.hpp) ---
  beast::tcp_stream& client() { return client_; }
  beast::flat_buffer& client_buf() { return buf_; }
  std::shared_ptr<const config::settings> settings();
  [[nodiscard]] std::string sandbox() const { return identity_.value_or(std::string{}); }
  void init_row(row_builder& row);
  std::optional<refusal> identify(const http::request<http::buffer_body>& req, row_builder& row);
  asio::awaitable<bool> on_connect(request_parser& p, row_builder& row);
  std::optional<refusal> target(http::request<http::buffer_body>& req, request_target& t);
  asio::awaitable<std::optional<refusal>> open(policy::facts& f, row_builder& row,
                                               bool& kept_alive);
  // Plain HTTP never carries a credential.
  bool will_inject(const http::request<http::buffer_body>&) const { return false; }
  void inject(http::request<http::buffer_body>&, row_builder&) {}
  asio::awaitable<exchange_result> relay(request_parser& p, const request_shape& shape, char* chunk,
                                         const exchange_limits& xl);
  void drop_upstream() { upstream_.reset(); }
  void after_exchange(const exchange_result& x);
  asio::awaitable<void> on_close(bool keep_alive);

 private:
  bool claim_identity(const std::string& sandbox);
  asio::awaitable<void> lingering_close();
  asio::awaitable<bool> refuse(unsigned version, const refusal& r, row_builder& row);

  struct upstream_link {
    beast::tcp_stream stream;
    beast::flat_buffer buf;
    std::string host;
    std::uint16_t port = 0;
    policy::ip_address address;
  };

  beast::tcp_stream client_;
  beast::flat_buffer buf_;
  proxy_state& st_;
  std::shared_ptr<const config::settings> cfg_;
  std::string client_addr_;
  peer_info peer_;  // both ends of the connection, and whether its socket is our user's
  limiter_slot client_slot_;
  std::chrono::steady_clock::time_point accepted_ = std::chrono::steady_clock::now();
  std::optional<std::string> identity_;  // the connection's sandbox once its first request is in
  bool holds_slot_ = false;
  std::optional<upstream_link> upstream_;
  bool idle_ = false;
  bool draining_ = false;
};

// Starts a session on the socket's executor.
void spawn_session(tcp::socket socket, proxy_state& st, limiter_slot client_slot = {});
// Applies drain() / force_close() to every session on the calling thread's io_context.
void drain_sessions_on_this_thread();
void force_close_sessions_on_this_thread();

}  // namespace sbx::proxy::detail
