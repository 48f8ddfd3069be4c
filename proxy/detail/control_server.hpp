// The control socket: HTTP/1.1 over a Unix socket ($SBX_HOME/sbx.sock, 0600). Runs on its own
// io_context thread, so handlers may touch SQLite without stalling the data path.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>

#include "proxy/detail/net.hpp"

namespace sbx::proxy::detail {

struct control_reply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

using control_handler = std::function<control_reply(
    std::string_view method, std::string_view target, std::string_view body)>;

class control_server {
 public:
  // Binds the socket: refuses when another proxy answers on it, removes a stale one otherwise.
  // Throws std::runtime_error with what to do.
  control_server(asio::io_context& ctx, std::filesystem::path socket_path, control_handler handler);
  ~control_server();
  void start();
  void stop();

 private:
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(asio::local::stream_protocol::socket socket);

  asio::io_context& ctx_;
  std::filesystem::path path_;
  control_handler handler_;
  asio::local::stream_protocol::acceptor acceptor_;
};

}  // namespace sbx::proxy::detail
