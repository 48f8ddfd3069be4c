// The two OpenSSL contexts of the proxy, each made once per process and shared by every
// connection:
// - server_tls_context: the sandbox-facing side of an intercepted CONNECT. Presents a leaf minted
//   for the CONNECT target, refuses a ClientHello whose SNI names another host, speaks http/1.1.
// - upstream_tls_context: the re-originated connection to the real host, verified against the
//   system store (plus an optional extra bundle) and the host name, with session resumption.
//
//   sbx::certs::server_tls_context server{sbx::certs::certificate_authority::load_or_create(dir)};
//   boost::asio::ssl::context asio_server{server.new_reference()};  // asio frees its reference
//   // per intercepted CONNECT, before the handshake (the string outlives the handshake):
//   sbx::certs::set_intercept_host(stream.native_handle(), &connect_host);
//
//   sbx::certs::upstream_tls_context upstream{settings.upstream_ca_file};
//   boost::asio::ssl::context asio_upstream{upstream.new_reference()};
//   if (!sbx::certs::prepare_upstream_ssl(up_stream.native_handle(), host, port)) { /* 502 */ }
//   // after a failed handshake: sbx::certs::verify_error_text(up_stream.native_handle())
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "certs/authority.hpp"
#include "certs/leaf_cache.hpp"

namespace sbx::certs {

struct ssl_ctx_deleter {
  void operator()(ssl_ctx_st* ctx) const noexcept;
};
using ssl_ctx_ptr = std::unique_ptr<ssl_ctx_st, ssl_ctx_deleter>;

// TLS >= 1.2, ALPN "http/1.1" only (a client without ALPN is let through), no session
// resumption: every handshake runs the leaf selection and the SNI check, and a CA rotation takes
// effect on the next connection. The leaf cache lives as long as the SSL_CTX itself, so a
// reference held elsewhere (an asio::ssl::context) stays usable after this object is gone.
class server_tls_context {
 public:
  explicit server_tls_context(certificate_authority ca,
                              std::size_t leaf_cache_capacity = leaf_cache::default_capacity);
  ~server_tls_context();
  server_tls_context(const server_tls_context&) = delete;
  server_tls_context& operator=(const server_tls_context&) = delete;

  // Borrowed: valid while this object (or another reference to the SSL_CTX) lives.
  [[nodiscard]] ssl_ctx_st* native() const noexcept { return ctx_.get(); }
  // native() with one more reference, for an owner that frees it:
  // boost::asio::ssl::context{ctx.new_reference()}.
  [[nodiscard]] ssl_ctx_st* new_reference() const;

  // Handshakes that start after this returns present leaves of the new CA; old leaves are dropped.
  void rotate(certificate_authority ca);
  [[nodiscard]] std::shared_ptr<const certificate_authority> authority() const;
  [[nodiscard]] leaf_cache& leaves() noexcept;

 private:
  ssl_ctx_ptr ctx_;
  std::shared_ptr<leaf_cache> cache_;  // also owned by ctx_ (ex_data), see above
};

// Attaches the host a server-side SSL must present a certificate for (the CONNECT target: a name,
// an IPv4 literal or an IPv6 literal with or without brackets). Stores the pointer only: the
// caller keeps the string alive until the handshake is done. Without it the handshake fails.
void set_intercept_host(ssl_st* ssl, const std::string* host);

// Why the server context refused a handshake ("client SNI names another host than the CONNECT
// target", ...) for the proxy's log and decision reason; empty when it did not refuse.
[[nodiscard]] std::string_view intercept_error(const ssl_st* ssl) noexcept;

// Verifies the peer (SSL_VERIFY_PEER) against the default verify paths plus, when given, an extra
// PEM bundle; TLS >= 1.2. Like curl, a certificate in the trust store is a trust anchor even when
// it is not self-signed (X509_V_FLAG_PARTIAL_CHAIN), so the extra bundle may hold an intermediate.
// Sessions are kept per host:port (at most session_capacity of them) and offered again by
// prepare_upstream_ssl. Build a new one when upstream_ca_file changes.
class upstream_tls_context {
 public:
  static constexpr std::size_t default_session_capacity = 1024;

  // extra_ca_file empty = system store only. Throws certs_error naming the file when it cannot be
  // read or holds no certificate.
  explicit upstream_tls_context(const std::filesystem::path& extra_ca_file = {},
                                std::size_t session_capacity = default_session_capacity);
  ~upstream_tls_context();
  upstream_tls_context(const upstream_tls_context&) = delete;
  upstream_tls_context& operator=(const upstream_tls_context&) = delete;

  [[nodiscard]] ssl_ctx_st* native() const noexcept { return ctx_.get(); }
  [[nodiscard]] ssl_ctx_st* new_reference() const;
  [[nodiscard]] const std::filesystem::path& extra_ca_file() const noexcept {
    return extra_ca_file_;
  }
  [[nodiscard]] std::size_t cached_sessions() const;

 private:
  ssl_ctx_ptr ctx_;
  std::filesystem::path extra_ca_file_;
};

// Prepares a client SSL made from an upstream_tls_context for host: SNI (DNS names only, never an
// IP literal, per RFC 6066 section 3), the name or address the certificate must match, and a
// cached session for host:port if there is one. False when host is empty or OpenSSL refuses it;
// then do not connect.
[[nodiscard]] bool prepare_upstream_ssl(ssl_st* ssl, std::string_view host,
                                        std::uint16_t port = 443);

// The certificate verification result in words, for logs: "ok", "certificate has expired",
// "hostname mismatch", "unable to get local issuer certificate", ...
[[nodiscard]] std::string verify_error_text(const ssl_st* ssl);

}  // namespace sbx::certs
