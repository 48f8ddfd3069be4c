// One client connection: reads requests one after another (keep-alive), decides each by policy,
// and forwards it, tunnels it, or hands it to interception. Lives in the coroutine that runs it.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "policy/store/state_db.hpp"
#include "proxy/detail/exchange.hpp"
#include "proxy/detail/net.hpp"
#include "proxy/detail/state.hpp"

namespace sbx::proxy::detail {

// Accumulates one decision-log row and records it when the exchange is over.
class row_builder {
 public:
  row_builder(proxy_state& st, const std::string& client, const std::string& sandbox);
  store::decision_row row;
  void set_decision(const policy::decision& d);
  void deny(const policy::decision& d);
  // Records the row (the decision log applies back-pressure when its queue is full).
  void finish(int status);

 private:
  proxy_state& st_;
  std::chrono::steady_clock::time_point start_;
  bool done_ = false;
};

class client_session {
 public:
  client_session(tcp::socket socket, proxy_state& st);
  ~client_session();
  client_session(const client_session&) = delete;
  client_session& operator=(const client_session&) = delete;

  asio::awaitable<void> run();
  // SIGTERM: finish the exchange in flight, then close; close at once when waiting for a request.
  void drain();
  // Grace period over: close the sockets now.
  void force_close();

 private:
  enum class auth_result { anonymous, sandbox, bad };

  asio::awaitable<bool> serve_one();
  asio::awaitable<bool> handle_connect(request_parser& p, row_builder& row);
  asio::awaitable<bool> handle_forward(request_parser& p, row_builder& row);
  asio::awaitable<void> reply_error(unsigned version, int status, std::string_view code,
                                    std::string_view text, bool keep_alive, row_builder& row);
  asio::awaitable<void> lingering_close();
  auth_result authenticate(std::string_view header_value, std::string& sandbox) const;
  bool claim_identity(const std::string& sandbox);
  char* chunk();

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
  std::optional<std::string> identity_;  // the connection's sandbox once its first request is in
  bool holds_slot_ = false;
  std::optional<upstream_link> upstream_;
  std::optional<borrowed_buffer> chunk_;  // while a forwarded body moves
  bool idle_ = false;
  bool draining_ = false;
};

// Starts a session on the socket's executor.
void spawn_session(tcp::socket socket, proxy_state& st);
// Applies drain() / force_close() to every session on the calling thread's io_context.
void drain_sessions_on_this_thread();
void force_close_sessions_on_this_thread();

}  // namespace sbx::proxy::detail
