#include "policy/store/decision_log.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "tests/store/test_support.hpp"

namespace {

using namespace sbx::store;
using namespace std::chrono;
using sbx::store::test::raw_db;
using sbx::store::test::temp_dir;

// A realistic row: the writer's cost depends on the size of what it stores.
decision_row sample_row(int producer, int n) {
  decision_row row;
  row.sandbox = "dev";
  row.client = "127.0.0.1:53211";
  row.method = "GET";
  row.scheme = "https";
  row.host = "registry.npmjs.org";
  row.port = 443;
  row.path = fmt::format("/p{}/{}", producer, n);
  row.route = "intercept";
  row.decision = "allow";
  row.rule = "12";
  row.reason = "allowed by rule 12 (allow **.npmjs.org)";
  row.status = 200;
  row.bytes_up = 312;
  row.bytes_down = 48213;
  row.duration_ms = 35;
  return row;
}

std::int64_t count_rows(const std::filesystem::path& db) {
  raw_db raw(db);
  return raw.integer("SELECT count(*) FROM decisions");
}

// Polls instead of sleeping a fixed time: returns as soon as done() holds.
template <typename F>
bool eventually(F&& done, milliseconds limit = milliseconds{10'000}) {
  auto deadline = steady_clock::now() + limit;
  while (!done()) {
    if (steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds{5});
  }
  return true;
}

}  // namespace

TEST_CASE("decision_log: 4 producers x 50,000 rows through a 1,000-row queue lose nothing") {
  temp_dir dir;
  constexpr int producers = 4;
  constexpr int rows_each = 50'000;
  constexpr std::size_t capacity = 1'000;
  decision_log log(dir.db(), {.capacity = capacity});

  std::atomic<bool> producing{true};
  std::size_t deepest = 0;
  std::thread monitor([&] {
    while (producing) {
      deepest = std::max(deepest, log.queue_depth());
      std::this_thread::yield();
    }
  });

  auto start = steady_clock::now();
  std::vector<std::thread> threads;
  for (int p = 0; p < producers; ++p) {
    threads.emplace_back([&log, p] {
      for (int i = 0; i < rows_each; ++i)
        log.record(sample_row(p, i));
    });
  }
  for (auto& t : threads)
    t.join();
  log.flush();
  auto elapsed = duration<double>(steady_clock::now() - start).count();
  producing = false;
  monitor.join();

  constexpr std::int64_t total = std::int64_t{producers} * rows_each;
  CHECK(log.rows_written() == total);
  CHECK(log.write_errors() == 0);
  CHECK(log.queue_depth() == 0);
  CHECK(deepest <= capacity);
  CHECK(deepest > 0);
  raw_db raw(dir.db());
  CHECK(raw.integer("SELECT count(*) FROM decisions") == total);
  CHECK(raw.integer("SELECT count(DISTINCT path) FROM decisions") == total);
  MESSAGE(fmt::format("4 producers, capacity {}: {:.0f} rows/s ({} rows in {:.2f} s)", capacity,
                      total / elapsed, total, elapsed));
}

TEST_CASE("decision_log: sustained rate of one producer with default options") {
  temp_dir dir;
  constexpr int rows = 400'000;
  decision_log log(dir.db(), {});
  auto start = steady_clock::now();
  for (int i = 0; i < rows; ++i)
    log.record(sample_row(0, i));
  log.flush();
  auto elapsed = duration<double>(steady_clock::now() - start).count();
  CHECK(count_rows(dir.db()) == rows);
  MESSAGE(fmt::format("1 producer, default options: {:.0f} rows/s ({} rows in {:.2f} s)",
                      rows / elapsed, rows, elapsed));
}

TEST_CASE("decision_log: after flush() every recorded row is visible to another connection") {
  temp_dir dir;
  decision_log log(dir.db(), {});
  for (int i = 0; i < 10'000; ++i)
    log.record(sample_row(0, i));
  log.flush();
  CHECK(count_rows(dir.db()) == 10'000);

  // One row at a time: flush() has to wait for the writer even when it is idle.
  auto reader = state_db::open(dir.db());
  for (int i = 0; i < 20; ++i) {
    log.record(sample_row(1, i));
    log.flush();
    CHECK(reader.query_decisions({.after_id = 10'000 + i}).size() == 1);
  }
  CHECK(log.rows_written() == 10'020);
}

TEST_CASE("decision_log: readers are never blocked while the writer writes") {
  temp_dir dir;
  decision_log log(dir.db(), {.capacity = 4096, .max_batch = 4096});
  auto reader = state_db::open(dir.db());
  // Any lock wait makes a read fail at once: WAL readers must not need one.
  reader.set_busy_timeout(milliseconds{0});

  std::atomic<bool> done{false};
  std::thread producer([&] {
    for (int i = 0; i < 300'000; ++i)
      log.record(sample_row(0, i));
    done = true;
  });
  int reads = 0;
  std::vector<std::int64_t> newest_ids;
  std::string failure;
  while (!done) {
    try {
      auto newest = reader.query_decisions({.limit = 1});
      (void)reader.rules_version();
      if (!newest.empty()) newest_ids.push_back(newest.back().id);
      ++reads;
    } catch (const store_error& e) {
      failure = e.what();
      break;
    }
  }
  producer.join();
  log.flush();
  CHECK(failure.empty());
  CHECK(reads > 0);
  // The reader saw the table grow while the writer was busy.
  std::sort(newest_ids.begin(), newest_ids.end());
  newest_ids.erase(std::unique(newest_ids.begin(), newest_ids.end()), newest_ids.end());
  CHECK(newest_ids.size() >= 2);
  CHECK(count_rows(dir.db()) == 300'000);
}

TEST_CASE("decision_log: a failed write is retried, not dropped") {
  temp_dir dir;
  decision_log log(dir.db(), {.busy_timeout = milliseconds{20}});
  raw_db blocker(dir.db());
  blocker.exec("BEGIN IMMEDIATE");  // holds the write lock, as a stuck sqlite3 shell would
  for (int i = 0; i < 50; ++i)
    log.record(sample_row(0, i));
  bool failed = eventually([&] { return log.write_errors() >= 2; });
  CHECK(failed);
  CHECK(log.rows_written() == 0);
  blocker.exec("COMMIT");
  log.flush();
  CHECK(log.rows_written() == 50);
  CHECK(count_rows(dir.db()) == 50);
}

TEST_CASE("decision_log: stop() flushes, is idempotent, and later records are ignored") {
  temp_dir dir;
  {
    decision_log log(dir.db(), {});
    for (int i = 0; i < 1'000; ++i)
      log.record(sample_row(0, i));
    log.stop();
    CHECK(count_rows(dir.db()) == 1'000);
    log.stop();
    log.record(sample_row(0, 1'000));  // must neither block nor be written
    log.flush();
    CHECK(log.rows_written() == 1'000);
  }
  CHECK(count_rows(dir.db()) == 1'000);

  // The destructor alone also flushes.
  {
    decision_log log(dir.db(), {});
    for (int i = 0; i < 500; ++i)
      log.record(sample_row(1, i));
  }
  CHECK(count_rows(dir.db()) == 1'500);
}

TEST_CASE("decision_log: try_record refuses at once when full, and the writer tells waiters") {
  temp_dir dir;
  constexpr std::size_t capacity = 4;
  decision_log log(dir.db(), {.capacity = capacity, .busy_timeout = milliseconds{20}});
  raw_db blocker(dir.db());
  blocker.exec("BEGIN EXCLUSIVE");  // the writer cannot commit: it keeps retrying its batch

  // The first row goes into the writer's batch, which then hangs on the lock...
  auto first = sample_row(0, 0);
  REQUIRE(log.try_record(std::move(first)));
  REQUIRE(eventually([&] { return log.write_errors() >= 1 && log.queue_depth() == 0; }));
  // ...so the queue fills up behind it.
  for (int i = 1; i <= static_cast<int>(capacity); ++i) {
    auto row = sample_row(0, i);
    REQUIRE(log.try_record(std::move(row)));
  }
  CHECK(log.queue_depth() == capacity);

  auto refused = sample_row(0, 99);
  auto before = steady_clock::now();
  CHECK_FALSE(log.try_record(std::move(refused)));
  CHECK(steady_clock::now() - before < milliseconds{50});  // did not wait for the writer
  CHECK(refused.path == "/p0/99");                         // not consumed

  std::atomic<int> told{0};
  std::atomic<std::thread::id> told_on{};
  log.notify_when_space([&] {
    told_on = std::this_thread::get_id();
    ++told;
  });
  // Still full while the lock is held: nobody is told.
  const auto errors = log.write_errors();
  REQUIRE(eventually([&] { return log.write_errors() >= errors + 3; }));
  CHECK(told == 0);
  CHECK_FALSE(log.try_record(std::move(refused)));

  blocker.exec("COMMIT");
  CHECK(eventually([&] { return told == 1; }));
  CHECK(told_on.load() != std::this_thread::get_id());  // the writer's thread, after its drain
  CHECK(log.try_record(std::move(refused)));
  log.flush();
  CHECK(count_rows(dir.db()) == static_cast<std::int64_t>(capacity) + 2);

  // With room now, the callback runs at once on the caller's thread.
  int now_told = 0;
  log.notify_when_space([&] { ++now_told; });
  CHECK(now_told == 1);
  CHECK(told == 1);  // a callback fires once
}

TEST_CASE("decision_log: stopping tells every waiter, and try_record then drops without refusing") {
  temp_dir dir;
  decision_log log(dir.db(), {.capacity = 1, .busy_timeout = milliseconds{20}});
  raw_db blocker(dir.db());
  blocker.exec("BEGIN EXCLUSIVE");
  auto a = sample_row(0, 0);
  REQUIRE(log.try_record(std::move(a)));
  REQUIRE(eventually([&] { return log.write_errors() >= 1 && log.queue_depth() == 0; }));
  auto b = sample_row(0, 1);
  REQUIRE(log.try_record(std::move(b)));
  auto c = sample_row(0, 2);
  REQUIRE_FALSE(log.try_record(std::move(c)));
  std::atomic<int> told{0};
  for (int i = 0; i < 3; ++i)
    log.notify_when_space([&] { ++told; });

  std::thread stopper([&] { log.stop(); });
  std::this_thread::sleep_for(milliseconds{100});  // stop() is now waiting on the stuck writer
  blocker.exec("COMMIT");
  stopper.join();
  CHECK(told == 3);
  CHECK(count_rows(dir.db()) == 2);
  auto d = sample_row(0, 3);
  CHECK(log.try_record(std::move(d)));  // accepted and ignored: the writer is gone
  int late = 0;
  log.notify_when_space([&] { ++late; });
  CHECK(late == 1);
  CHECK(count_rows(dir.db()) == 2);
}

TEST_CASE("decision_log: rows older than the retention are pruned at start") {
  temp_dir dir;
  auto old_ts = parse_since("40d");
  auto recent_ts = parse_since("2d");
  {
    auto db = state_db::open(dir.db());
    auto old_row = sample_row(0, 0);
    old_row.ts = old_ts;
    auto recent_row = sample_row(0, 1);
    recent_row.ts = recent_ts;
    db.insert_decisions({old_row, recent_row});
  }
  {
    // retention_days = 0 keeps everything.
    decision_log log(dir.db(), {.retention_days = 0});
    log.record(sample_row(0, 2));
    log.flush();
    CHECK(count_rows(dir.db()) == 3);
  }
  decision_log log(dir.db(), {.retention_days = 30});
  // The writer prunes before it writes its first batch.
  log.record(sample_row(0, 3));
  log.flush();
  raw_db raw(dir.db());
  CHECK(raw.integer("SELECT count(*) FROM decisions") == 3);
  CHECK(raw.integer(fmt::format("SELECT count(*) FROM decisions WHERE ts = '{}'", old_ts)) == 0);
  CHECK(raw.integer(fmt::format("SELECT count(*) FROM decisions WHERE ts = '{}'", recent_ts)) == 1);
}

TEST_CASE("decision_log: a bad database fails at construction") {
  temp_dir dir;
  sbx::store::test::write_bytes(dir.db(), std::string(4096, 'x'));
  CHECK_THROWS_AS(decision_log(dir.db(), {}), store_error);
}
