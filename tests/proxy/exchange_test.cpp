// relay_message over real loopback sockets: a small message leaves in one write (header and body
// together), and a header whose body has not arrived yet is not held back (event streams).
#include <doctest/doctest.h>

#include <chrono>
#include <exception>
#include <memory>
#include <sstream>
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

// ---------------------------------------------------------------------------------------------
// relay_exchange: a request body whose chunked framing is malformed, and upgrades.

namespace {

// Reads what arrives on `s` for `wait` (or until it closes).
asio::awaitable<std::string> read_for(tcp::socket& s, std::chrono::milliseconds wait) {
  asio::steady_timer deadline(s.get_executor(), wait);
  deadline.async_wait([&](error_code ec) {
    if (!ec) s.cancel();
  });
  std::string text;
  char buf[4096];
  for (;;) {
    auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), use_nothrow);
    text.append(buf, n);
    if (ec) break;
  }
  deadline.cancel();
  co_return text;
}

// A whole exchange over loopback: the client sends `request` (then `later`, once the relay has
// started), the origin answers `reply` (if any) once it has read something.
struct exchange_run {
  exchange_result result;
  request_shape shape;
  std::string upstream_got;  // what reached the origin
  std::string client_got;    // what reached the client
  std::string forwarded_head;
};

asio::awaitable<exchange_run> run_exchange(std::string request, std::string later = {},
                                           std::string reply = {}) {
  // Named sockets, not structured bindings: the lambdas below capture them, which clang 14 (the
  // sanitizer build) does not allow for bindings.
  auto client_pair = co_await socket_pair();
  auto upstream_pair = co_await socket_pair();
  tcp::socket client_peer = std::move(client_pair.first);
  tcp::socket origin = std::move(upstream_pair.second);
  beast::tcp_stream client(std::move(client_pair.second));
  beast::tcp_stream upstream(std::move(upstream_pair.first));
  beast::flat_buffer client_buf;
  beast::flat_buffer upstream_buf;
  auto chunk = std::make_unique<char[]>(body_chunk_size);
  co_await asio::async_write(client_peer, asio::buffer(request), asio::use_awaitable);

  request_parser p;
  p.body_limit(boost::none);
  auto [ec, n] = co_await http::async_read_header(client, client_buf, p, use_nothrow);
  REQUIRE(!ec);
  exchange_run run;
  run.shape = prepare_upstream_request(p.get(), "/x");
  {
    std::ostringstream head;
    head << p.get().base();
    run.forwarded_head = head.str();
  }
  auto ex = co_await asio::this_coro::executor;
  if (!later.empty()) {
    asio::co_spawn(
        ex,
        [&client_peer, later]() -> asio::awaitable<void> {
          asio::steady_timer t(client_peer.get_executor(), 100ms);
          co_await t.async_wait(asio::use_awaitable);
          co_await asio::async_write(client_peer, asio::buffer(later), use_nothrow);
        },
        asio::detached);
  }
  auto origin_side = [&]() -> asio::awaitable<void> {
    run.upstream_got = co_await read_for(origin, 300ms);
    if (!reply.empty()) {
      co_await asio::async_write(origin, asio::buffer(reply), use_nothrow);
      // Raw bytes behind a 101, as an upstream that switched protocols would send.
      co_await asio::async_write(origin, asio::buffer(std::string_view("RAW-AFTER-101")),
                                 use_nothrow);
    }
    error_code ignored;
    origin.shutdown(tcp::socket::shutdown_send, ignored);
  };
  asio::co_spawn(ex, origin_side(), asio::detached);
  exchange_limits lim{
      .client_read = 1000ms, .upstream_read = 1000ms, .write = 1000ms, .tunnel_idle = 1000ms};
  run.result = co_await relay_exchange(client, client_buf, p, run.shape, upstream, upstream_buf,
                                       chunk.get(), lim);
  client.close();
  upstream.close();
  run.client_got = co_await read_for(client_peer, 400ms);
  asio::steady_timer settle(ex, 350ms);  // the origin side finishes reading
  co_await settle.async_wait(asio::use_awaitable);
  co_return run;
}

const std::string chunked_post =
    "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n";

}  // namespace

