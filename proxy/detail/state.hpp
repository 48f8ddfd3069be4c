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

#include "config/config.hpp"
#include "policy/rule.hpp"
#include "policy/store/decision_log.hpp"
#include "proxy/metrics.hpp"

namespace sbx::proxy::detail {

struct sandbox_directory {
  std::unordered_map<std::string, std::string> token_hashes;  // name -> hex SHA-256
};

// Counts open client connections per sandbox ("" = no sandbox) against a cap.
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

class interception;  // proxy/detail/intercept.hpp

struct proxy_state {
  std::atomic<std::shared_ptr<const config::settings>> settings;
  std::atomic<std::shared_ptr<const policy::rule_set>> rules;
  std::atomic<std::shared_ptr<const sandbox_directory>> sandboxes;
  store::decision_log* log = nullptr;
  metrics counters;
  connection_limiter per_sandbox;
  bool require_auth = false;
  std::atomic<bool> draining{false};
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();
  std::string listen_address;
  interception* intercept = nullptr;  // null: every allowed CONNECT is a blind tunnel
};

}  // namespace sbx::proxy::detail
