// The request relay (proxy/detail/exchange.hpp): a request head and body from the fuzzer, parsed
// by parse_request_head, rewritten by prepare_upstream_request and streamed by relay_message to
// an in-memory upstream, the client's bytes arriving in reads of a size the first input byte
// chooses (so chunk headers and CRLFs fall across reads). Properties: whenever the relay reports
// success, a plain Beast parse of the client's bytes also finds one complete request; what reached
// the upstream is exactly one complete request (nothing behind it that an upstream could read as
// a second, smuggled request) with the same body; and bytes after the request stay unread.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

#include "proxy/detail/exchange.hpp"
#include "proxy/detail/request_head.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::proxy::detail;
using sbx::fuzz::require;

namespace {

constexpr std::size_t max_header_bytes = 8 * 1024;

// A stream over memory: reads take up to `read_size` bytes of `input` (then end of stream), writes
// append to `output`. Completions are posted, as a socket's are. It is its own lowest layer, so
// the relay's deadlines are no-ops.
struct memory_stream {
  using executor_type = asio::io_context::executor_type;
  executor_type ex;
  std::string_view input;
  std::size_t read_size = 1;
  std::string output;

  executor_type get_executor() const { return ex; }
  void expires_after(std::chrono::steady_clock::duration) {}
  void expires_never() {}

  template <class Buffers, class Token>
  auto async_read_some(const Buffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const Buffers& b) {
          error_code ec;
          std::size_t n = 0;
          if (input.empty()) {
            ec = asio::error::eof;
          } else {
            n = asio::buffer_copy(b, asio::buffer(input.data(), std::min(input.size(), read_size)));
            input.remove_prefix(n);
          }
          asio::post(ex, beast::bind_front_handler(std::move(handler), ec, n));
        },
        token, buffers);
  }

  template <class Buffers, class Token>
  auto async_write_some(const Buffers& buffers, Token&& token) {
    return asio::async_initiate<Token, void(error_code, std::size_t)>(
        [this](auto handler, const Buffers& b) {
          const auto n = asio::buffer_size(b);
          const auto at = output.size();
          output.resize(at + n);
          asio::buffer_copy(asio::buffer(output.data() + at, n), b);
          asio::post(ex, beast::bind_front_handler(std::move(handler), error_code{}, n));
        },
        token, buffers);
  }
};

// The whole request in one plain parse (string body): the reference the relay is compared with.
struct plain_parse {
  bool complete = false;
  std::string body;
  std::size_t used = 0;
};

plain_parse parse_plainly(std::string_view bytes) {
  http::request_parser<http::string_body> p;
  p.header_limit(max_header_bytes + 4);
  p.body_limit(boost::none);
  p.eager(true);
  error_code ec;
  plain_parse r;
  r.used = p.put(asio::buffer(bytes.data(), bytes.size()), ec);
  if (ec == http::error::need_more || ec) return r;
  if (!p.is_done()) {
    // A body delimited by the end of the stream does not occur in requests; anything else
    // unfinished means more bytes were needed.
    return r;
  }
  r.complete = true;
  r.body = p.get().body();
  return r;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  const std::size_t read_size = 1 + data[0] % 64;
  const auto in = sbx::fuzz::as_text(data + 1, size - 1);
  const auto end = in.find("\r\n\r\n");
  if (end == std::string_view::npos || end + 4 > max_header_bytes) return 0;
  const auto head_len = end + 4;

  static asio::io_context ioc;
  static std::string chunk(body_chunk_size, '\0');
  ioc.restart();

  // The head and whatever the first read brought with it are buffered, as read_request_head
  // leaves them; the rest arrives through the stream.
  const auto first = std::min(in.size(), head_len + read_size);
  beast::flat_buffer client_buf;
  auto room = client_buf.prepare(first);
  std::memcpy(room.data(), in.data(), first);
  client_buf.commit(first);
  memory_stream client{ioc.get_executor(), in.substr(first), read_size, {}};
  memory_stream upstream{ioc.get_executor(), {}, read_size, {}};

  request_parser p;
  if (!parse_request_head(client_buf, head_len, max_header_bytes, p).empty()) return 0;
  (void)prepare_upstream_request(p.get(), "/");

  exchange_detail::relay_status status{};
  std::uint64_t written = 0;
  std::exception_ptr failed;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        status = co_await exchange_detail::relay_message(client, client_buf, p, upstream,
                                                         chunk.data(), std::chrono::seconds(1),
                                                         std::chrono::seconds(1), written);
      },
      [&](std::exception_ptr e) { failed = e; });
  ioc.run();
  if (failed) std::rethrow_exception(failed);
  require(written == upstream.output.size(), "written counts the bytes sent upstream");
  if (status != exchange_detail::relay_status::ok) return 0;

  const auto client_side = parse_plainly(in);
  require(client_side.complete, "a relayed request is a complete request to a plain parser");
  const auto upstream_side = parse_plainly(upstream.output);
  if (!upstream_side.complete || upstream_side.used != upstream.output.size()) {
    std::fprintf(stderr, "sent upstream (%zu bytes):\n%s\n", upstream.output.size(),
                 upstream.output.c_str());
  }
  require(upstream_side.complete, "the upstream receives a complete request");
  require(upstream_side.used == upstream.output.size(),
          "the upstream receives one request and nothing behind it");
  require(upstream_side.body == client_side.body, "the upstream receives the client's body");
  // What the client sent after this request stays for the next exchange, unread.
  const auto unread = client_buf.size() + client.input.size();
  require(unread == in.size() - client_side.used, "bytes after the request stay unread");
  return 0;
}
