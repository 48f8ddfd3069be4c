// Configuration: the embedded defaults (config/defaults.json, compiled in), overridden by an
// optional JSON file (SBX_CONFIG or --config). Also the built-in credential-service catalogue and
// the policy presets, and where state lives (SBX_HOME).
//
//   auto s = sbx::config::load(std::nullopt);            // defaults only
//   auto s = sbx::config::load("/etc/sbx/config.json");  // defaults + file; throws config_error
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "policy/rule.hpp"

namespace sbx::config {

// what() names the file and the key and says what is expected:
// "config.json: unknown key \"limts\" (known: listen, resolve, ...)".
class config_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct limits {
  std::chrono::milliseconds header_timeout{10'000};   // request line + headers must arrive in
  std::chrono::milliseconds idle_timeout{60'000};     // keep-alive wait for the next request
  std::chrono::milliseconds connect_timeout{10'000};  // DNS + TCP connect (+ TLS handshake)
  std::chrono::milliseconds upstream_timeout{120'000};  // upstream silence while a response is due
  std::chrono::milliseconds tunnel_idle_timeout{600'000};  // no bytes either way in a tunnel
  std::chrono::milliseconds shutdown_grace{10'000};     // in-flight work allowed after SIGTERM
  std::size_t max_header_bytes = 64 * 1024;            // request line + headers; beyond: 431
  std::size_t max_connections = 8192;                  // client connections, all sandboxes
  std::size_t max_connections_per_sandbox = 2048;      // per sandbox (and for "no sandbox")
};

// A named credential: the hosts it may be sent to and the header forms it takes.
struct service {
  std::string name;
  std::vector<std::string> hosts;    // exact host names, lower-case
  std::vector<std::string> headers;  // "Authorization: Bearer {secret}"; first = default form
  std::vector<std::string> env;      // environment variables a sandbox reads the key from
};

struct settings {
  std::string listen = "127.0.0.1:3128";
  // "host:port" -> "ip:port", like curl --resolve; the address is then treated as a DNS answer.
  std::map<std::string, std::string> resolve;
  std::string upstream_ca_file;  // extra PEM bundle trusted for upstream TLS
  bool intercept_all = false;
  std::vector<service> services;  // built-in catalogue merged with config (same name overrides)
  limits lim;
  int log_retention_days = 30;
  std::size_t log_queue_capacity = 65536;
  std::optional<std::filesystem::path> source_file;  // the file loaded, if any

  [[nodiscard]] const service* find_service(std::string_view name) const;
  // The service whose hosts include this host (case-insensitive), or nullptr.
  [[nodiscard]] const service* service_for_host(std::string_view host) const;
};

// Embedded defaults, then `file` if given, else $SBX_CONFIG if set. Throws config_error.
[[nodiscard]] settings load(const std::optional<std::filesystem::path>& file);
// Parses a JSON text on top of the defaults; `origin` names it in errors. Throws config_error.
[[nodiscard]] settings load_from_string(std::string_view json_text, std::string_view origin);

// $SBX_HOME, else $XDG_STATE_HOME/sbx, else ~/.local/state/sbx. Not created.
[[nodiscard]] std::filesystem::path state_dir();
// state_dir(), created 0700 (with parents) if missing. Throws config_error when it cannot be.
[[nodiscard]] std::filesystem::path ensure_state_dir();

// Presets: "allow-all", "balanced", "deny-all". Rules come back with source = preset, global scope.
[[nodiscard]] std::vector<std::string> preset_names();
// Throws config_error for an unknown name (listing the known ones).
[[nodiscard]] std::vector<policy::rule> preset_rules(std::string_view name);
inline constexpr std::string_view default_preset = "balanced";

}  // namespace sbx::config
