#include "proxy/detail/control_server.hpp"

#include <sys/stat.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace sbx::proxy::detail {
namespace {

using local = asio::local::stream_protocol;

// Requests on the control socket are small JSON documents; anything larger is a mistake.
constexpr std::uint64_t max_control_body = 1024 * 1024;
constexpr auto control_io_timeout = std::chrono::seconds(10);

}  // namespace

control_server::control_server(asio::io_context& ctx, std::filesystem::path socket_path,
                               control_handler handler)
    : ctx_(ctx), path_(std::move(socket_path)), handler_(std::move(handler)), acceptor_(ctx) {
  std::error_code fs_ec;
  if (std::filesystem::exists(std::filesystem::symlink_status(path_, fs_ec))) {
    local::socket probe(ctx_);
    error_code ec;
    probe.connect(local::endpoint(path_.string()), ec);
    if (!ec) {
      throw std::runtime_error(fmt::format(
          "another sbx proxy is already running with this SBX_HOME (control socket {} answers); "
          "stop it first or use another SBX_HOME",
          path_.string()));
    }
    std::filesystem::remove(path_, fs_ec);  // stale socket of a proxy that did not exit cleanly
  }
  // The state directory is 0700 already; the umask closes the window between bind and chmod.
  const auto old_mask = ::umask(0077);
  error_code ec;
  acceptor_.open(local(), ec);
  if (!ec) acceptor_.bind(local::endpoint(path_.string()), ec);
  ::umask(old_mask);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw std::runtime_error(
        fmt::format("cannot create the control socket {}: {}", path_.string(), ec.message()));
  }
  std::filesystem::permissions(
      path_, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write, fs_ec);
}

control_server::~control_server() {
  stop();
}

void control_server::start() {
  asio::co_spawn(ctx_, accept_loop(), asio::detached);
}

void control_server::stop() {
  if (!acceptor_.is_open()) return;
  error_code ec;
  acceptor_.close(ec);
  std::error_code fs_ec;
  std::filesystem::remove(path_, fs_ec);
}

asio::awaitable<void> control_server::accept_loop() {
  while (acceptor_.is_open()) {
    auto [ec, socket] = co_await acceptor_.async_accept(use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) co_return;
      continue;
    }
    asio::co_spawn(ctx_, serve(std::move(socket)), asio::detached);
  }
}

asio::awaitable<void> control_server::serve(local::socket socket) {
  beast::basic_stream<local, asio::any_io_executor> stream(std::move(socket));
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(max_control_body);
    stream.expires_after(control_io_timeout);
    auto [ec, n] = co_await http::async_read(stream, buf, parser, use_nothrow);
    if (ec) co_return;
    auto& req = parser.get();
    control_reply reply;
    try {
      reply = handler_(std::string_view(req.method_string().data(), req.method_string().size()),
                       std::string_view(req.target().data(), req.target().size()), req.body());
    } catch (const std::exception& e) {
      reply.status = 500;
      reply.body = fmt::format("{{\"error\":\"{}\"}}", e.what());
    }
    http::response<http::string_body> res{static_cast<http::status>(reply.status), 11};
    res.set(http::field::server, "sbx-proxy");
    res.set(http::field::content_type, reply.content_type);
    res.keep_alive(req.keep_alive());
    res.body() = std::move(reply.body);
    res.prepare_payload();
    stream.expires_after(control_io_timeout);
    auto [wec, wn] = co_await http::async_write(stream, res, use_nothrow);
    if (wec || !res.keep_alive()) co_return;
  }
}

}  // namespace sbx::proxy::detail
