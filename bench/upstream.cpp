// sbx_bench_upstream: the benchmark's own origin server, for what nginx cannot serve (a timed
// event stream) and as a stand-in for nginx where it is not installed.
//
//   sbx_bench_upstream --tls 127.0.0.1:0 --cert leaf.pem --key leaf-key.pem --plain 127.0.0.1:0
//   # prints "listening tls 127.0.0.1:PORT" / "listening plain 127.0.0.1:PORT", one line each
//
// Routes (HTTP/1.1, keep-alive):
//   /sse?events=N&interval_ms=I  chunked text/event-stream, event k sent at start + k*I ms, each
//                                "data: t=<steady-clock ns> {...}" so that a client on this
//                                machine measures the delivery latency of every event
//   /10m                         10 MiB body (Content-Length)
//   anything else                a ~100-byte JSON body
#include <openssl/ssl.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "proxy/detail/net.hpp"

namespace sbx::bench {
namespace {

using namespace sbx::proxy::detail;  // asio, beast, http, tcp, error_code, use_nothrow
using clock = std::chrono::steady_clock;

constexpr std::string_view json_body =
    R"({"id":"bench-0001","object":"chat.completion","model":"bench","choices":[{"index":0}]})";
constexpr std::size_t bulk_size = 10 * 1024 * 1024;
constexpr std::size_t bulk_piece = 64 * 1024;
// Bounds that keep one stream finite whatever the query says.
constexpr long max_events = 1'000'000;
constexpr long min_interval_ms = 1;
constexpr auto read_timeout = std::chrono::seconds(120);
constexpr auto write_timeout = std::chrono::seconds(30);

long query_number(std::string_view target, std::string_view key, long fallback) {
  const auto q = target.find('?');
  if (q == std::string_view::npos) return fallback;
  auto rest = target.substr(q + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto part = rest.substr(0, amp);
    if (part.starts_with(key) && part.size() > key.size() && part[key.size()] == '=') {
      long value = fallback;
      const auto digits = part.substr(key.size() + 1);
      std::from_chars(digits.data(), digits.data() + digits.size(), value);
      return value;
    }
    if (amp == std::string_view::npos) break;
    rest = rest.substr(amp + 1);
  }
  return fallback;
}

template <class Stream>
asio::awaitable<error_code> write_text(Stream& s, std::string_view text) {
  beast::get_lowest_layer(s).expires_after(write_timeout);
  auto [ec, n] = co_await asio::async_write(s, asio::buffer(text), use_nothrow);
  co_return ec;
}

template <class Stream>
asio::awaitable<error_code> serve_sse(Stream& s, std::string_view target) {
  const long events = std::clamp(query_number(target, "events", 100), 1L, max_events);
  const long interval = std::max(query_number(target, "interval_ms", 10), min_interval_ms);
  if (auto ec =
          co_await write_text(s,
                              "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                              "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")) {
    co_return ec;
  }
  asio::steady_timer timer(co_await asio::this_coro::executor);
  const auto start = clock::now();
  std::string chunk;
  for (long k = 1; k <= events; ++k) {
    timer.expires_at(start + std::chrono::milliseconds(interval * k));
    co_await timer.async_wait(use_nothrow);
    const auto now_ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch())
            .count();
    // About the size of one streamed token of a chat completion.
    const auto event = fmt::format(
        "data: t={} {{\"id\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{}"
        "\"}}}}]}}\n\n",
        now_ns, k);
    chunk = fmt::format("{:x}\r\n{}\r\n", event.size(), event);
    if (auto ec = co_await write_text(s, chunk)) co_return ec;
  }
  co_return co_await write_text(s, "0\r\n\r\n");
}

template <class Stream>
asio::awaitable<error_code> serve_bulk(Stream& s) {
  static const std::string piece(bulk_piece, 'x');
  if (auto ec = co_await write_text(
          s, fmt::format("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         "Content-Length: {}\r\n\r\n",
                         bulk_size))) {
    co_return ec;
  }
  for (std::size_t sent = 0; sent < bulk_size; sent += bulk_piece) {
    if (auto ec = co_await write_text(s, piece)) co_return ec;
  }
  co_return error_code{};
}

template <class Stream>
asio::awaitable<void> serve_requests(Stream& s) {
  static const std::string json_response = fmt::format(
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
      json_body.size(), json_body);
  beast::flat_buffer buf;
  for (;;) {
    http::request_parser<http::string_body> parser;
    parser.body_limit(1024 * 1024);
    beast::get_lowest_layer(s).expires_after(read_timeout);
    auto [ec, n] = co_await http::async_read(s, buf, parser, use_nothrow);
    if (ec) co_return;  // the client hung up (or went silent): nothing to answer
    const auto& req = parser.get();
    const std::string_view target{req.target().data(), req.target().size()};
    error_code wec;
    if (target.starts_with("/sse")) {
      wec = co_await serve_sse(s, target);
    } else if (target.starts_with("/10m")) {
      wec = co_await serve_bulk(s);
    } else {
      wec = co_await write_text(s, json_response);
    }
    if (wec || !req.keep_alive()) co_return;
  }
}

asio::awaitable<void> serve_plain(tcp::socket socket) {
  beast::tcp_stream s(std::move(socket));
  co_await serve_requests(s);
}

asio::awaitable<void> serve_tls(tcp::socket socket, asio::ssl::context& tls) {
  beast::ssl_stream<beast::tcp_stream> s(beast::tcp_stream(std::move(socket)), tls);
  beast::get_lowest_layer(s).expires_after(write_timeout);
  auto [ec] = co_await s.async_handshake(asio::ssl::stream_base::server, use_nothrow);
  if (ec) co_return;
  co_await serve_requests(s);
}

asio::awaitable<void> accept_loop(tcp::acceptor acceptor, asio::ssl::context* tls,
                                  std::vector<std::unique_ptr<asio::io_context>>& pool) {
  std::size_t next = 0;
  for (;;) {
    auto& ctx = *pool[next++ % pool.size()];
    auto [ec, socket] = co_await acceptor.async_accept(ctx, use_nothrow);
    if (ec) {
      if (ec == asio::error::operation_aborted) co_return;
      continue;  // EMFILE and friends: the next accept may work
    }
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    if (tls) {
      asio::co_spawn(ctx, serve_tls(std::move(socket), *tls), asio::detached);
    } else {
      asio::co_spawn(ctx, serve_plain(std::move(socket)), asio::detached);
    }
  }
}

tcp::acceptor listen_on(asio::io_context& ctx, const std::string& where) {
  const auto colon = where.rfind(':');
  if (colon == std::string::npos) throw std::runtime_error("listen address needs :port: " + where);
  const tcp::endpoint ep(asio::ip::make_address(where.substr(0, colon)),
                         static_cast<std::uint16_t>(std::stoi(where.substr(colon + 1))));
  tcp::acceptor acceptor(ctx, ep, true);
  acceptor.listen(asio::socket_base::max_listen_connections);
  return acceptor;
}

}  // namespace
}  // namespace sbx::bench

