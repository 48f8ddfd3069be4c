// Mints the leaf certificates that the proxy presents to a sandbox for an intercepted host. All
// leaves share one EC P-256 key generated when the issuer is made, so minting costs a copy of a
// prepared certificate and one signature, and no key generation.
//
//   auto issuer = std::make_shared<const sbx::certs::leaf_issuer>(ca);
//   sbx::certs::x509_ptr leaf = issuer->mint("api.github.com");  // or "127.0.0.1", "::1"
#pragma once

#include <chrono>
#include <memory>
#include <string_view>

#include "certs/authority.hpp"

namespace sbx::certs {

struct chain_deleter {
  void operator()(stack_st_X509* chain) const noexcept;
};
using chain_ptr = std::unique_ptr<stack_st_X509, chain_deleter>;

// Immutable once built; mint() may be called from any thread.
class leaf_issuer {
 public:
  // Leaves live at most this long, and never beyond the CA's own notAfter.
  static constexpr std::chrono::hours max_leaf_lifetime{24 * 90};
  // Backdated so that a sandbox whose clock runs a little behind still accepts a fresh leaf.
  static constexpr std::chrono::hours backdate{1};

  explicit leaf_issuer(std::shared_ptr<const certificate_authority> ca);
  ~leaf_issuer();
  leaf_issuer(const leaf_issuer&) = delete;
  leaf_issuer& operator=(const leaf_issuer&) = delete;

  // A leaf for `host`: a DNS name (any case, a trailing dot ignored) or an IPv4/IPv6 literal
  // (brackets allowed). SAN DNS:host or IP:addr, CN=host when it fits in 64 characters, EKU
  // serverAuth, a fresh random 128-bit serial, signed ECDSA-SHA256 by the CA. Throws certs_error
  // for a host that is not a plain name or address (wildcards included: "*" is never minted).
  [[nodiscard]] x509_ptr mint(std::string_view host) const;

  [[nodiscard]] const certificate_authority& authority() const noexcept { return *ca_; }
  [[nodiscard]] const std::shared_ptr<const certificate_authority>& authority_ptr() const noexcept {
    return ca_;
  }
  // The key of every leaf this issuer mints.
  [[nodiscard]] evp_pkey_st* leaf_key() const noexcept { return leaf_key_.get(); }
  // The chain sent after the leaf: the CA certificate.
  [[nodiscard]] stack_st_X509* chain() const noexcept { return chain_.get(); }

 private:
  std::shared_ptr<const certificate_authority> ca_;
  pkey_ptr leaf_key_;
  chain_ptr chain_;
  // What every leaf shares (issuer, key, fixed extensions), copied for each mint: OpenSSL 3.0
  // encodes and decodes the public key in X509_set_pubkey, which would cost twice as much.
  x509_ptr prototype_;
};

}  // namespace sbx::certs
