#include "policy/store/decision_log.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace sbx::store {

namespace {

using namespace std::chrono;

constexpr milliseconds retry_delay{100};
constexpr hours prune_interval{1};
constexpr milliseconds group_commit_linger{25};
constexpr std::size_t group_commit_rows = 256;
// A failing write is retried for as long as the proxy runs (nothing is dropped), but shutdown
// must end: after this long failing while stopping, the remaining rows are given up and logged.
constexpr seconds give_up_after_stop{30};
// While writes keep failing, repeat the warning this often rather than once per retry.
constexpr seconds failure_reminder_interval{30};

}  // namespace

struct decision_log::impl {
  impl(const std::filesystem::path& file, decision_log_options opts)
      : options(opts), db(state_db::open(file)) {
    options.capacity = std::max<std::size_t>(options.capacity, 1);
    options.max_batch = std::max<std::size_t>(options.max_batch, 1);
    db.set_busy_timeout(options.busy_timeout);
    writer = std::thread([this] { run(); });
  }

  void run();
  // Queues `row` if there is room (false: full, `row` untouched); the caller holds `mutex`.
  // `wake_writer` says whether the writer must be notified once the lock is released.
  bool push_locked(decision_row&& row, bool& wake_writer);
  void tell_space_waiters();
  void write(const std::vector<decision_row>& batch);
  void prune();
  bool stop_requested() {
    std::lock_guard lock(mutex);
    return stopping;
  }

  decision_log_options options;
  state_db db;  // used only by the writer thread once it runs

  mutable std::mutex mutex;
  std::condition_variable work_ready;  // the writer waits: rows queued, or stop requested
  std::condition_variable progress;    // producers wait for room, flush() for commits
  std::deque<decision_row> queue;
  std::vector<std::function<void()>> space_waiters;  // notify_when_space() callbacks
  std::uint64_t recorded = 0;                        // rows accepted by record()
  std::uint64_t settled = 0;  // rows committed (or given up at shutdown); flush() waits on it
  bool stopping = false;
  bool writer_done = false;

  std::atomic<std::uint64_t> written{0};
  std::atomic<std::uint64_t> errors{0};

  std::mutex stop_mutex;  // serialises concurrent stop() calls around the join
  std::thread writer;
};

void decision_log::impl::run() {
  std::vector<decision_row> batch;
  batch.reserve(options.max_batch);
  auto next_prune = steady_clock::now();
  for (;;) {
    if (options.retention_days > 0 && steady_clock::now() >= next_prune) {
      prune();
      next_prune = steady_clock::now() + prune_interval;
    }
    {
      std::unique_lock lock(mutex);
      auto ready = [&] { return !queue.empty() || stopping; };
      if (options.retention_days > 0) {
        work_ready.wait_until(lock, next_prune, ready);
      } else {
        work_ready.wait(lock, ready);
      }
      if (queue.empty()) {
        if (!stopping) continue;  // time to prune
        writer_done = true;
        break;
      }
      // Group commit: under moderate load rows arrive one by one, and a transaction per row
      // costs a WAL append each. Lingering a few milliseconds lets them share one; a full
      // enough queue or a stop ends the linger at once, so rows are never held longer.
      if (!stopping && queue.size() < group_commit_rows) {
        work_ready.wait_for(lock, group_commit_linger,
                            [&] { return stopping || queue.size() >= group_commit_rows; });
      }
      // Whatever queued up while the last batch was written goes into the next transaction:
      // batches grow with the load, so the cost per row falls exactly when it matters.
      auto n = std::min(queue.size(), options.max_batch);
      std::move(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n),
                std::back_inserter(batch));
      queue.erase(queue.begin(), queue.begin() + static_cast<std::ptrdiff_t>(n));
    }
    progress.notify_all();
    // Room was made: asynchronous producers retry now, while this batch is written (there is
    // room for them in the queue, and their rows go into the next transaction).
    tell_space_waiters();
    write(batch);
    {
      std::lock_guard lock(mutex);
      settled += batch.size();
    }
    progress.notify_all();
    batch.clear();
  }
  progress.notify_all();
  // Stopped: try_record() now accepts (and ignores) everything, so nobody may go on waiting.
  tell_space_waiters();
}

void decision_log::impl::tell_space_waiters() {
  std::vector<std::function<void()>> waiters;
  {
    std::lock_guard lock(mutex);
    waiters.swap(space_waiters);
  }
  for (auto& w : waiters)
    w();
}

