// The config loader (config/config.hpp): any text as a config file. Properties: it either loads or
// throws config_error (never another exception, never a crash); what loads has the invariants the
// proxy relies on (every service host lower-case without a trailing dot, and findable).
#include <cstdint>
#include <string>

#include "config/config.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::config;
using sbx::fuzz::require;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  settings s;
  try {
    s = load_from_string(sbx::fuzz::as_text(data, size), "fuzz.json");
  } catch (const config_error&) {
    return 0;
  }
  for (const auto& svc : s.services) {
    require(s.find_service(svc.name) != nullptr, "a loaded service is found by name");
    for (const auto& h : svc.hosts) {
      require(!h.empty() && !h.ends_with('.'), "service hosts have no trailing dot");
      for (char c : h)
        require(!(c >= 'A' && c <= 'Z'), "service hosts are lower case");
      require(s.service_for_host(h) == &svc, "a service host leads to its service");
    }
  }
  for (const auto& [key, value] : s.resolve) {
    (void)s.resolve_override(key, 443);
    (void)value;
  }
  (void)parse_endpoint(s.listen);  // a loaded listen address is valid
  return 0;
}
