// A client's request head through the proxy's checks: check_raw_head, then Beast's parser and the
// framing checks of parse_request_head (proxy/detail/request_head.hpp), found the way
// read_request_head finds it (leading empty lines skipped, the head ends at the first empty line).
// Properties: an accepted head has one framing (never Content-Length and Transfer-Encoding, at
// most one Content-Length, chunked last), HTTP/1.0 or 1.1, one Host; and the request the proxy
// sends upstream (prepare_upstream_request) parses again as the same request with the same
// framing and passes the same checks, so the upstream cannot read it differently.
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include <boost/beast/http/write.hpp>

#include "proxy/detail/request_head.hpp"
#include "proxy/http_checks.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::proxy;
using namespace sbx::proxy::detail;
using sbx::fuzz::require;

namespace {

// Smaller than the default limit, so the fuzzer reaches it.
constexpr std::size_t max_header_bytes = 8 * 1024;

void fill(beast::flat_buffer& buf, std::string_view text) {
  auto room = buf.prepare(text.size());
  std::memcpy(room.data(), text.data(), text.size());
  buf.commit(text.size());
}

std::string field_text(const http::fields& f, http::field name) {
  auto v = f[name];
  return std::string(v.data(), v.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto in = sbx::fuzz::as_text(data, size);
  (void)check_raw_head(in);  // any text, complete head or not

  while (in.starts_with("\r\n"))
    in.remove_prefix(2);
  const auto end = in.find("\r\n\r\n");
  if (end == std::string_view::npos) return 0;
  const auto head_len = end + 4;
  if (head_len > max_header_bytes) return 0;

  beast::flat_buffer buf;
  fill(buf, in);
  request_parser p;
  if (!parse_request_head(buf, head_len, max_header_bytes, p).empty()) return 0;

  const auto& req = p.get();
  require(p.is_header_done(), "accepted head is complete");
  require(buf.size() == in.size() - head_len, "exactly the head is consumed");
  require(check_raw_head(in.substr(0, head_len)).empty(), "accepted head passes check_raw_head");
  require(req.version() == 10 || req.version() == 11, "only HTTP/1.0 and 1.1");
  require(req.count(http::field::host) <= 1, "at most one Host");
  require(req.count(http::field::content_length) <= 1, "at most one Content-Length");
  require(!(req.count(http::field::content_length) && req.count(http::field::transfer_encoding)),
          "never both Content-Length and Transfer-Encoding");
  require(req.count(http::field::transfer_encoding) == 0 || p.chunked(),
          "Transfer-Encoding ends with chunked");

  const bool chunked = p.chunked();
  const auto content_length = p.content_length();
  const auto method = std::string(req.method_string());
  const auto host = field_text(req.base(), http::field::host);

  // What goes upstream, as the forward route makes it (origin-form target, hop-by-hop removed).
  auto& forwarded = p.get();
  (void)prepare_upstream_request(forwarded, "/forwarded?q=1");
  std::ostringstream wire;
  wire << forwarded.base();
  const auto sent = wire.str();

  beast::flat_buffer again;
  fill(again, sent);
  request_parser q;
  const auto why = parse_request_head(again, sent.size(), sent.size(), q);
  if (!why.empty())
    std::fprintf(stderr, "upstream head refused: %s\n%s", why.c_str(), sent.c_str());
  require(why.empty(), "the forwarded head passes the proxy's own checks");
  require(again.size() == 0, "the forwarded head is one head");
  require(q.get().method_string() == method, "same method upstream");
  require(q.chunked() == chunked, "same chunked framing upstream");
  require(q.content_length() == content_length, "same Content-Length upstream");
  require(field_text(q.get().base(), http::field::host) == host, "same Host upstream");
  require(q.get().count(http::field::proxy_authorization) == 0,
          "Proxy-Authorization never goes upstream");
  return 0;
}
