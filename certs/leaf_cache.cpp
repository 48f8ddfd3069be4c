#include "certs/leaf_cache.hpp"

#include <atomic>
#include <exception>
#include <future>
#include <list>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "certs/detail/openssl.hpp"

namespace sbx::certs {

using leaf_ptr = std::shared_ptr<const leaf_certificate>;

struct leaf_cache::state {
  struct entry {
    std::string host;  // normalised; index_ keys are views of it (list nodes never move)
    leaf_ptr leaf;     // null while the first caller mints it
    std::shared_future<leaf_ptr> pending;
    // Tells a finishing mint whether its entry survived clear(), set_issuer() and eviction.
    std::uint64_t ticket = 0;
  };

  state(std::shared_ptr<const leaf_issuer> i, std::size_t c) : issuer(std::move(i)), capacity(c) {}

  // Under mutex. Returns the entry for key if it is still the one made with ticket.
  std::list<entry>::iterator find_ticket(std::string_view key, std::uint64_t ticket) {
    auto it = index.find(key);
    if (it == index.end() || it->second->ticket != ticket) return lru.end();
    return it->second;
  }

  void erase(std::list<entry>::iterator it) {
    index.erase(std::string_view{it->host});
    lru.erase(it);
  }

  mutable std::mutex mutex;
  std::list<entry> lru;  // most recently used first
  std::unordered_map<std::string_view, std::list<entry>::iterator> index;
  std::shared_ptr<const leaf_issuer> issuer;
  const std::size_t capacity;
  std::uint64_t next_ticket = 0;
  std::atomic<std::uint64_t> mints{0};
  std::atomic<std::uint64_t> hits{0};
};

leaf_cache::leaf_cache(std::shared_ptr<const leaf_issuer> issuer, std::size_t capacity) {
  if (!issuer) throw certs_error("leaf_cache needs a leaf_issuer");
  if (capacity == 0) throw certs_error("leaf_cache capacity must be at least 1");
  state_ = std::make_unique<state>(std::move(issuer), capacity);
}

leaf_cache::~leaf_cache() = default;

leaf_ptr leaf_cache::get(std::string_view host) {
  detail::host_buffer buffer;
  auto key = detail::normalize_host(host, buffer);
  if (!key) {
    throw certs_error(
        fmt::format("cannot make a certificate for \"{}\": not a host name or an "
                    "IP address",
                    detail::printable(host)));
  }
  state& s = *state_;
  std::unique_lock lock{s.mutex};
  if (auto found = s.index.find(*key); found != s.index.end()) {
    auto it = found->second;
    s.lru.splice(s.lru.begin(), s.lru, it);
    s.hits.fetch_add(1, std::memory_order_relaxed);
    if (it->leaf) return it->leaf;
    std::shared_future<leaf_ptr> pending = it->pending;
    lock.unlock();
    return pending.get();
  }

  // Miss: publish a pending entry first, so that concurrent callers for this host wait for this
  // mint instead of starting their own.
  std::promise<leaf_ptr> promise;
  std::uint64_t ticket = ++s.next_ticket;
  s.lru.push_front(state::entry{std::string{*key}, nullptr, promise.get_future().share(), ticket});
  s.index.emplace(std::string_view{s.lru.front().host}, s.lru.begin());
  while (s.lru.size() > s.capacity)
    s.erase(std::prev(s.lru.end()));
  std::shared_ptr<const leaf_issuer> issuer = s.issuer;
  lock.unlock();

  s.mints.fetch_add(1, std::memory_order_relaxed);
  leaf_ptr leaf;
  try {
    leaf = std::make_shared<const leaf_certificate>(leaf_certificate{issuer->mint(*key), issuer});
  } catch (...) {
    promise.set_exception(std::current_exception());
    lock.lock();
    if (auto it = s.find_ticket(*key, ticket); it != s.lru.end()) s.erase(it);
    throw;
  }
  promise.set_value(leaf);
  lock.lock();
  if (auto it = s.find_ticket(*key, ticket); it != s.lru.end()) {
    it->leaf = leaf;
    it->pending = {};
  }
  return leaf;
}

void leaf_cache::clear() {
  std::lock_guard lock{state_->mutex};
  state_->index.clear();
  state_->lru.clear();
}

void leaf_cache::set_issuer(std::shared_ptr<const leaf_issuer> issuer) {
  if (!issuer) throw certs_error("leaf_cache needs a leaf_issuer");
  std::lock_guard lock{state_->mutex};
  state_->issuer = std::move(issuer);
  state_->index.clear();
  state_->lru.clear();
}

std::shared_ptr<const leaf_issuer> leaf_cache::issuer() const {
  std::lock_guard lock{state_->mutex};
  return state_->issuer;
}

std::uint64_t leaf_cache::mints() const noexcept {
  return state_->mints.load(std::memory_order_relaxed);
}

std::uint64_t leaf_cache::hits() const noexcept {
  return state_->hits.load(std::memory_order_relaxed);
}

std::size_t leaf_cache::size() const {
  std::lock_guard lock{state_->mutex};
  return state_->lru.size();
}

std::size_t leaf_cache::capacity() const noexcept {
  return state_->capacity;
}

}  // namespace sbx::certs
