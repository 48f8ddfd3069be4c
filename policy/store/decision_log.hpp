// Writes decision rows to policy.db from a background thread, in batched transactions, so no I/O
// thread ever waits on SQLite.
//
// The queue is bounded: when it is full, record() blocks until the writer has made room. That is
// back-pressure by design: under overload the proxy slows down instead of losing decisions.
//
//   sbx::store::decision_log log(home / "policy.db", {.capacity = 65536});
//   log.record(std::move(row));   // cheap: a move into the queue
//   log.flush();                  // wait until everything recorded so far is committed
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

#include "policy/store/state_db.hpp"

namespace sbx::store {

struct decision_log_options {
  std::size_t capacity = 65536;  // rows waiting at most before record() blocks
  std::size_t max_batch = 4096;  // rows per transaction
  int retention_days = 30;       // rows older than this are pruned (hourly and at start); 0 = keep
  // How long one write waits for another process's lock before it counts as a failed write and
  // is retried 100 ms later.
  std::chrono::milliseconds busy_timeout{5000};
};

class decision_log {
 public:
  decision_log(const std::filesystem::path& db_file, decision_log_options options);
  ~decision_log();  // flushes and stops the writer
  decision_log(const decision_log&) = delete;
  decision_log& operator=(const decision_log&) = delete;

  void record(decision_row row);
  void flush();  // returns once every row recorded before the call is committed
  void stop();   // flush, then stop the writer thread; record() after stop() is ignored

  [[nodiscard]] std::size_t queue_depth() const;
  [[nodiscard]] std::uint64_t rows_written() const;
  [[nodiscard]] std::uint64_t write_errors() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace sbx::store
