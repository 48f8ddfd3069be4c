// record_row on a real io_context with a decision log whose writer is stuck behind another
// connection's exclusive lock on policy.db: the waiting coroutine must not stall the thread.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <exception>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "proxy/detail/log_writer.hpp"
#include "tests/store/test_support.hpp"

using namespace sbx::proxy::detail;
using namespace std::chrono_literals;
using sbx::store::test::raw_db;
using sbx::store::test::temp_dir;

namespace {

sbx::store::decision_row sample_row(int n) {
  sbx::store::decision_row row;
  row.client = "127.0.0.1:40000";
  row.method = "GET";
  row.host = "allowed.test";
  row.port = 80;
  row.path = fmt::format("/r{}", n);
  row.route = "forward";
  row.decision = "allow";
  row.status = 200;
  return row;
}

template <typename F>
bool eventually(F&& done, std::chrono::milliseconds limit = 10s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

std::int64_t count_rows(const std::filesystem::path& db) {
  raw_db raw(db);
  return raw.integer("SELECT count(*) FROM decisions");
}

// A log of capacity 2 whose writer holds one row it cannot commit (another connection holds
// an exclusive lock) and whose queue is full behind it.
struct stuck_log {
  temp_dir dir;
  sbx::store::decision_log log{dir.db(), {.capacity = 2, .busy_timeout = 20ms}};
  raw_db blocker{dir.db()};

  stuck_log() {
    blocker.exec("BEGIN EXCLUSIVE");
    for (int i = 0; i < 3; ++i) {
      auto row = sample_row(i);
      REQUIRE(log.try_record(std::move(row)));
      // The first row is taken into the writer's batch before the queue fills up behind it.
      if (i == 0)
        REQUIRE(eventually([&] { return log.write_errors() >= 1 && log.queue_depth() == 0; }));
    }
    auto refused = sample_row(99);
    REQUIRE_FALSE(log.try_record(std::move(refused)));
  }
};

}  // namespace

TEST_CASE("record_row: a full log makes the session wait, not its thread; nothing is dropped") {
  stuck_log stuck;
  proxy_state st;
  st.log = &stuck.log;

  asio::io_context ioc(1);
  constexpr int waiters = 20;
  std::atomic<int> recorded{0};
  for (int i = 0; i < waiters; ++i) {
    asio::co_spawn(
        ioc,
        [&, i]() -> asio::awaitable<void> {
          co_await record_row(st, sample_row(100 + i));
          ++recorded;
        },
        asio::detached);
  }

  // The lock is released when the ticker asks, or after 3 s whatever happens: a record_row that
  // blocked its thread would then fail the checks below instead of hanging the test.
  std::atomic<bool> release{false};
  std::thread releaser([&] {
    const auto limit = std::chrono::steady_clock::now() + 3s;
    while (!release && std::chrono::steady_clock::now() < limit)
      std::this_thread::sleep_for(5ms);
    stuck.blocker.exec("COMMIT");  // the writer commits its batch and makes room
  });

  // Another coroutine on the same (only) thread keeps ticking while the rows wait.
  int ticks = 0;
  int ticks_while_blocked = 0;
  std::exception_ptr failed;
  asio::co_spawn(
      ioc,
      [&]() -> asio::awaitable<void> {
        asio::steady_timer t(co_await asio::this_coro::executor);
        for (; ticks < 30; ++ticks) {
          t.expires_after(10ms);
          co_await t.async_wait(asio::use_awaitable);
        }
        ticks_while_blocked = ticks;
        CHECK(recorded == 0);
        CHECK(st.counters.log_waits >= static_cast<std::uint64_t>(waiters));
        release = true;
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (recorded < waiters && std::chrono::steady_clock::now() < deadline) {
          t.expires_after(10ms);
          co_await t.async_wait(asio::use_awaitable);
          ++ticks;
        }
      },
      [&](std::exception_ptr e) { failed = e; });

  ioc.run_for(20s);
  releaser.join();
  if (failed) std::rethrow_exception(failed);
  CHECK(ticks_while_blocked == 30);
  CHECK(recorded == waiters);
  stuck.log.flush();
  CHECK(count_rows(stuck.dir.db()) == 3 + waiters);
}

TEST_CASE("record_row: an io_context destroyed while a row waits is not posted to afterwards") {
  stuck_log stuck;
  proxy_state st;
  st.log = &stuck.log;
  {
    asio::io_context ioc(1);
    asio::co_spawn(ioc, record_row(st, sample_row(100)), asio::detached);
    ioc.run_for(100ms);
    CHECK(st.counters.log_waits == 1);
  }  // the waiting coroutine is destroyed with its io_context; the log keeps the registration
  stuck.blocker.exec("COMMIT");
  stuck.log.flush();  // the writer drains and calls the registration: it must not post
  CHECK(count_rows(stuck.dir.db()) == 3);
}

TEST_CASE("record_row: with room it queues at once and never waits") {
  temp_dir dir;
  sbx::store::decision_log log(dir.db(), {});
  proxy_state st;
  st.log = &log;
  asio::io_context ioc(1);
  for (int i = 0; i < 100; ++i)
    asio::co_spawn(ioc, record_row(st, sample_row(i)), asio::detached);
  ioc.run_for(5s);
  log.flush();
  CHECK(st.counters.log_waits == 0);
  CHECK(count_rows(dir.db()) == 100);
}
