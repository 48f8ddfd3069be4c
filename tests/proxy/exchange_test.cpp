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

// The relay's two sides over loopback: `upstream_peer` plays the origin and writes into `in`;
// what the relay writes to `out` arrives at `client_peer`. Held by shared_ptr so a relay still
// running when a failed check ends the test keeps it alive.
struct relay_wires {
  relay_wires(tcp::socket origin, tcp::socket upstream_side, tcp::socket client_side,
              tcp::socket client)
      : upstream_peer(std::move(origin)),
        client_peer(std::move(client)),
        in(std::move(upstream_side)),
        out_tcp(std::move(client_side)) {}

  tcp::socket upstream_peer;
  tcp::socket client_peer;
  beast::tcp_stream in;
  beast::tcp_stream out_tcp;
  counting_stream out{out_tcp};
  beast::flat_buffer in_buf;
  response_parser p;
  std::unique_ptr<char[]> chunk = std::make_unique<char[]>(body_chunk_size);
  std::uint64_t written = 0;

  asio::awaitable<exchange_detail::relay_status> relay() {
    co_return co_await exchange_detail::relay_message(in, in_buf, p, out, chunk.get(), 2000ms,
                                                      2000ms, written);
  }
};

// Connects both sides, has the origin send `sent` and parses the response header from it.
asio::awaitable<std::shared_ptr<relay_wires>> wire_up(std::string_view sent) {
  auto [upstream_peer, upstream_side] = co_await socket_pair();
  auto [client_side, client_peer] = co_await socket_pair();
  auto w = std::make_shared<relay_wires>(std::move(upstream_peer), std::move(upstream_side),
                                         std::move(client_side), std::move(client_peer));
  co_await asio::async_write(w->upstream_peer, asio::buffer(sent), asio::use_awaitable);
  auto [ec, n] = co_await http::async_read_header(w->in, w->in_buf, w->p, use_nothrow);
  REQUIRE(!ec);
  co_return w;
}

}  // namespace

TEST_CASE("a small response leaves in one write, header and body together") {
  run([]() -> asio::awaitable<void> {
    const std::string response =
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
        "{\"ok\":true}";
    auto w = co_await wire_up(response);
    CHECK(co_await w->relay() == exchange_detail::relay_status::ok);
    CHECK(w->out.writes == 1);
    CHECK(w->written == response.size());
    CHECK(co_await read_until(w->client_peer, "", "{\"ok\":true}") == response);
  });
}

TEST_CASE("a header whose body has not arrived yet is written at once, the body when it comes") {
  run([]() -> asio::awaitable<void> {
    const std::string head =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    auto w = co_await wire_up(head);
    auto relayed = std::make_shared<bool>(false);
    auto ex = co_await asio::this_coro::executor;
    asio::co_spawn(
        ex,
        [w, relayed]() -> asio::awaitable<void> {
          CHECK(co_await w->relay() == exchange_detail::relay_status::ok);
          *relayed = true;
        },
        asio::detached);

    // The client has the header while the origin has sent no event yet.
    CHECK(co_await read_until(w->client_peer, "", "\r\n\r\n") == head);
    CHECK(!*relayed);
    co_await asio::async_write(w->upstream_peer,
                               asio::buffer(std::string_view("5\r\nhello\r\n0\r\n\r\n")),
                               asio::use_awaitable);
    CHECK(co_await read_until(w->client_peer, "", "0\r\n\r\n") == "5\r\nhello\r\n0\r\n\r\n");
    asio::steady_timer settle(ex, 50ms);
    co_await settle.async_wait(asio::use_awaitable);
    CHECK(*relayed);
  });
}
