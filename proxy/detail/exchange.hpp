// One HTTP/1.1 request/response exchange relayed between a client stream and an upstream stream,
// written once as a template so plain forwarding (tcp_stream both sides) and interception
// (ssl_stream both sides) share it. Bodies stream through a fixed buffer (buffer_body): never held
// whole in memory. Chunked bodies are re-chunked as they arrive, so each upstream chunk (an SSE
// event, a token) reaches the client when it arrives.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <boost/beast/core/string.hpp>

#include "proxy/detail/net.hpp"
#include "proxy/detail/tunnel.hpp"
#include "proxy/http_checks.hpp"

namespace sbx::proxy::detail {

// 64 KiB: large enough that a bulk body moves in few syscalls, small enough per active exchange.
inline constexpr std::size_t body_chunk_size = 64 * 1024;
static_assert(body_chunk_size == tunnel_large_buffer, "bodies relay through borrowed_buffer");

// The longest chunk-size line (with its extensions) or trailer section a relayed body may have.
// Beast (1.81) puts no limit on them: without this bound a peer sending an endless chunk
// extension would grow the read buffer without end.
inline constexpr std::size_t max_chunk_header_bytes = 64 * 1024;

// What a read buffer keeps between exchanges: a whole usual header section in one read (Beast
// sizes reads by the spare capacity, 512 bytes at least), not the body_chunk_size a body grew it
// to.
inline constexpr std::size_t idle_read_buffer = 16 * 1024;

// After an exchange: a connection that waits for its next request gives back what a body made its
// read buffer grow to; bytes already buffered (a pipelined request) stay.
inline void release_if_empty(beast::flat_buffer& b) {
  if (b.size() != 0 || b.capacity() <= idle_read_buffer) return;
  b.shrink_to_fit();
  b.reserve(idle_read_buffer);
}
inline constexpr std::string_view via_value = "1.1 sbx-proxy";

using request_parser = http::request_parser<http::buffer_body>;
using response_parser = http::response_parser<http::buffer_body>;

struct exchange_limits {
  std::chrono::milliseconds client_read{60'000};
  std::chrono::milliseconds upstream_read{120'000};
  std::chrono::milliseconds write{60'000};
  std::chrono::milliseconds tunnel_idle{600'000};
  std::uint32_t header_limit = 64 * 1024;
};

// What the client asked for, recorded before the hop-by-hop fields that say it are removed.
struct request_shape {
  bool keep_alive = true;
  // Connection: upgrade + Upgrade: websocket, relayed as raw bytes after a 101. Any other
  // Upgrade (h2c, TLS/1.0, "websocket, h2c") is removed as a hop-by-hop field instead.
  bool upgrade = false;
  bool head = false;
  bool expect_continue = false;
  unsigned version = 11;
};

struct exchange_result {
  enum class failure {
    none,
    client_read,       // the client stopped sending its request body
    client_framing,    // the request body's chunked framing is malformed: 400 if nothing was
                       // answered yet, and the upstream connection is not used again (it got part
                       // of a request)
    client_write,      // the client went away while we wrote the response
    upstream_write,    // the upstream closed or reset while we sent the request
    upstream_read,     // the upstream closed or reset before/while responding, or answered
                       // what cannot be relayed (a 101 nobody asked for: see detail)
    upstream_timeout,  // the upstream was silent for limits.upstream_read
  };
  failure fail = failure::none;
  bool response_started = false;  // bytes of the response reached the client
  bool request_body_started = false;
  int status = 0;
  std::uint64_t bytes_up = 0;
  std::uint64_t bytes_down = 0;
  bool client_keep_alive = false;
  bool upstream_reusable = false;
  bool upgraded = false;  // a 101 was relayed and the connection ran as a byte tunnel until closed
  // What went wrong, for the row and the 400/502 text: Beast's parser error for client_framing
  // ("bad chunk"), the refused response for upstream_read. Never request or response content.
  std::string detail;
};

namespace exchange_detail {

inline bool iequals(std::string_view a, std::string_view b) {
  return beast::iequals(a, b);
}

// Removes the fields a proxy must not forward (RFC 9110 §7.6.1): the hop-by-hop set and every
// field the Connection header names, except framing fields whose removal would change the message
// boundaries (a "Connection: content-length" smuggling trick).
template <class Fields>
void strip_hop_by_hop(Fields& fields, bool keep_upgrade) {
  std::vector<std::string> named;
  auto range = fields.equal_range(http::field::connection);
  for (auto field = range.first; field != range.second; ++field) {
    http::token_list tokens(field->value());
    for (auto token : tokens) {
      std::string_view t{token.data(), token.size()};
      if (iequals(t, "content-length") || iequals(t, "transfer-encoding") || iequals(t, "host")) {
        continue;
      }
      named.emplace_back(t);
    }
  }
  for (auto const& n : named) {
    if (keep_upgrade && iequals(n, "upgrade")) continue;
    fields.erase(n);
  }
  for (auto it = fields.begin(); it != fields.end();) {
    std::string_view name{it->name_string().data(), it->name_string().size()};
    if (is_hop_by_hop(name) && !(keep_upgrade && iequals(name, "upgrade"))) {
      it = fields.erase(it);
    } else {
      ++it;
    }
  }
  if (keep_upgrade) fields.set(http::field::connection, "upgrade");
}

// The Upgrade field's lines as one list.
template <class Fields>
std::string upgrade_value(const Fields& fields) {
  std::string v;
  bool first = true;
  for (auto [it, end] = fields.equal_range(http::field::upgrade); it != end; ++it, first = false) {
    if (!first) v += ", ";
    v.append(it->value().data(), it->value().size());
  }
  return v;
}

// A client asks for a protocol switch with "Connection: upgrade" plus an Upgrade field (RFC 9110
// §7.8); the proxy relays only a switch to WebSocket. Any other protocol (h2c above all) would
// turn the connection into a pipe whose later requests no rule sees and no row records.
template <class Fields>
bool wants_upgrade(const Fields& fields) {
  if (fields.count(http::field::upgrade) == 0 || !upgrade_is_websocket(upgrade_value(fields))) {
    return false;
  }
  auto range = fields.equal_range(http::field::connection);
  for (auto field = range.first; field != range.second; ++field) {
    http::token_list tokens(field->value());
    for (auto token : tokens) {
      if (iequals(std::string_view(token.data(), token.size()), "upgrade")) return true;
    }
  }
  return false;
}

inline void add_via(http::fields& fields) {
  auto existing = fields[http::field::via];
  if (existing.empty()) {
    fields.set(http::field::via, via_value);
  } else {
    std::string v(existing.data(), existing.size());
    v += ", ";
    v += via_value;
    fields.set(http::field::via, v);
  }
}

// bad_framing: the bytes read are not a valid message body (a bad chunk size, no CRLF after a
// chunk, a malformed chunk extension or trailer), as opposed to a peer that went away.
enum class relay_status { ok, read_failed, read_timeout, write_failed, bad_framing };

// True for the parser's verdicts on the bytes themselves; false for the end of the stream
// (partial_message) and for what only asks for more input.
inline bool is_framing_error(const error_code& ec) {
  if (ec.category() != http::make_error_code(http::error::bad_chunk).category()) return false;
  switch (static_cast<http::error>(ec.value())) {
    case http::error::end_of_stream:
    case http::error::partial_message:
    case http::error::need_more:
    case http::error::need_buffer:
    case http::error::short_read:
      return false;
    default:
      return true;
  }
}

// Feeds body bytes already sitting in `in_buf` through the parser into the body buffer, without
// I/O. Not eager, the parser stops after each chunk header or chunk, so it is fed while it makes
// progress and there is room. Returns the parser's error on a framing error, else nothing.
template <bool isRequest>
error_code parse_buffered(beast::flat_buffer& in_buf,
                          http::parser<isRequest, http::buffer_body>& p) {
  auto& body = p.get().body();
  while (!p.is_done() && in_buf.size() > 0 && body.size > 0) {
    error_code ec;
    const auto used = p.put(in_buf.data(), ec);
    in_buf.consume(used);
    if (ec == http::error::need_buffer || ec == http::error::need_more) break;
    if (ec) return ec;
    if (used == 0) break;
  }
  return {};
}

// Turns what the parser wrote into `chunk` into the serializer's next body piece. An empty
// buffer with more=false would go out as an empty chunk before the last-chunk (two "0\r\n\r\n"):
// a null buffer ends the body cleanly.
template <bool isRequest>
void hand_to_serializer(http::parser<isRequest, http::buffer_body>& p, char* chunk) {
  auto& body = p.get().body();
  body.size = body_chunk_size - body.size;
  body.data = body.size ? chunk : nullptr;
  body.more = !p.is_done();
}

// Streams one message whose header `p` has parsed from `in` to `out`. The header goes out together
// with the body bytes that arrived with it (one write, one TLS record, for the usual small
// message); then the rest of the body through `chunk` as it arrives (Beast's relay pattern). A
// header with no body bytes behind it yet (an event stream) is written at once, not held back.
// On bad_framing, `*framing` (when given) receives the parser's error. When the framing error is
// in bytes that arrived with the header, nothing has been written to `out`.
template <bool isRequest, class In, class Out>
asio::awaitable<relay_status> relay_message(In& in, beast::flat_buffer& in_buf,
                                            http::parser<isRequest, http::buffer_body>& p, Out& out,
                                            char* chunk, std::chrono::milliseconds read_timeout,
                                            std::chrono::milliseconds write_timeout,
                                            std::uint64_t& written, bool* body_started = nullptr,
                                            error_code* framing = nullptr) {
  http::serializer<isRequest, http::buffer_body> sr{p.get()};
  // Beast sizes each read by the buffer's spare capacity (512 bytes at least). The parser moves
  // every body byte on into `chunk`, so in_buf would never grow and a body would move 512 bytes
  // (one TLS record) at a time: give it room for a whole chunk.
  if (!p.is_done() && in_buf.capacity() < body_chunk_size) in_buf.reserve(body_chunk_size);
  // Beast's read loops until the parser can go on; bounding the buffer is what makes an endless
  // chunk line end (with http::error::buffer_overflow, a framing error) instead of growing it.
  struct bound_guard {
    beast::flat_buffer& b;
    std::size_t old = b.max_size();
    ~bound_guard() { b.max_size(old); }
  } bound{in_buf};
  in_buf.max_size(std::max(in_buf.size(), max_chunk_header_bytes));
  auto& body = p.get().body();
  body.data = chunk;
  body.size = body_chunk_size;
  auto refuse = [framing](const error_code& ec) {
    if (framing) *framing = ec;
    return relay_status::bad_framing;
  };
  if (auto ec = parse_buffered(in_buf, p)) co_return refuse(ec);
  hand_to_serializer(p, chunk);
  for (;;) {
    if (body.size > 0 || !body.more) {  // body bytes to send, or the end of the message
      if (body_started && body.size > 0) *body_started = true;
      beast::get_lowest_layer(out).expires_after(write_timeout);
      auto [wec, wn] = co_await http::async_write(out, sr, use_nothrow);
      written += wn;
      if (wec == http::error::need_buffer) wec = {};
      if (wec) co_return relay_status::write_failed;
      if (sr.is_done()) break;
    } else if (!sr.is_header_done()) {
      // Nothing of the body behind the header yet: the serializer would hold the header back
      // until the first body bytes, so it goes out alone, now.
      beast::get_lowest_layer(out).expires_after(write_timeout);
      auto [wec, wn] = co_await http::async_write_header(out, sr, use_nothrow);
      written += wn;
      if (wec) co_return relay_status::write_failed;
    }
    if (p.is_done()) {
      body.data = nullptr;
      body.size = 0;
      body.more = false;
      continue;
    }
    // Read until body bytes arrive or the message ends (a chunk header alone is progress, not
    // something to write).
    do {
      body.data = chunk;
      body.size = body_chunk_size;
      beast::get_lowest_layer(in).expires_after(read_timeout);
      auto [ec, n] = co_await http::async_read_some(in, in_buf, p, use_nothrow);
      if (ec == http::error::need_buffer) ec = {};
      if (ec) {
        if (is_framing_error(ec)) co_return refuse(ec);
        co_return ec == beast::error::timeout ? relay_status::read_timeout
                                              : relay_status::read_failed;
      }
      // Take whatever else is already buffered too, so a body that arrived in one read goes
      // out in one write.
      if (auto pec = parse_buffered(in_buf, p)) co_return refuse(pec);
    } while (body.size == body_chunk_size && !p.is_done());
    hand_to_serializer(p, chunk);
  }
  beast::get_lowest_layer(out).expires_never();
  co_return relay_status::ok;
}

}  // namespace exchange_detail

// Rewrites a parsed client request for the upstream: origin-form target, HTTP/1.1, hop-by-hop
// fields and Proxy-Authorization removed (an Upgrade other than websocket with them), the
// Transfer-Encoding written as exactly "chunked" (parse_request_head accepted no other coding, but
// in any case: "CHUNKED" goes up as the one spelling every parser reads), Via added. Returns what
// the client asked for.
inline request_shape prepare_upstream_request(http::request<http::buffer_body>& req,
                                              std::string_view origin_form) {
  request_shape shape;
  shape.keep_alive = req.keep_alive();
  shape.version = req.version();
  shape.head = req.method() == http::verb::head;
  shape.upgrade = req.version() == 11 && exchange_detail::wants_upgrade(req.base());
  shape.expect_continue = exchange_detail::iequals(
      std::string_view(req[http::field::expect].data(), req[http::field::expect].size()),
      "100-continue");
  exchange_detail::strip_hop_by_hop(req.base(), shape.upgrade);
  if (req.count(http::field::transfer_encoding) > 0) {
    req.set(http::field::transfer_encoding, "chunked");
  }
  // We answer "100 Continue" ourselves (see relay_exchange), so the upstream must not wait for it.
  if (shape.expect_continue) req.erase(http::field::expect);
  req.target(origin_form);
  req.version(11);
  exchange_detail::add_via(req.base());
  return shape;
}

// Sends the prepared request (streaming its body from the client) and relays the response.
// `chunk` is a body_chunk_size buffer owned by the caller.
template <class Client, class Upstream>
asio::awaitable<exchange_result> relay_exchange(Client& client, beast::flat_buffer& client_buf,
                                                request_parser& req, const request_shape& shape,
                                                Upstream& upstream,
                                                beast::flat_buffer& upstream_buf, char* chunk,
                                                const exchange_limits& lim) {
  using failure = exchange_result::failure;
  using exchange_detail::relay_status;
  exchange_result r;

  if (shape.expect_continue && !req.is_done()) {
    static constexpr std::string_view continue_line = "HTTP/1.1 100 Continue\r\n\r\n";
    beast::get_lowest_layer(client).expires_after(lim.write);
    auto [ec, n] = co_await asio::async_write(client, asio::buffer(continue_line), use_nothrow);
    r.bytes_down += n;
    if (ec) {
      r.fail = failure::client_write;
      co_return r;
    }
  }

  error_code framing;
  auto sent = co_await exchange_detail::relay_message(client, client_buf, req, upstream, chunk,
                                                      lim.client_read, lim.write, r.bytes_up,
                                                      &r.request_body_started, &framing);
  if (sent == relay_status::bad_framing) {
    r.fail = failure::client_framing;
    r.detail = framing == http::error::buffer_overflow
                   ? fmt::format("a chunk-size line or trailer section longer than {} bytes",
                                 max_chunk_header_bytes)
                   : framing.message();
    co_return r;
  }
  if (sent == relay_status::read_failed || sent == relay_status::read_timeout) {
    r.fail = failure::client_read;
    co_return r;
  }
  if (sent == relay_status::write_failed) {
    r.fail = failure::upstream_write;
    co_return r;
  }

  std::optional<response_parser> res;
  for (;;) {
    res.emplace();
    res->header_limit(lim.header_limit);
    res->body_limit(boost::none);  // streamed, never buffered: no reason to cap
    if (shape.head) res->skip(true);
    beast::get_lowest_layer(upstream).expires_after(lim.upstream_read);
    auto [ec, n] = co_await http::async_read_header(upstream, upstream_buf, *res, use_nothrow);
    if (ec) {
      r.fail = ec == beast::error::timeout ? failure::upstream_timeout : failure::upstream_read;
      co_return r;
    }
    const auto status = res->get().result_int();
    if (status >= 100 && status < 200 && status != 101) {
      // RFC 9110 §15.2: a proxy forwards 1xx responses; HTTP/1.0 clients cannot take them.
      if (shape.version >= 11) {
        http::response_serializer<http::buffer_body> sr{res->get()};
        beast::get_lowest_layer(client).expires_after(lim.write);
        auto [wec, wn] = co_await http::async_write_header(client, sr, use_nothrow);
        r.bytes_down += wn;
        if (wec) {
          r.fail = failure::client_write;
          co_return r;
        }
      }
      continue;
    }
    break;
  }

  auto& msg = res->get();
  r.status = msg.result_int();
  const bool upgraded =
      r.status == 101 && shape.upgrade && upgrade_is_websocket(exchange_detail::upgrade_value(msg));
  if (r.status == 101 && !upgraded) {
    // The upstream switched protocols although the request (whose Upgrade the proxy removed
    // unless it was websocket) did not ask it to: relaying that would make the connection a pipe
    // that skips every rule. A bad response: the client gets 502, the upstream connection goes.
    r.fail = failure::upstream_read;
    r.detail = "upstream answered 101 Switching Protocols to a request without a WebSocket upgrade";
    r.status = 0;
    co_return r;
  }
  const bool delimited_by_close = res->need_eof() && !upgraded;
  r.upstream_reusable = msg.keep_alive() && !delimited_by_close && !upgraded;
  r.client_keep_alive = shape.keep_alive && !upgraded;
  exchange_detail::strip_hop_by_hop(msg.base(), upgraded);
  if (!upgraded) {
    if (shape.version >= 11 && delimited_by_close && !shape.head && r.status != 204 &&
        r.status != 304) {
      msg.chunked(true);  // re-frame a read-until-close body so the client connection survives
    } else if (shape.version < 11) {
      if (msg.chunked()) msg.chunked(false);  // HTTP/1.0 has no chunked coding: end = close
      if (!msg.has_content_length()) r.client_keep_alive = false;
    }
    msg.keep_alive(r.client_keep_alive);
  }
  exchange_detail::add_via(msg.base());

  auto got = co_await exchange_detail::relay_message(upstream, upstream_buf, *res, client, chunk,
                                                     lim.upstream_read, lim.write, r.bytes_down);
  r.response_started = r.bytes_down > 0;
  if (got == relay_status::read_failed || got == relay_status::read_timeout ||
      got == relay_status::bad_framing) {
    r.fail = got == relay_status::read_timeout ? failure::upstream_timeout : failure::upstream_read;
    r.client_keep_alive = false;
    r.upstream_reusable = false;
    co_return r;
  }
  if (got == relay_status::write_failed) {
    r.fail = failure::client_write;
    r.client_keep_alive = false;
    r.upstream_reusable = false;
    co_return r;
  }

  if (upgraded) {
    r.upgraded = true;
    // Bytes the client or upstream sent right behind the handshake are already buffered.
    if (client_buf.size() > 0) {
      auto [ec, n] = co_await asio::async_write(upstream, client_buf.data(), use_nothrow);
      r.bytes_up += n;
      client_buf.consume(client_buf.size());
      if (ec) co_return r;
    }
    if (upstream_buf.size() > 0) {
      auto [ec, n] = co_await asio::async_write(client, upstream_buf.data(), use_nothrow);
      r.bytes_down += n;
      upstream_buf.consume(upstream_buf.size());
      if (ec) co_return r;
    }
    auto totals = co_await relay_streams(client, upstream, lim.tunnel_idle);
    r.bytes_up += totals.up;
    r.bytes_down += totals.down;
  }
  co_return r;
}

}  // namespace sbx::proxy::detail
