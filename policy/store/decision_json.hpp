// A decision row as JSON with exactly the column names of the `decisions` table, so scripts read
// the same object from `sbx policy log --json` and from the control socket's /v1/decisions.
// Header-only: the store itself does not depend on a JSON library.
#pragma once

#include <nlohmann/json.hpp>

#include "policy/store/state_db.hpp"

namespace sbx::store {

inline nlohmann::json decision_json(const decision_row& r) {
  return {{"id", r.id},
          {"ts", r.ts},
          {"sandbox", r.sandbox},
          {"client", r.client},
          {"method", r.method},
          {"scheme", r.scheme},
          {"host", r.host},
          {"port", r.port},
          {"path", r.path},
          {"route", r.route},
          {"decision", r.decision},
          {"rule", r.rule},
          {"reason", r.reason},
          {"credential", r.credential},
          {"status", r.status},
          {"bytes_up", r.bytes_up},
          {"bytes_down", r.bytes_down},
          {"duration_ms", r.duration_ms}};
}

}  // namespace sbx::store
