#include "proxy/detail/request_head.hpp"

#include "proxy/http_checks.hpp"

namespace sbx::proxy::detail {

http::response<http::string_body> make_proxy_error(unsigned version, int status,
                                                   std::string_view code, std::string_view text,
                                                   bool keep_alive) {
  http::response<http::string_body> res{static_cast<http::status>(status),
                                        version < 10 ? 11u : version};
  res.set(http::field::server, "sbx-proxy");
  res.set("X-Proxy-Error", code);
  res.set(http::field::content_type, "text/plain; charset=utf-8");
  res.set(http::field::cache_control, "no-store");
  if (status == 407) res.set(http::field::proxy_authenticate, "Basic realm=\"sbx-proxy\"");
  res.body() = std::string(text);
  res.body() += '\n';
  res.keep_alive(keep_alive);
  res.prepare_payload();
  return res;
}

std::string parse_request_head(beast::flat_buffer& buf, std::size_t head_len,
                               std::size_t max_header_bytes, request_parser& p) {
  std::string_view head(static_cast<const char*>(buf.data().data()), head_len);
  if (auto why = check_raw_head(head); !why.empty()) return why;

  p.header_limit(static_cast<std::uint32_t>(max_header_bytes + 4));
  p.body_limit(boost::none);  // bodies are streamed, never held: no reason to cap them here
  error_code ec;
  const auto used = p.put(asio::buffer(buf.data().data(), head_len), ec);
  if (ec || !p.is_header_done() || used != head_len) {
    return ec ? ec.message() : std::string("incomplete request head");
  }
  buf.consume(head_len);
  const auto& req = p.get();

  // Message framing beyond Beast's checks (RFC 9112 §6): anything that lets two parsers disagree
  // about where this request ends is refused, since that is how request smuggling works.
  const auto cl_count = req.count(http::field::content_length);
  const auto te_count = req.count(http::field::transfer_encoding);
  const auto cl = req[http::field::content_length];
  if (cl_count > 1 || (cl_count == 1 && std::string_view(cl.data(), cl.size()).find(',') !=
                                            std::string_view::npos)) {
    return "duplicate Content-Length";
  }
  if (cl_count > 0 && te_count > 0) return "both Content-Length and Transfer-Encoding";
  if (te_count > 0 && !p.chunked()) {
    return "Transfer-Encoding must end with chunked (RFC 9112 §6.3)";
  }
  if (req.count(http::field::host) > 1) return "more than one Host header";
  if (req.version() != 10 && req.version() != 11) return "only HTTP/1.0 and HTTP/1.1 are supported";
  return {};
}

}  // namespace sbx::proxy::detail
