#include "proxy/detail/log_writer.hpp"

#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace sbx::proxy::detail {
namespace {

// One per io_context (an Asio service): the sessions of this thread waiting for room in a
// decision log. Only one notify_when_space() registration per log is outstanding per thread,
// however many sessions wait, and its wake-up is posted back to this thread, where it cancels
// every waiter's timer; each then tries again. The writer thread never runs session code.
class log_space_waiters : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;

  explicit log_space_waiters(asio::execution_context& ctx)
      : service(ctx), link_(std::make_shared<link>()) {
    link_->owner = this;
  }

  static log_space_waiters& of(const asio::any_io_executor& ex) {
    return asio::use_service<log_space_waiters>(asio::query(ex, asio::execution::context));
  }

  // Returns once `log` has said it has room (possibly at once), or when the io_context stops.
  asio::awaitable<void> wait(store::decision_log& log, asio::any_io_executor ex) {
    asio::steady_timer timer(ex, asio::steady_timer::time_point::max());
    waiting_.push_back({&timer, &log});
    // Unlisted however the coroutine ends (woken, or destroyed with its io_context).
    struct unlist {
      log_space_waiters& self;
      asio::steady_timer* t;
      ~unlist() {
        std::erase_if(self.waiting_, [this](const waiter& w) { return w.timer == t; });
      }
    } guard{*this, &timer};

    if (std::find(armed_.begin(), armed_.end(), &log) == armed_.end()) {
      armed_.push_back(&log);
      log.notify_when_space([l = link_, ex, logp = &log] {
        // On the writer thread (or here, when there is room already): only post.
        std::lock_guard lock(l->mutex);
        if (l->owner != nullptr) asio::post(ex, [svc = l->owner, logp] { svc->wake(logp); });
      });
    }
    co_await timer.async_wait(use_nothrow);  // cancelled by wake(): that is the wake-up
  }

 private:
  struct waiter {
    asio::steady_timer* timer;
    store::decision_log* log;
  };
  // Shared with the callbacks held by decision logs, which may outlive this service: once the
  // io_context shuts down they must not post to it.
  struct link {
    std::mutex mutex;
    log_space_waiters* owner = nullptr;
  };

  void shutdown() override {
    std::lock_guard lock(link_->mutex);
    link_->owner = nullptr;
  }

  void wake(store::decision_log* log) {
    std::erase(armed_, log);
    for (auto& w : waiting_)
      if (w.log == log) w.timer->cancel();
  }

  std::shared_ptr<link> link_;
  std::vector<waiter> waiting_;
  std::vector<store::decision_log*> armed_;  // logs with a registration outstanding
};

}  // namespace

asio::awaitable<void> record_row(proxy_state& st, store::decision_row row) {
  if (st.log == nullptr) co_return;
  while (!st.log->try_record(std::move(row))) {  // refused: `row` is untouched
    metrics::add(st.counters.log_waits);
    auto ex = co_await asio::this_coro::executor;
    co_await log_space_waiters::of(ex).wait(*st.log, ex);
  }
}

}  // namespace sbx::proxy::detail