TEST_CASE("a malformed chunked request body is client_framing, and reaches no one") {
  const std::string bodies[] = {
      "zz\r\nhello\r\n0\r\n\r\n",                      // not a hex size
      "5\r\nhelloXX0\r\n\r\n",                         // no CRLF after the chunk data
      "ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",        // size overflows 64 bits
      "5;a=b\nhello\r\n0\r\n\r\n",                     // bare LF in a chunk extension
      " 5\r\nhello\r\n0\r\n\r\n",                      // space before the size
      "-5\r\nhello\r\n0\r\n\r\n",                      // a sign
      "0x5\r\nhello\r\n0\r\n\r\n",                     // a 0x prefix
      "5\r\nhello\r\n0\r\nno-colon-trailer\r\n\r\n",   // a trailer that is not a field
      "5\r\nhello\r\n0\r\nContent-Length: 5\r\n\r\n",  // a framing field as a trailer
  };
  for (const auto& body : bodies) {
    CAPTURE(body);
    run([&]() -> asio::awaitable<void> {
      auto r = co_await run_exchange(chunked_post + body);
      CHECK(r.result.fail == exchange_result::failure::client_framing);
      CHECK_FALSE(r.result.detail.empty());
      CHECK_FALSE(r.result.upstream_reusable);
      CHECK_FALSE(r.result.response_started);
      // The error was in the bytes that came with the head: nothing was sent upstream.
      CHECK(r.upstream_got.empty());
      CHECK(r.client_got.empty());  // the caller answers 400
    });
  }
}

TEST_CASE("a chunked framing error after the head went upstream is still client_framing") {
  run([]() -> asio::awaitable<void> {
    auto r = co_await run_exchange(chunked_post + "5\r\nhello\r\n", "zz\r\n0\r\n\r\n");
    CHECK(r.result.fail == exchange_result::failure::client_framing);
    CHECK(r.result.request_body_started);
    CHECK_FALSE(r.result.upstream_reusable);
    // The upstream saw an incomplete request (no last chunk) and its connection is dropped.
    CHECK(r.upstream_got.starts_with("POST /x HTTP/1.1\r\n"));
    CHECK(r.upstream_got.find("0\r\n\r\n") == std::string::npos);
  });
}

TEST_CASE("a chunk extension is bounded") {
  run([]() -> asio::awaitable<void> {
    auto r = co_await run_exchange(chunked_post + "5;" + std::string(200 * 1024, 'a'));
    CHECK(r.result.fail == exchange_result::failure::client_framing);
    CHECK(r.upstream_got.find("aaaa") == std::string::npos);
  });
}

TEST_CASE("Transfer-Encoding goes upstream as exactly chunked") {
  run([]() -> asio::awaitable<void> {
    auto r = co_await run_exchange(
        "POST /x HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: CHUNKED\r\n\r\n"
        "5\r\nhello\r\n0\r\n\r\n",
        {}, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    CHECK(r.result.fail == exchange_result::failure::none);
    CHECK(r.upstream_got.find("Transfer-Encoding: chunked\r\n") != std::string::npos);
    CHECK(r.upstream_got.find("CHUNKED") == std::string::npos);
    CHECK(r.upstream_got.ends_with("5\r\nhello\r\n0\r\n\r\n"));
  });
}

TEST_CASE("an Upgrade other than websocket is removed with the fields that name it") {
  for (std::string upgrade : {"h2c", "websocket, h2c", "TLS/1.0", "h2c, websocket"}) {
    CAPTURE(upgrade);
    run([&]() -> asio::awaitable<void> {
      auto r = co_await run_exchange(
          "GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: " +
              upgrade + "\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
          {}, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
      CHECK_FALSE(r.shape.upgrade);
      CHECK(r.upstream_got.find("Upgrade") == std::string::npos);
      CHECK(r.upstream_got.find("HTTP2-Settings") == std::string::npos);
      CHECK(r.upstream_got.find("Connection") == std::string::npos);
      CHECK(r.result.status == 200);
      CHECK_FALSE(r.result.upgraded);
    });
  }
}

TEST_CASE("a 101 nobody asked for is a bad response, not a pipe") {
  for (std::string request :
       {"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n",
        // asked for websocket, got something else
        "GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"}) {
    CAPTURE(request);
    run([&]() -> asio::awaitable<void> {
      auto r = co_await run_exchange(
          request, {},
          "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n");
      CHECK(r.result.fail == exchange_result::failure::upstream_read);
      CHECK(r.result.detail.find("101") != std::string::npos);
      CHECK_FALSE(r.result.upgraded);
      CHECK_FALSE(r.result.response_started);
      CHECK_FALSE(r.result.upstream_reusable);
      CHECK(r.client_got.empty());  // neither the 101 nor the raw bytes behind it
    });
  }
}

TEST_CASE("a websocket upgrade is kept, and after its 101 the connection is relayed bytes") {
  run([]() -> asio::awaitable<void> {
    auto r = co_await run_exchange(
        "GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, Upgrade\r\nUpgrade: "
        "WebSocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        {},
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    CHECK(r.shape.upgrade);
    CHECK(r.upstream_got.find("Upgrade: WebSocket\r\n") != std::string::npos);
    CHECK(r.upstream_got.find("Connection: upgrade\r\n") != std::string::npos);
    CHECK(r.result.upgraded);
    CHECK(r.result.status == 101);
    CHECK(r.client_got.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
    CHECK(r.client_got.ends_with("RAW-AFTER-101"));
  });
}
