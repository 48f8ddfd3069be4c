// `sbx policy log`: the decision log in policy.db, grouped by host (default), row by row (--events)
// or followed as it grows (-f).
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/common.hpp"
#include "policy/store/decision_json.hpp"
#include "policy/store/state_db.hpp"

namespace sbx::cli {
namespace {

// How often --follow looks for new rows; well under the one second a user notices.
constexpr auto follow_poll_interval = std::chrono::milliseconds(300);
// How quickly --follow notices SIGINT/SIGTERM while waiting for the next poll.
constexpr auto follow_signal_check = std::chrono::milliseconds(50);
constexpr std::int64_t default_event_limit = 100;

volatile std::sig_atomic_t follow_stop_requested = 0;
extern "C" void request_follow_stop(int) {
  follow_stop_requested = 1;
}

struct log_options {
  std::string sandbox;
  bool sandbox_given = false;
  bool json = false;
  std::int64_t limit = 0;
  bool limit_given = false;
  std::string since;
  std::string host;
  bool blocked = false;
  bool allowed = false;
  bool events = false;
  bool follow = false;
};

store::decision_filter make_filter(const log_options& opts) {
  store::decision_filter f;
  if (opts.sandbox_given) f.sandbox = opts.sandbox;
  if (!opts.since.empty()) {
    try {
      f.since = store::parse_since(opts.since);
    } catch (const store::store_error& e) {
      throw usage_error(fmt::format("invalid --since value \"{}\": {}", opts.since, e.what()));
    }
  }
  if (!opts.host.empty()) f.host_pattern = opts.host;
  if (opts.blocked) f.decision = "deny";
  if (opts.allowed) f.decision = "allow";
  return f;
}

const std::vector<std::string> event_headers = {
    "TIME",     "SANDBOX", "CLIENT", "METHOD", "SCHEME", "HOST", "PORT",       "PATH",  "ROUTE",
    "DECISION", "RULE",    "STATUS", "UP",     "DOWN",   "MS",   "CREDENTIAL", "REASON"};
// Column widths while following, when later rows cannot be measured in advance.
const std::vector<std::size_t> follow_widths = {24, 10, 21, 7, 6, 28, 5,  24, 9,
                                                8,  7,  6,  8, 8, 6,  10, 0};

std::vector<std::string> event_cells(const store::decision_row& r) {
  return {r.ts,
          or_dash(r.sandbox),
          or_dash(r.client),
          or_dash(r.method),
          or_dash(r.scheme),
          or_dash(r.host),
          r.port ? std::to_string(r.port) : "-",
          or_dash(r.path),
          or_dash(r.route),
          or_dash(r.decision),
          or_dash(r.rule),
          r.status ? std::to_string(r.status) : "-",
          std::to_string(r.bytes_up),
          std::to_string(r.bytes_down),
          std::to_string(r.duration_ms),
          or_dash(r.credential),
          or_dash(r.reason)};
}

void print_fixed_row(const std::vector<std::string>& cells) {
  std::string line;
  for (std::size_t c = 0; c < cells.size(); ++c) {
    line += cells[c];
    if (c + 1 < cells.size()) {
      auto width = std::max(follow_widths[c], cells[c].size());
      line.append(width - cells[c].size() + 2, ' ');
    }
  }
  fmt::print("{}\n", line);
}

void sort_oldest_first(std::vector<store::decision_row>& rows) {
  std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.id < b.id; });
}

int run_summary(const log_options& opts, store::state_db& db) {
  auto filter = make_filter(opts);
  if (opts.limit_given) filter.limit = opts.limit;
  auto groups = db.summarize_decisions(filter);
  if (opts.json) {
    for (const auto& g : groups) {
      nlohmann::json line = {
          {"sandbox", g.sandbox},       {"host", g.host},           {"route", g.route},
          {"decision", g.decision},     {"rule", g.rule},           {"reason", g.reason},
          {"credential", g.credential}, {"last_seen", g.last_seen}, {"count", g.count}};
      fmt::print("{}\n", line.dump());
    }
    return exit_ok;
  }
  text_table table({"SANDBOX", "HOST", "ROUTE", "DECISION", "RULE", "REASON", "CREDENTIAL",
                    "LAST SEEN", "COUNT"});
  for (const auto& g : groups) {
    table.add_row({or_dash(g.sandbox), or_dash(g.host), or_dash(g.route), or_dash(g.decision),
                   or_dash(g.rule), or_dash(g.reason), or_dash(g.credential), or_dash(g.last_seen),
                   std::to_string(g.count)});
  }
  table.print();
  return exit_ok;
}