int main(int argc, char** argv) {
  using namespace sbx::bench;
  std::string tls_listen, plain_listen, cert, key;
  unsigned threads = 1;
  CLI::App app{"sbx_bench_upstream: origin server for the sbx benchmarks (SSE, 10 MiB, JSON)"};
  app.add_option("--tls", tls_listen, "IP:PORT for HTTPS (port 0 = any)");
  app.add_option("--plain", plain_listen, "IP:PORT for plain HTTP (port 0 = any)");
  app.add_option("--cert", cert, "certificate chain PEM (with --tls)");
  app.add_option("--key", key, "private key PEM (with --tls)");
  app.add_option("--threads", threads, "I/O threads");
  CLI11_PARSE(app, argc, argv);
  try {
    std::vector<std::unique_ptr<asio::io_context>> pool;
    for (unsigned i = 0; i < std::max(1u, threads); ++i) {
      pool.push_back(std::make_unique<asio::io_context>(1));
    }
    asio::ssl::context tls(asio::ssl::context::tls_server);
    if (!tls_listen.empty()) {
      SSL_CTX_set_min_proto_version(tls.native_handle(), TLS1_3_VERSION);
      tls.use_certificate_chain_file(cert);
      tls.use_private_key_file(key, asio::ssl::context::pem);
      auto acceptor = listen_on(*pool.front(), tls_listen);
      std::cout << "listening tls " << acceptor.local_endpoint() << std::endl;
      asio::co_spawn(*pool.front(), accept_loop(std::move(acceptor), &tls, pool), asio::detached);
    }
    if (!plain_listen.empty()) {
      auto acceptor = listen_on(*pool.front(), plain_listen);
      std::cout << "listening plain " << acceptor.local_endpoint() << std::endl;
      asio::co_spawn(*pool.front(), accept_loop(std::move(acceptor), nullptr, pool),
                     asio::detached);
    }
    if (tls_listen.empty() && plain_listen.empty()) {
      std::cerr << "sbx_bench_upstream: give --tls and/or --plain\n";
      return 2;
    }
    std::vector<std::thread> workers;
    for (std::size_t i = 1; i < pool.size(); ++i) {
      workers.emplace_back([&ctx = *pool[i]] {
        auto guard = asio::make_work_guard(ctx);
        ctx.run();
      });
    }
    pool.front()->run();
    for (auto& w : workers)
      w.join();
  } catch (const std::exception& e) {
    std::cerr << "sbx_bench_upstream: " << e.what() << "\n";
    return 2;
  }
}
