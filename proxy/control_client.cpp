#include "proxy/control_client.hpp"

#include <fmt/format.h>

#include "proxy/detail/net.hpp"

namespace sbx::proxy {

std::optional<control_response> control_request(const std::filesystem::path& socket_path,
                                                std::string_view method, std::string_view target,
                                                std::string_view body,
                                                std::chrono::milliseconds timeout,
                                                std::string* error) {
  using namespace detail;
  using local = asio::local::stream_protocol;
  asio::io_context ctx;
  beast::basic_stream<local, asio::any_io_executor> stream(ctx);
  std::optional<control_response> out;
  error_code failure;

  auto exchange = [&]() -> asio::awaitable<void> {
    stream.expires_after(timeout);
    auto [cec] = co_await stream.async_connect(local::endpoint(socket_path.string()), use_nothrow);
    if (cec) {
      failure = cec;
      co_return;
    }
    http::request<http::string_body> req{http::string_to_verb(method), target, 11};
    req.set(http::field::host, "sbx");
    req.set(http::field::content_type, "application/json");
    req.body() = std::string(body);
    req.keep_alive(false);
    req.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, req, use_nothrow);
    if (wec) {
      failure = wec;
      co_return;
    }
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    auto [rec, rn] = co_await http::async_read(stream, buf, res, use_nothrow);
    if (rec) {
      failure = rec;
      co_return;
    }
    out = control_response{static_cast<int>(res.result_int()), std::move(res.body())};
  };
  asio::co_spawn(ctx, exchange(), asio::detached);
  ctx.run();
  if (!out && error) {
    *error =
        fmt::format("no sbx proxy answers on {} ({})", socket_path.string(), failure.message());
  }
  return out;
}

}  // namespace sbx::proxy
