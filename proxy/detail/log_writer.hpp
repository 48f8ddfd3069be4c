// Records a decision row from a session coroutine without ever blocking its I/O thread.
//
// The decision log's queue is bounded so that overload slows the proxy down instead of losing
// rows. A session that finds it full waits asynchronously until the writer thread has taken a
// batch out, then tries again; meanwhile every other session on the same thread goes on.
//
//   co_await record_row(st, std::move(row));  // returns once the row is queued
#pragma once

#include "policy/store/state_db.hpp"
#include "proxy/detail/net.hpp"
#include "proxy/detail/state.hpp"

namespace sbx::proxy::detail {

// Queues `row` in st.log (nothing to do when there is no log). Each time it has to wait for room
// it counts one in st.counters.log_waits. Nothing is dropped while the log runs.
asio::awaitable<void> record_row(proxy_state& st, store::decision_row row);

}  // namespace sbx::proxy::detail
