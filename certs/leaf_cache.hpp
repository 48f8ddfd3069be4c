// A thread-safe LRU cache of minted leaves, keyed by host (case-insensitive, trailing dot and IPv6
// brackets ignored). Concurrent first requests for one host mint once: the others wait for that
// result. A cache hit takes one lock and allocates nothing.
//
//   sbx::certs::leaf_cache cache{std::make_shared<const sbx::certs::leaf_issuer>(ca)};
//   auto leaf = cache.get("api.github.com");  // leaf->cert, leaf->issuer->leaf_key()
//   cache.set_issuer(new_issuer);             // after a CA rotation: old leaves are dropped
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>

#include "certs/leaf_issuer.hpp"

namespace sbx::certs {

// A leaf together with the issuer that minted it, so that the leaf, its key and the CA in its
// chain always belong together, even while a rotation swaps the issuer.
struct leaf_certificate {
  x509_ptr cert;
  std::shared_ptr<const leaf_issuer> issuer;
};

class leaf_cache {
 public:
  static constexpr std::size_t default_capacity = 4096;

  explicit leaf_cache(std::shared_ptr<const leaf_issuer> issuer,
                      std::size_t capacity = default_capacity);
  ~leaf_cache();
  leaf_cache(const leaf_cache&) = delete;
  leaf_cache& operator=(const leaf_cache&) = delete;

  // The cached leaf for host, minting it on a miss. Throws certs_error for a host that cannot be
  // minted (see leaf_issuer::mint); a failed mint is not cached, and every caller that waited for
  // it gets the same error.
  [[nodiscard]] std::shared_ptr<const leaf_certificate> get(std::string_view host);

  // Drops every leaf. Mints still in flight finish for their callers but are not cached.
  void clear();
  // Swaps the issuer and drops every leaf in one step: no leaf of the old issuer is handed out by
  // a get() that starts after this returns.
  void set_issuer(std::shared_ptr<const leaf_issuer> issuer);
  [[nodiscard]] std::shared_ptr<const leaf_issuer> issuer() const;

  // Leaves minted by this cache, and get() calls served without minting (including those that
  // waited for another caller's mint of the same host).
  [[nodiscard]] std::uint64_t mints() const noexcept;
  [[nodiscard]] std::uint64_t hits() const noexcept;
  [[nodiscard]] std::size_t size() const;
  [[nodiscard]] std::size_t capacity() const noexcept;

 private:
  struct state;
  std::unique_ptr<state> state_;
};

}  // namespace sbx::certs
