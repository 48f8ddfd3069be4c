// What every session shares: the current settings, rules and sandbox identities (each an immutable
// snapshot swapped atomically on reload), the decision log, counters and connection caps.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "config/config.hpp"
#include "policy/rule.hpp"
#include "policy/store/decision_log.hpp"
#include "proxy/metrics.hpp"

namespace sbx::proxy::detail {

struct sandbox_directory {
  std::unordered_map<std::string, std::string> token_hashes;  // name -> hex SHA-256
  // Source addresses bound to sandboxes (sbx sandbox add --source). policy.db refuses overlaps,
  // so at most one matches; the longest prefix wins anyway.
  std::vector<std::pair<policy::ip_network, std::string>> sources;

  // The sandbox whose source contains `a`, or nullptr.
  [[nodiscard]] const std::string* bound_sandbox(const policy::ip_address& a) const {
    const std::string* found = nullptr;
    int best = -1;
    for (const auto& [net, name] : sources) {
      if (net.prefix > best && net.contains(a)) {
        found = &name;
        best = net.prefix;
      }
    }
    return found;
  }
};

// Counts open client connections per key against a cap: per sandbox ("" = no sandbox), and per
// client address (its text form).
class connection_limiter {
 public:
  [[nodiscard]] bool try_acquire(const std::string& sandbox, std::size_t cap) {
    std::lock_guard lock(mutex_);
    auto& n = counts_[sandbox];
    if (n >= cap) return false;
    ++n;
    return true;
  }
  void release(const std::string& sandbox) {
    std::lock_guard lock(mutex_);
    auto it = counts_.find(sandbox);
    if (it != counts_.end() && --it->second == 0) counts_.erase(it);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, std::size_t> counts_;
};

// One slot of a connection_limiter, given back when the connection ends.
class limiter_slot {
 public:
  limiter_slot() = default;
  limiter_slot(connection_limiter& owner, std::string key) : owner_(&owner), key_(std::move(key)) {}
  limiter_slot(limiter_slot&& other) noexcept
      : owner_(std::exchange(other.owner_, nullptr)), key_(std::move(other.key_)) {}
  limiter_slot& operator=(limiter_slot&& other) noexcept {
    if (this != &other) {
      release();
      owner_ = std::exchange(other.owner_, nullptr);
      key_ = std::move(other.key_);
    }
    return *this;
  }
  limiter_slot(const limiter_slot&) = delete;
  limiter_slot& operator=(const limiter_slot&) = delete;
  ~limiter_slot() { release(); }

 private:
  void release() {
    if (owner_ != nullptr) owner_->release(key_);
    owner_ = nullptr;
  }
  connection_limiter* owner_ = nullptr;
  std::string key_;
};

class interception;  // proxy/detail/intercept.hpp

struct proxy_state {
  std::atomic<std::shared_ptr<const config::settings>> settings;
  std::atomic<std::shared_ptr<const policy::rule_set>> rules;
  std::atomic<std::shared_ptr<const sandbox_directory>> sandboxes;
  store::decision_log* log = nullptr;
  metrics counters;
  connection_limiter per_sandbox;
  connection_limiter per_client;  // by client address, taken at accept
  std::atomic<bool> draining{false};
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::string listen_address;
  interception* intercept = nullptr;  // null: every allowed CONNECT is a blind tunnel
};

}  // namespace sbx::proxy::detail
