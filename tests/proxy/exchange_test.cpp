// relay_message over real loopback sockets: a small message leaves in one write (header and body
// together), and a header whose body has not arrived yet is not held back (event streams).
#include <doctest/doctest.h>

#include <chrono>
#include <exception>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/detail/exchange.hpp"

using namespace sbx::proxy::detail;
using namespace std::chrono_literals;

namespace {

// Passes everything to a tcp_stream and counts the writes the relay makes on it.
struct counting_stream {
  beast::tcp_stream& next;
  int writes = 0;

  using executor_type = beast::tcp_stream::executor_type;
  executor_type get_executor() { return next.get_executor(); }
  beast::tcp_stream& next_layer() { return next; }

  template <class Buffers, class Handler>
  auto async_write_some(const Buffers& buffers, Handler&& handler) {
    ++writes;
    return next.async_write_some(buffers, std::forward<Handler>(handler));
  }
  template <class Buffers, class Handler>
  auto async_read_some(const Buffers& buffers, Handler&& handler) {
    return next.async_read_some(buffers, std::forward<Handler>(handler));
  }
};

// Two connected loopback sockets.
asio::awaitable<std::pair<tcp::socket, tcp::socket>> socket_pair() {
  auto ex = co_await asio::this_coro::executor;
  tcp::acceptor acceptor(ex, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket a(ex);
  co_await a.async_connect(acceptor.local_endpoint(), asio::use_awaitable);
  auto b = co_await acceptor.async_accept(asio::use_awaitable);
  co_return std::pair{std::move(a), std::move(b)};
}

// Reads from `s` until `text` holds `until`, or fails the test after 2 s.
asio::awaitable<std::string> read_until(tcp::socket& s, std::string text, std::string_view until) {
  asio::steady_timer deadline(s.get_executor(), 2s);
  deadline.async_wait([&](error_code ec) {
    if (!ec) s.cancel();
  });
  char buf[4096];
  while (text.find(until) == std::string::npos) {
    auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), use_nothrow);
    if (ec) break;
    text.append(buf, n);
  }
  deadline.cancel();
  co_return text;
}

// Runs `body` on a fresh io_context and rethrows what it threw (doctest failures included).
template <class F>
void run(F body) {
  asio::io_context ioc;
  std::exception_ptr failed;
  asio::co_spawn(ioc, body(), [&](std::exception_ptr e) { failed = e; });
  ioc.run_for(10s);
  if (failed) std::rethrow_exception(failed);
}

}  // namespace

TEST_CASE("a small response leaves in one write, header and body together") {
  run([]() -> asio::awaitable<void> {
    auto [upstream_peer, upstream_side] = co_await socket_pair();
    auto [client_side, client_peer] = co_await socket_pair();
    beast::tcp_stream in(std::move(upstream_side));
    beast::tcp_stream out_tcp(std::move(client_side));
    counting_stream out{out_tcp};

    const std::string response =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        "{\"ok\":true}";
    co_await asio::async_write(upstream_peer, asio::buffer(response), asio::use_awaitable);

    beast::flat_buffer in_buf;
    response_parser p;
    auto [ec, n] = co_await http::async_read_header(in, in_buf, p, use_nothrow);
    REQUIRE(!ec);
    auto chunk = std::make_unique<char[]>(body_chunk_size);
    std::uint64_t written = 0;
    auto status = co_await exchange_detail::relay_message(in, in_buf, p, out, chunk.get(), 2000ms,
                                                          2000ms, written);
    CHECK(status == exchange_detail::relay_status::ok);
    CHECK(out.writes == 1);
    CHECK(written == response.size());
    CHECK(co_await read_until(client_peer, "", "{\"ok\":true}") == response);
  });
}

TEST_CASE("a header whose body has not arrived yet is written at once, the body when it comes") {
  run([]() -> asio::awaitable<void> {
    auto [upstream_peer, upstream_side] = co_await socket_pair();
    auto [client_side, client_peer] = co_await socket_pair();
    beast::tcp_stream in(std::move(upstream_side));
    beast::tcp_stream out_tcp(std::move(client_side));
    counting_stream out{out_tcp};

    const std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    co_await asio::async_write(upstream_peer, asio::buffer(head), asio::use_awaitable);
    beast::flat_buffer in_buf;
    response_parser p;
    auto [ec, n] = co_await http::async_read_header(in, in_buf, p, use_nothrow);
    REQUIRE(!ec);

    auto chunk = std::make_unique<char[]>(body_chunk_size);
    std::uint64_t written = 0;
    bool relayed = false;
    auto ex = co_await asio::this_coro::executor;
    asio::co_spawn(
        ex,
        [&]() -> asio::awaitable<void> {
          auto s = co_await exchange_detail::relay_message(in, in_buf, p, out, chunk.get(), 2000ms,
                                                           2000ms, written);
          CHECK(s == exchange_detail::relay_status::ok);
          relayed = true;
        },
        asio::detached);

    // The client has the header while the upstream has sent no event yet.
    CHECK(co_await read_until(client_peer, "", "\r\n\r\n") == head);
    CHECK(!relayed);
    co_await asio::async_write(upstream_peer,
                               asio::buffer(std::string_view("5\r\nhello\r\n0\r\n\r\n")),
                               asio::use_awaitable);
    const auto rest = co_await read_until(client_peer, "", "0\r\n\r\n");
    CHECK(rest == "5\r\nhello\r\n0\r\n\r\n");
    asio::steady_timer settle(ex, 50ms);
    co_await settle.async_wait(asio::use_awaitable);
    CHECK(relayed);
  });
}