int run_events(const log_options& opts, store::state_db& db) {
  auto filter = make_filter(opts);
  filter.limit = opts.limit_given ? opts.limit : default_event_limit;
  auto rows = db.query_decisions(filter);
  // The newest rows are selected; they read best oldest first, like a log file.
  sort_oldest_first(rows);
  if (opts.json) {
    for (const auto& r : rows)
      fmt::print("{}\n", store::decision_json(r).dump());
    return exit_ok;
  }
  text_table table(event_headers);
  for (const auto& r : rows)
    table.add_row(event_cells(r));
  table.print();
  return exit_ok;
}

int run_follow(const log_options& opts, store::state_db& db) {
  // No SA_RESTART: a signal only has to set the flag; the poll loop notices it within
  // follow_signal_check.
  struct sigaction sa {};
  sa.sa_handler = request_follow_stop;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  auto filter = make_filter(opts);
  // Like `tail -f`: the recent rows first, then the new ones as they are committed.
  filter.limit = opts.limit_given ? opts.limit : default_event_limit;
  auto print_rows = [&](std::vector<store::decision_row>& rows) {
    sort_oldest_first(rows);
    for (const auto& r : rows) {
      if (opts.json) {
        fmt::print("{}\n", store::decision_json(r).dump());
      } else {
        print_fixed_row(event_cells(r));
      }
      filter.after_id = std::max(filter.after_id, r.id);
    }
    // Block-buffered when piped; whoever reads the pipe wants each row now.
    std::fflush(stdout);
  };

  if (!opts.json) print_fixed_row(event_headers);
  auto rows = db.query_decisions(filter);
  print_rows(rows);
  filter.limit = 0;  // from here on: everything after the last row shown

  while (!follow_stop_requested) {
    for (auto waited = std::chrono::milliseconds(0);
         waited < follow_poll_interval && !follow_stop_requested; waited += follow_signal_check) {
      std::this_thread::sleep_for(follow_signal_check);
    }
    if (follow_stop_requested) break;
    rows = db.query_decisions(filter);
    print_rows(rows);
  }
  return exit_ok;
}

int run_log(const log_options& opts) {
  auto st = open_state();
  if (opts.follow) return run_follow(opts, st.db);
  if (opts.events) return run_events(opts, st.db);
  return run_summary(opts, st.db);
}

}  // namespace

void add_policy_log_command(CLI::App& policy, command_action& action) {
  auto* log = policy.add_subcommand("log", "Show the decision log (grouped by host by default)");
  auto opts = std::make_shared<log_options>();
  auto* sandbox = log->add_option("sandbox", opts->sandbox, "Only this sandbox's requests");
  log->add_flag("--json", opts->json, "One JSON object per line");
  auto* limit = log->add_option("--limit", opts->limit,
                                "At most N entries, the newest (default for --events: 100)")
                    ->type_name("N")
                    ->check(CLI::NonNegativeNumber);
  log->add_option("--since", opts->since, "Only entries since a duration ago or an RFC 3339 time")
      ->type_name("10m|2h|7d|RFC3339");
  log->add_option("--host", opts->host, "Only hosts matching this glob (*.openai.com)")
      ->type_name("PATTERN");
  auto* blocked = log->add_flag("--blocked", opts->blocked, "Only denied requests");
  log->add_flag("--allowed", opts->allowed, "Only allowed requests")->excludes(blocked);
  log->add_flag("--events", opts->events, "One row per request instead of grouping by host");
  log->add_flag("-f,--follow", opts->follow, "Print new requests as they arrive (until Ctrl-C)");
  log->footer(
      "Examples:\n  sbx policy log --blocked\n  sbx policy log dev --events --since 10m\n"
      "  sbx policy log --host '*.openai.com' --json -f");
  log->callback([opts, sandbox, limit, &action] {
    opts->sandbox_given = sandbox->count() > 0;
    opts->limit_given = limit->count() > 0;
    action = [opts] { return run_log(*opts); };
  });
}

}  // namespace sbx::cli
