// Writes decision rows to policy.db from a background thread, in batched transactions, so no I/O
// thread ever waits on SQLite.
//
// The queue is bounded: under overload the proxy slows down instead of losing decisions. An event
// loop must not block, so it uses try_record(), and when that refuses asks to be told when there
// is room (notify_when_space) and tries again then; record() blocks and is for plain threads
// (CLI, tests).
//
//   sbx::store::decision_log log(home / "policy.db", {.capacity = 65536});
//   if (!log.try_record(std::move(row)))          // full: `row` is left as it was
//     log.notify_when_space([&] { post_retry(); });  // runs on the writer thread: only post
//   log.flush();  // wait until everything recorded so far is committed
//
// Durability: a row is on disk once its batch commits. The writer lingers up to 25 ms to group
// rows into one transaction, so a kill -9 can lose the rows of that last window; stop() (SIGTERM)
// writes everything queued first.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>

#include "policy/store/state_db.hpp"

namespace sbx::store {

struct decision_log_options {
  std::size_t capacity = 65536;  // rows waiting at most; then try_record() refuses
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

  // Blocks the calling thread while the queue is full. Never call it from an I/O thread.
  void record(decision_row row);
  // Queues the row (moving from it) and returns true, or returns false at once when the queue is
  // full, leaving `row` untouched so the caller can try again. After stop() it returns true and
  // drops the row (like record()), so no caller waits for a writer that is gone. Callable from any
  // thread.
  [[nodiscard]] bool try_record(decision_row&& row);
  // Calls `on_space` once when the queue has room: at once on the calling thread if it has room
  // now, else on the writer thread after it takes the next batch out of the queue (or when it
  // stops). It runs with no lock held but on a thread that must get back to writing: it should
  // only post work elsewhere. Waiters are not told in any particular order.
  void notify_when_space(std::function<void()> on_space);
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
