// Reading and checking one request head (request line + fields), shared by the plain client
// connection and requests inside an intercepted TLS session.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "config/config.hpp"
#include "proxy/detail/exchange.hpp"
#include "proxy/detail/net.hpp"

namespace sbx::proxy::detail {

enum class head_result { ok, closed, too_large, timeout };

// One read that gives up at `until` but, unlike the stream's own expiry (which closes the socket),
// leaves the connection open, so that a head cut off by its deadline can still be answered (408).
// `timed_out` says the deadline ended it. The watch is shared with the timer's handler, which may
// run after this returns (one thread per io_context: it then sees `armed` false and does nothing).
template <class Stream, class Buffers>
asio::awaitable<std::size_t> read_some_until(Stream& stream, const Buffers& buffers,
                                             std::chrono::steady_clock::time_point until,
                                             error_code& ec, bool& timed_out) {
  struct watch {
    bool armed = true;
    bool fired = false;
  };
  auto& lowest = beast::get_lowest_layer(stream);
  // A backstop in case the cancel never reaches the read (it closes, as before).
  lowest.expires_at(until + std::chrono::seconds(5));
  auto w = std::make_shared<watch>();
  asio::steady_timer timer(lowest.get_executor(), until);
  timer.async_wait([w, &lowest](error_code wait_ec) {
    if (wait_ec || !w->armed) return;
    w->fired = true;
    error_code ignored;
    lowest.socket().cancel(ignored);
  });
  auto [read_ec, n] = co_await stream.async_read_some(buffers, use_nothrow);
  w->armed = false;
  timer.cancel();
  ec = read_ec;
  timed_out = read_ec && (w->fired || read_ec == beast::error::timeout);
  co_return n;
}

// Where a head being read stands: the scan for line ends (resumable as bytes arrive) stops at
// the end of the head, or at the first byte that means the head is malformed and need not be
// waited for.
struct head_scan {
  std::size_t scanned = 0;       // bytes already looked at
  bool request_line_ok = false;  // the first line is complete and well-formed

  // The size of the head to hand to parse_request_head once it can be judged (complete, or
  // malformed in its first `n` bytes), else 0 (more bytes needed).
  std::size_t advance(std::string_view data);
};

// Reads until `buf` holds a head to judge, with two deadlines: the keep-alive idle timeout until
// the first byte, then header_timeout for the whole head (so a client trickling bytes cannot hold
// a connection forever). `not_after`, when set, caps both: the first
// request of a connection must be complete by then (limits.first_byte_timeout), so connections
// that send nothing, or too little, do not hold a slot for the idle timeout; with no byte by then
// the connection is just closed. `idle` is true while waiting for the first byte; a `draining`
// session stops waiting. On ok, head_len is the size in buf of what parse_request_head is to judge:
// a complete head (ending in an empty line), or, as soon as it is certain to be refused, the bytes
// up to the first bare CR or LF (RFC 9112 §2.2: refused, not accepted, since parsers that accept
// a bare LF disagree with those that do not about where fields end) or up to the end of a request
// line that is not HTTP/1.x (HTTP/0.9 has no head to wait for). Never a wait for an end that a
// malformed head will not send.
template <class Stream>
asio::awaitable<head_result> read_request_head(
    Stream& stream, beast::flat_buffer& buf, const config::limits& lim, bool& idle,
    const bool& draining, std::size_t& head_len,
    std::optional<std::chrono::steady_clock::time_point> not_after = std::nullopt) {
  using clock = std::chrono::steady_clock;
  std::optional<clock::time_point> deadline;
  head_scan scan;
  for (;;) {
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    while (buf.size() >= 2) {
      auto d = static_cast<const char*>(buf.data().data());
      if (d[0] != '\r' || d[1] != '\n') break;
      buf.consume(2);
      scan = {};
    }
    std::string_view data(static_cast<const char*>(buf.data().data()), buf.size());
    if (auto n = scan.advance(data); n > 0) {
      head_len = n;
      co_return head_len > lim.max_header_bytes ? head_result::too_large : head_result::ok;
    }
    if (buf.size() > lim.max_header_bytes) co_return head_result::too_large;

    const auto room = std::min<std::size_t>(16 * 1024, lim.max_header_bytes + 4 - buf.size());
    error_code ec;
    std::size_t n = 0;
    bool timed_out = false;
    if (buf.size() == 0 && !deadline) {
      // Waiting for a request: when the wait ends with nothing, the connection just closes.
      if (draining) co_return head_result::closed;
      idle = true;
      const auto idle_until = clock::now() + lim.idle_timeout;
      beast::get_lowest_layer(stream).expires_at(not_after ? std::min(idle_until, *not_after)
                                                           : idle_until);
      std::tie(ec, n) = co_await stream.async_read_some(buf.prepare(room), use_nothrow);
      timed_out = ec == beast::error::timeout;
    } else {
      // Part of a head is in: its deadline is answered with 408, so the socket stays open.
      if (!deadline) deadline = clock::now() + lim.header_timeout;
      n = co_await read_some_until(stream, buf.prepare(room),
                                   not_after ? std::min(*deadline, *not_after) : *deadline, ec,
                                   timed_out);
    }
    idle = false;
    buf.commit(n);
    if (ec) {
      if (buf.size() == 0) co_return head_result::closed;  // EOF, idle timeout, or drain
      co_return timed_out ? head_result::timeout : head_result::closed;
    }
    if (n > 0 && !deadline) deadline = clock::now() + lim.header_timeout;
  }
}

// A response the proxy makes itself: X-Proxy-Error carries the stable machine-readable code, the
// body says why and what to do.
[[nodiscard]] http::response<http::string_body> make_proxy_error(unsigned version, int status,
                                                                 std::string_view code,
                                                                 std::string_view text,
                                                                 bool keep_alive);

// More header fields than any client sends; each costs the parser an allocation. The bound holds
// for what goes upstream too: a request may have at most max_header_fields - proxy_added_fields,
// since the proxy adds Via and, when the client sent none of its forms, a credential field
// (found by the request_head fuzzer: 200 fields + Via failed the proxy's own check).
inline constexpr std::size_t max_header_fields = 200;
inline constexpr std::size_t proxy_added_fields = 2;

// Checks the raw head in buf[0, head_len), parses it into `p`, consumes it from `buf`, and applies
// the framing checks Beast leaves to applications. Returns the reason for a 400, empty if fine;
// the reason never quotes the request target (it may carry a query string).
[[nodiscard]] std::string parse_request_head(beast::flat_buffer& buf, std::size_t head_len,
                                             std::size_t max_header_bytes, request_parser& p);

}  // namespace sbx::proxy::detail
