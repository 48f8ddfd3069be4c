// What the control socket answers besides the runtime's own state: the Prometheus text of
// /metrics and the filter of /v1/decisions. Runs on the control thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "policy/store/decision_log.hpp"
#include "policy/store/state_db.hpp"
#include "proxy/detail/state.hpp"

namespace sbx::proxy::detail {

// /metrics in the Prometheus text format (version 0.0.4).
[[nodiscard]] std::string prometheus_text(const proxy_state& state, const store::decision_log& log);
// The filter of GET /v1/decisions?sandbox=&since=&host=&decision=&blocked&allowed&after_id=&limit=
// (limit 100 when absent). Throws std::exception on a bad value (the handler answers 400).
[[nodiscard]] store::decision_filter decision_filter_from_query(std::string_view target);
// Peak resident memory of the process.
[[nodiscard]] std::int64_t peak_rss_kib();

}  // namespace sbx::proxy::detail
