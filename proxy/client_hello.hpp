// Reads the server name (SNI, RFC 6066 §3) out of the first bytes a client sends into a CONNECT
// tunnel, so the proxy can check it before anything reaches the upstream (a ClientHello naming a
// denied host behind a CONNECT to an allowed one is domain fronting).
//
// A pure function over the bytes received so far; call it again with more bytes while it answers
// need_more. It handles a record split across reads, a ClientHello spread over several TLS records
// (RFC 8446 §5.1), and bounds every length it reads.
//
//   auto r = sbx::proxy::parse_client_hello(bytes);
//   if (r.state == client_hello_result::status::ok && r.sni) decide(*r.sni);
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace sbx::proxy {

// The ClientHello handshake message, its 4-byte header included. Real ones are 200 B - 2 KiB
// (a post-quantum key share adds ~1.2 KiB); 16 KiB leaves room for large padding and PSK lists.
inline constexpr std::size_t client_hello_max_message = 16 * 1024;
// Records the message may be spread over: TLS allows tiny fragments, each costing a 5-byte header.
inline constexpr std::size_t client_hello_max_records = 32;
inline constexpr std::size_t tls_record_header_size = 5;
// need_more is never answered for more bytes than this (message + its record headers).
inline constexpr std::size_t client_hello_max_bytes =
    client_hello_max_message + client_hello_max_records * tls_record_header_size;

struct client_hello_result {
  enum class status {
    need_more,  // the bytes so far are the start of a ClientHello: read more
    not_tls,    // the first bytes are not a TLS handshake record (relay them as they are)
    malformed,  // claims to be TLS (0x16 0x03) but is not a ClientHello we can read: refuse
    ok,         // a complete ClientHello
  };
  status state = status::need_more;
  // ok: the host_name, lower-case, without a trailing dot; nullopt when the ClientHello has no
  // server_name extension.
  std::optional<std::string> sni;
  std::string reason;  // malformed: why, for the decision log
};

[[nodiscard]] client_hello_result parse_client_hello(std::string_view bytes);

}  // namespace sbx::proxy
