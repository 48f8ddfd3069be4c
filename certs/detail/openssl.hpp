// Private to certs/: owning handles for the OpenSSL objects used here, OpenSSL error text, and the
// host-name normalisation shared by the cache, the minting and the SNI check.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certs/authority.hpp"

namespace sbx::certs::detail {

template <auto free_function>
struct openssl_deleter {
  template <class T>
  void operator()(T* p) const noexcept {
    free_function(p);
  }
};

using bio_ptr = std::unique_ptr<BIO, openssl_deleter<BIO_free_all>>;
using bignum_ptr = std::unique_ptr<BIGNUM, openssl_deleter<BN_free>>;
using x509_extension_ptr = std::unique_ptr<X509_EXTENSION, openssl_deleter<X509_EXTENSION_free>>;
using authority_keyid_ptr = std::unique_ptr<AUTHORITY_KEYID, openssl_deleter<AUTHORITY_KEYID_free>>;
using general_names_ptr = std::unique_ptr<GENERAL_NAMES, openssl_deleter<GENERAL_NAMES_free>>;
using general_name_ptr = std::unique_ptr<GENERAL_NAME, openssl_deleter<GENERAL_NAME_free>>;
using ssl_session_ptr = std::unique_ptr<SSL_SESSION, openssl_deleter<SSL_SESSION_free>>;

// Drains OpenSSL's thread-local error queue into one line ("error:...; error:..."), so that a
// stale error never leaks into the next operation's report.
[[nodiscard]] std::string openssl_errors();

// Forgets the errors of a failure that is reported by other means.
void discard_openssl_errors() noexcept;

// Throws certs_error("<what>: <openssl errors>").
[[noreturn]] void throw_openssl(std::string_view what);

// A random positive 128-bit serial number (RFC 5280 section 4.1.2.2 allows up to 20 octets).
void set_random_serial(X509* cert);

// DNS names are at most 253 characters (RFC 1035 section 2.3.4) and an IPv6 literal is shorter.
inline constexpr std::size_t max_host_length = 253;

// A host reduced to its canonical form in a caller's buffer (no allocation): lower-case, without a
// trailing dot, without IPv6 brackets. nullopt when the result is empty or too long.
using host_buffer = std::array<char, max_host_length>;
[[nodiscard]] std::optional<std::string_view> normalize_host(std::string_view host,
                                                             host_buffer& buffer) noexcept;

// host for a log line or an error message: at most 256 characters, control and non-ASCII bytes
// shown as '?', so a hostile CONNECT target cannot forge log lines.
[[nodiscard]] std::string printable(std::string_view host);

enum class host_kind { dns_name, ipv4, ipv6, invalid };
// Classifies a normalised host. A DNS name here is letters, digits, '-', '_' and dots between
// non-empty labels of at most 63 characters; '*' and everything else are invalid.
[[nodiscard]] host_kind classify_host(std::string_view normalized) noexcept;

}  // namespace sbx::certs::detail
