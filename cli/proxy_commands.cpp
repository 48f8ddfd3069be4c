// `sbx proxy` (run the proxy in the foreground) and `sbx status` (ask a running one how it is).
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "config/config.hpp"
#include "proxy/control_client.hpp"
#include "proxy/server.hpp"

namespace sbx::cli {
namespace {

struct proxy_options {
  std::string listen;
  std::string config_file;
  bool allow_anonymous = false;
  unsigned threads = 0;
};

int run_proxy_command(const proxy_options& opts) {
  proxy::run_options run;
  run.state_dir = config::ensure_state_dir();
  if (!opts.config_file.empty()) run.config_file = opts.config_file;
  run.settings = config::load(run.config_file);
  if (!opts.listen.empty()) run.settings.listen = opts.listen;
  run.allow_anonymous = opts.allow_anonymous;
  run.secrets = open_keychain(run.state_dir);
  run.threads = opts.threads;
  {
    // Creates policy.db with its schema and the default preset before the proxy's threads open
    // their own connections; closed again so the CLI holds no connection while the proxy runs.
    auto st = open_state();
  }
  return proxy::run_proxy(run);
}

// "3d 4h", "2h 5m", "5m 12s", "42s": enough precision to tell a fresh start from a long run.
std::string format_uptime(std::int64_t seconds) {
  auto days = seconds / 86400, hours = seconds / 3600 % 24, minutes = seconds / 60 % 60,
       secs = seconds % 60;
  if (days > 0) return fmt::format("{}d {}h", days, hours);
  if (hours > 0) return fmt::format("{}h {}m", hours, minutes);
  if (minutes > 0) return fmt::format("{}m {}s", minutes, secs);
  return fmt::format("{}s", secs);
}

std::string value_text(const nlohmann::json& v) {
  return v.is_string() ? v.get<std::string>() : v.dump();
}

int run_status(bool json) {
  auto dir = config::state_dir();
  auto socket = control_socket_path(dir);
  std::string error;
  auto response =
      proxy::control_request(socket, "GET", "/v1/status", {}, std::chrono::seconds(3), &error);
  if (!response) {
    if (json) {
      fmt::print("{}\n", nlohmann::json{{"running", false}, {"socket", socket.string()}}.dump());
    } else {
      fmt::print("sbx proxy is not running (no control socket at {})\n", socket.string());
    }
    return exit_failure;
  }
  if (response->status != 200) {
    throw failure(fmt::format("the proxy answered GET /v1/status with HTTP {}: {}",
                              response->status, response->body));
  }
  auto body = nlohmann::json::parse(response->body, nullptr, /*allow_exceptions=*/false);
  if (!body.is_object()) {
    throw failure(
        "the proxy's status reply is not a JSON object; is another program listening on " +
        socket.string() + "?");
  }
  if (json) {
    body["running"] = true;
    fmt::print("{}\n", body.dump());
    return exit_ok;
  }

  auto pop = [&](const char* key) -> std::optional<nlohmann::json> {
    if (!body.contains(key)) return std::nullopt;
    auto v = body[key];
    body.erase(key);
    return v;
  };
  std::string headline = "sbx proxy is running";
  auto pid = pop("pid");
  auto version = pop("version");
  if (pid && version) {
    headline += fmt::format(" (pid {}, version {})", value_text(*pid), value_text(*version));
  } else if (pid) {
    headline += fmt::format(" (pid {})", value_text(*pid));
  }
  fmt::print("{}\n", headline);

  auto line = [&](const char* label, const std::optional<nlohmann::json>& v, auto render) {
    if (v) fmt::print("  {:<20}{}\n", label, render(*v));
  };
  line("Listen:", pop("listen"), value_text);
  line("Uptime:", pop("uptime_s"), [](const nlohmann::json& v) {
    return v.is_number() ? format_uptime(v.get<std::int64_t>()) : value_text(v);
  });
  line("Connections:", pop("active_connections"), value_text);
  line("Requests:", pop("requests_total"), value_text);
  line("Allowed:", pop("decisions_allow"), value_text);
  line("Denied:", pop("decisions_deny"), value_text);
  line("Log queue:", pop("log_queue_depth"), value_text);
  // Counters added to the proxy later still show, under their own names.
  for (auto& [key, value] : body.items()) {
    fmt::print("  {:<20}{}\n", key + ":", value_text(value));
  }
  fmt::print("  {:<20}{}\n", "Control socket:", socket.string());
  return exit_ok;
}

}  // namespace

void add_proxy_commands(CLI::App& app, command_action& action) {
  auto* cmd = app.add_subcommand("proxy", "Run the proxy in the foreground (logs on stderr)");
  auto opts = std::make_shared<proxy_options>();
  cmd->add_option("--listen", opts->listen,
                  "Address to listen on (default from config: "
                  "127.0.0.1:3128; port 0 picks a free port)")
      ->type_name("ADDR");
  cmd->add_option("--config", opts->config_file, "JSON config file (default: $SBX_CONFIG)")
      ->type_name("FILE");
  cmd->add_flag("--allow-anonymous", opts->allow_anonymous,
                "Allow clients without sandbox tokens on a non-loopback address");
  cmd->add_option("--threads", opts->threads, "I/O threads (default: one per core)")
      ->type_name("N");
  cmd->footer(
      "Stops cleanly on SIGTERM/SIGINT (in-flight requests finish, the decision log is flushed);\n"
      "SIGHUP reloads the config. Rule changes apply within a second without a restart.");
  cmd->callback([opts, &action] { action = [opts] { return run_proxy_command(*opts); }; });

  auto* status = app.add_subcommand("status", "Show whether the proxy runs, and its counters");
  auto json = std::make_shared<bool>(false);
  status->add_flag("--json", *json, "Print the proxy's status as one JSON object");
  status->callback([json, &action] { action = [json] { return run_status(*json); }; });
}

}  // namespace sbx::cli
