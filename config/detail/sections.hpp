// The parts of a config document that have files of their own: `services` (services.cpp) and
// `limits` (limits.cpp). Private to sbx_config; config.cpp applies them in order.
#pragma once

#include <vector>

#include "config/config.hpp"
#include "config/detail/json_reader.hpp"

namespace sbx::config::detail {

// Adds or replaces (by name) the services of a `services` object.
void apply_services(const json_reader& r, const json& value, std::vector<service>& services);
// One host carries at most one credential: the proxy picks the service by host.
void check_hosts_unique(const json_reader& r, const std::vector<service>& services);
// Applies a `limits` object. `complete` (the embedded defaults) demands every key and marks none
// of the connection caps as set by the user.
void apply_limits(const json_reader& r, const json& value, limits& lim, bool complete);

}  // namespace sbx::config::detail
