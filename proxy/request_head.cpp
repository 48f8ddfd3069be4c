#include "proxy/detail/request_head.hpp"

#include <iterator>

#include <fmt/format.h>

#include "proxy/http_checks.hpp"

namespace sbx::proxy::detail {

std::size_t head_scan::advance(std::string_view data) {
  for (auto i = data.find_first_of("\r\n", scanned); i != std::string_view::npos;
       i = data.find_first_of("\r\n", i + 1)) {
    if (data[i] == '\n') return i + 1;  // a bare LF
    if (i + 1 == data.size()) {         // a CR whose LF has not arrived yet
      scanned = i;
      return 0;
    }
    if (data[i + 1] != '\n') return i + 2;  // a bare CR
    ++i;                                    // the CRLF's LF
    if (!request_line_ok) {
      if (!check_request_line(data.substr(0, i - 1)).empty()) return i + 1;
      request_line_ok = true;
    } else if (data[i - 2] == '\n') {  // CRLF CRLF: the empty line that ends the head
      return i + 1;
    }
  }
  scanned = data.size();
  return 0;
}

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
  if (auto why = check_request_line(head.substr(0, head.find("\r\n"))); !why.empty()) return why;
  // read_request_head hands over less than a whole head only when the part is malformed.
  if (!head.ends_with("\r\n\r\n")) return "incomplete request head";

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
  if (constexpr auto most = max_header_fields - proxy_added_fields;
      static_cast<std::size_t>(std::distance(req.begin(), req.end())) > most) {
    return fmt::format("more than {} header fields", most);
  }
  const auto cl_count = req.count(http::field::content_length);
  const auto te_count = req.count(http::field::transfer_encoding);
  if (cl_count > 1) return "duplicate Content-Length";
  if (cl_count == 1) {
    const auto cl = req[http::field::content_length];
    if (auto why = check_content_length({cl.data(), cl.size()}); !why.empty()) return why;
  }
  if (cl_count > 0 && te_count > 0) return "both Content-Length and Transfer-Encoding";
  if (te_count > 0) {
    // One list, as RFC 9110 §5.3 combines field lines; an empty line stays an empty element.
    std::string codings;
    bool first = true;
    for (auto [it, end] = req.equal_range(http::field::transfer_encoding); it != end;
         ++it, first = false) {
      if (!first) codings += ", ";
      codings.append(it->value().data(), it->value().size());
    }
    if (auto why = check_transfer_encoding(codings); !why.empty()) return why;
    if (!p.chunked()) return "Transfer-Encoding must be exactly \"chunked\" (RFC 9112 §6.1)";
    // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
    if (req.version() == 10) return "Transfer-Encoding in an HTTP/1.0 request";
  }
  if (req.count(http::field::host) > 1) return "more than one Host header";
  // RFC 9110 §10.1.1: 100-continue is the only expectation defined; another one the proxy could
  // not meet, and two Expect fields could be read differently by the upstream.
  if (const auto n = req.count(http::field::expect); n > 1) {
    return "more than one Expect header";
  } else if (n == 1 && !beast::iequals(req[http::field::expect], "100-continue")) {
    return "unsupported Expect (only 100-continue)";
  }
  if (req.version() != 10 && req.version() != 11) return "only HTTP/1.0 and HTTP/1.1 are supported";
  return {};
}

}  // namespace sbx::proxy::detail