bool decision_log::impl::push_locked(decision_row&& row, bool& wake_writer) {
  // While stop() drains, rows are still taken (the writer empties the queue before it exits);
  // once it is gone, they are ignored.
  if (writer_done) {
    wake_writer = false;
    return true;
  }
  if (queue.size() >= options.capacity) return false;
  if (row.ts.empty()) row.ts = now_rfc3339();
  const bool was_empty = queue.empty();
  queue.push_back(std::move(row));
  ++recorded;
  // The writer sleeps on an empty queue, or lingers for a group commit until enough rows wait.
  wake_writer = was_empty || queue.size() == group_commit_rows;
  return true;
}

void decision_log::impl::write(const std::vector<decision_row>& batch) {
  std::uint64_t failures = 0;
  steady_clock::time_point last_warning;
  std::optional<steady_clock::time_point> stop_seen;
  for (;;) {
    try {
      db.insert_decisions(batch);
      written += batch.size();
      if (failures > 0) {
        spdlog::info("decision log: writing works again after {} failed attempts", failures);
      }
      return;
    } catch (const store_error& e) {
      ++errors;
      ++failures;
      auto now = steady_clock::now();
      if (failures == 1 || now - last_warning >= failure_reminder_interval) {
        spdlog::warn("decision log: cannot write {} rows (attempt {}), retrying every {} ms: {}",
                     batch.size(), failures, retry_delay.count(), e.what());
        last_warning = now;
      }
      if (stop_requested()) {
        if (!stop_seen) stop_seen = now;
        if (now - *stop_seen >= give_up_after_stop) {
          spdlog::error("decision log: shutting down; {} rows could not be written: {}",
                        batch.size(), e.what());
          return;
        }
      }
    }
    std::this_thread::sleep_for(retry_delay);
  }
}

void decision_log::impl::prune() {
  try {
    auto cutoff = parse_since(fmt::format("{}d", options.retention_days));
    if (int n = db.prune_decisions_before(cutoff); n > 0) {
      spdlog::info("decision log: pruned {} rows older than {} days", n, options.retention_days);
    }
  } catch (const store_error& e) {
    spdlog::warn("decision log: pruning failed, trying again in an hour: {}", e.what());
  }
}

decision_log::decision_log(const std::filesystem::path& db_file, decision_log_options options)
    : impl_(std::make_unique<impl>(db_file, options)) {}

decision_log::~decision_log() {
  stop();
}

void decision_log::record(decision_row row) {
  auto& s = *impl_;
  std::unique_lock lock(s.mutex);
  // Back-pressure: a full queue blocks the caller instead of dropping its row.
  s.progress.wait(lock, [&] { return s.queue.size() < s.options.capacity || s.writer_done; });
  bool wake_writer = false;
  (void)s.push_locked(std::move(row), wake_writer);
  lock.unlock();
  if (wake_writer) s.work_ready.notify_one();
}

bool decision_log::try_record(decision_row&& row) {
  auto& s = *impl_;
  std::unique_lock lock(s.mutex);
  bool wake_writer = false;
  if (!s.push_locked(std::move(row), wake_writer)) return false;
  lock.unlock();
  if (wake_writer) s.work_ready.notify_one();
  return true;
}

void decision_log::notify_when_space(std::function<void()> on_space) {
  auto& s = *impl_;
  {
    std::lock_guard lock(s.mutex);
    // Checked under the lock that try_record() and the writer take, so a batch taken between a
    // refused try_record() and this call is not missed: then there is room, and we say so now.
    const bool full = s.queue.size() >= s.options.capacity && !s.writer_done;
    if (full) {
      s.space_waiters.push_back(std::move(on_space));
      return;
    }
  }
  on_space();
}

void decision_log::flush() {
  auto& s = *impl_;
  std::unique_lock lock(s.mutex);
  auto target = s.recorded;
  s.progress.wait(lock, [&] { return s.settled >= target || s.writer_done; });
}

void decision_log::stop() {
  auto& s = *impl_;
  std::lock_guard stop_lock(s.stop_mutex);
  {
    std::lock_guard lock(s.mutex);
    s.stopping = true;
  }
  s.work_ready.notify_one();
  // The writer drains the queue before it exits, so joining it is the flush.
  if (s.writer.joinable()) s.writer.join();
}

std::size_t decision_log::queue_depth() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->queue.size();
}

std::uint64_t decision_log::rows_written() const {
  return impl_->written.load();
}

std::uint64_t decision_log::write_errors() const {
  return impl_->errors.load();
}

}  // namespace sbx::store
