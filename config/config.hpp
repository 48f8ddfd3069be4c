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
  std::chrono::milliseconds header_timeout{10'000};  // request line + headers must arrive in
  std::chrono::milliseconds idle_timeout{60'000};    // keep-alive wait for the next request
  // A new connection's first request head must be complete this long after accept, or the
  // connection is closed: idle connections must not hold slots (issue 8).
  std::chrono::milliseconds first_byte_timeout{5'000};
  std::chrono::milliseconds connect_timeout{10'000};    // DNS + TCP connect (+ TLS handshake)
  std::chrono::milliseconds upstream_timeout{120'000};  // upstream silence while a response is due
  std::chrono::milliseconds tunnel_idle_timeout{600'000};  // no bytes either way in a tunnel
  std::chrono::milliseconds shutdown_grace{10'000};        // in-flight work allowed after SIGTERM
  std::size_t max_header_bytes = 64 * 1024;                // request line + headers; beyond: 431
  std::size_t max_connections = 8192;                      // client connections, all sandboxes
  std::size_t max_connections_per_sandbox = 2048;          // per sandbox (and for "no sandbox")
  std::size_t max_connections_per_client = 2048;           // per client IP address
  // Which connection caps a config file set. The others are defaults that the proxy sizes from
  // its open-file limit at start (fit_connection_caps).
  bool max_connections_set = false;
  bool max_connections_per_sandbox_set = false;
  bool max_connections_per_client_set = false;
};

// Sizes the connection caps the config did not set from the number of file descriptors the
// process may open (RLIMIT_NOFILE): a connection may need two (client and upstream), and a reserve
// is kept for policy.db, the control socket and each I/O thread's own descriptors. The per-client
// and per-sandbox caps default to a quarter of the total, so one address or one sandbox can never
// take every slot. Returns one line for the start-up log saying what was chosen and why.
//   auto line = fit_connection_caps(s.lim, 1024);  // max_connections = 448, per client = 112
std::string fit_connection_caps(limits& lim, std::uint64_t open_files);

// Who may use the proxy without a sandbox identity (token or --source address), i.e. the global
// rules and the global secrets:
//   same_user  only connections over loopback from a socket owned by the proxy's own user
//   none       nobody: every client needs a sandbox identity
//   any        every client that can reach the listener
enum class anonymous_access { same_user, none, any };
[[nodiscard]] std::string_view to_string(anonymous_access a);  // "same-user" | "none" | "any"

// A named credential: the hosts it may be sent to and the header forms it takes.
struct service {
  std::string name;                  // lower-case letters, digits, '-' and '_'
  std::vector<std::string> hosts;    // exact host names, lower-case, no trailing dot
  std::vector<std::string> headers;  // "Authorization: Bearer {secret}"; first = default form
  std::vector<std::string> env;      // environment variables a sandbox reads the key from
};
// Header forms are stored as "Name: value" (one space after the colon), the name an RFC 9110 token
// that is not a framing or proxy header, the value free of control characters and containing
// {secret}. Within one service no two forms share a header name, and no host belongs to two
// services: the proxy must know which credential and which form a request calls for.

// An IP literal and port: "127.0.0.1:3128", "[::1]:3128". Host names are not accepted: `listen`
// binds and `resolve` connects to exactly this address.
struct endpoint {
  std::string ip;  // without brackets: "::1"
  std::uint16_t port = 0;
  [[nodiscard]] std::string to_string() const;  // "[::1]:3128"
};
// Throws config_error saying what is wrong ("IPv6 addresses go in brackets, as in [::1]:3128").
[[nodiscard]] endpoint parse_endpoint(std::string_view text);

struct settings {
  std::string listen = "127.0.0.1:3128";
  // "host:port" -> "ip:port", like curl --resolve; the address is then treated as a DNS answer.
  // Keys are stored lower-case without a trailing dot; use resolve_override() to look one up.
  std::map<std::string, std::string> resolve;
  // Extra PEM bundle trusted for upstream TLS; empty = none. A relative path in a config file is
  // taken relative to that file's directory; the file must exist when the config is loaded.
  std::string upstream_ca_file;
  bool intercept_all = false;
  anonymous_access anonymous = anonymous_access::same_user;
  std::vector<service> services;  // built-in catalogue merged with config (same name overrides)
  limits lim;
  int log_retention_days = 30;             // decision-log rows older than this are deleted
  std::size_t log_queue_capacity = 65536;  // decisions waiting to be written
  std::optional<std::filesystem::path> source_file;  // the file loaded, if any

  // Case-insensitive; nullptr when there is no such service.
  [[nodiscard]] const service* find_service(std::string_view name) const;
  // The service whose hosts include this host (case-insensitive, a trailing dot ignored), or
  // nullptr.
  [[nodiscard]] const service* service_for_host(std::string_view host) const;
  // The `resolve` entry for this destination, if any (host case-insensitive, trailing dot ignored;
  // an IPv6 host with or without brackets).
  [[nodiscard]] std::optional<endpoint> resolve_override(std::string_view host,
                                                         std::uint16_t port) const;
};

// Embedded defaults, then `file` if given, else $SBX_CONFIG if set. Throws config_error.
[[nodiscard]] settings load(const std::optional<std::filesystem::path>& file);
// Parses a JSON text on top of the defaults; `origin` names it in errors. Throws config_error.
[[nodiscard]] settings load_from_string(std::string_view json_text, std::string_view origin);
// The text of config/defaults.json as compiled in: every key a config file may set, with its
// default.
[[nodiscard]] std::string_view defaults_json();

// $SBX_HOME, else $XDG_STATE_HOME/sbx, else ~/.local/state/sbx. Not created. Always absolute: a
// relative SBX_HOME is taken from the current directory, a relative XDG_STATE_HOME is ignored (as
// the XDG Base Directory spec says). Throws config_error when no home directory can be found.
[[nodiscard]] std::filesystem::path state_dir();
// state_dir(), created 0700 (with parents) if missing; an existing one with group or other access
// is tightened to 0700, since it holds the CA key and the secrets. Throws config_error when it
// cannot be created, is not a directory, or belongs to another user.
[[nodiscard]] std::filesystem::path ensure_state_dir();

// Presets: "allow-all", "balanced", "deny-all". Rules come back with source = preset, global scope.
[[nodiscard]] std::vector<std::string> preset_names();
// Throws config_error for an unknown name (listing the known ones). Rule ids are 0: the store
// assigns them.
[[nodiscard]] std::vector<policy::rule> preset_rules(std::string_view name);
// One line saying what the preset allows. Throws config_error for an unknown name.
[[nodiscard]] std::string preset_description(std::string_view name);
inline constexpr std::string_view default_preset = "balanced";

}  // namespace sbx::config
