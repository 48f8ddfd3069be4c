// The proxy's persistent state in one SQLite file (policy.db, WAL mode): rules, sandbox identities
// and the decision log. Any sqlite3 client can read it while the proxy runs.
//
// One state_db is one SQLite connection and is not thread-safe: each thread opens its own. Errors
// throw store_error whose what() says what failed and what to do next ("policy.db is not a SQLite
// database (file is not a database); move it aside or run `sbx reset -f`").
//
//   auto db = sbx::store::state_db::open(home / "policy.db");
//   auto id = db.add_rule(sbx::policy::make_rule(0, "", action::allow, "example.com"));
//   auto rules = sbx::policy::rule_set(db.load_rules());
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "policy/rule.hpp"

struct sqlite3;

namespace sbx::store {

namespace detail {
struct statement_cache;
}

class store_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One row of the `decisions` table; the column names are part of the user-facing contract.
struct decision_row {
  std::int64_t id = 0;  // assigned by the database
  std::string ts;       // RFC 3339 UTC with milliseconds: 2026-11-22T06:00:00.123Z
  std::string sandbox;  // empty = none
  std::string client;   // client address "127.0.0.1:53211"
  std::string method;   // "CONNECT", "GET", ...
  std::string scheme;   // "http" | "https"
  std::string host;
  int port = 0;
  std::string path;      // never the query string
  std::string route;     // "tunnel" | "intercept" | "forward"
  std::string decision;  // "allow" | "deny"
  std::string rule;      // rule id as text, or "default"
  std::string reason;
  std::string credential;  // service injected, or empty
  int status = 0;
  std::int64_t bytes_up = 0;
  std::int64_t bytes_down = 0;
  std::int64_t duration_ms = 0;
};

struct decision_filter {
  std::optional<std::string> sandbox;       // exact sandbox name ("" = rows with no sandbox)
  std::optional<std::string> since;         // RFC 3339; rows with ts >= since
  std::optional<std::string> host_pattern;  // glob: "*.openai.com", "api.*"; case-insensitive
  std::optional<std::string> decision;      // "allow" | "deny"
  std::int64_t after_id = 0;                // rows with id > after_id (for --follow)
  std::int64_t limit = 0;                   // 0 = no limit; newest rows first when limited
};

// The grouped view of `sbx policy log`: one line per (sandbox, host, route, decision, rule, reason,
// credential), most recent first within blocked-then-allowed.
struct host_summary {
  std::string sandbox, host, route, decision, rule, reason, credential;
  std::string last_seen;  // max(ts)
  std::int64_t count = 0;
};

struct sandbox_info {
  std::string name;
  std::string created;  // RFC 3339
  // Addresses its traffic comes from (a container's or microVM's IP): a connection from one of
  // them is this sandbox, token or not. Never overlapping another sandbox's sources.
  std::vector<policy::ip_network> sources;
};

// A --source value: an IPv4/IPv6 address or CIDR ("10.0.3.7", "10.0.3.0/24", "fd00::/64",
// "[::1]"), without a port. Throws store_error saying what is expected.
[[nodiscard]] policy::ip_network parse_source_network(std::string_view text);

class state_db {
 public:
  // Opens or creates the database with its schema; sets WAL, busy timeout and 0600 permissions.
  [[nodiscard]] static state_db open(const std::filesystem::path& file);
  state_db(state_db&&) noexcept;
  state_db& operator=(state_db&&) noexcept;
  ~state_db();

  // How long a statement waits for another connection's write lock before failing with
  // SQLITE_BUSY (default 5 s). Readers never wait in WAL mode; writers queue behind each other.
  void set_busy_timeout(std::chrono::milliseconds timeout);

  // --- rules ---
  // Every stored rule, parsed. A stored row that no longer parses is a store_error naming its id.
  [[nodiscard]] std::vector<policy::rule> load_rules();
  // Inserts rules in one transaction; returns their new ids (the ids in the input are ignored).
  std::vector<std::int64_t> add_rules(const std::vector<policy::rule>& rules);
  std::int64_t add_rule(const policy::rule& r) { return add_rules({r}).front(); }
  bool remove_rule(std::int64_t id);
  // Removes local and preset rules with this resource text (canonical form) in this scope.
  int remove_rules_for(std::string_view resource_text, std::string_view sandbox);
  // Replaces every preset rule with these (local rules stay); one transaction.
  void replace_presets(const std::vector<policy::rule>& rules, std::string_view preset_name);
  [[nodiscard]] std::optional<std::string> preset_name();  // empty before any init
  // Increases on every change to rules or sandboxes; the proxy polls it to reload.
  [[nodiscard]] std::int64_t rules_version();

  // --- sandboxes ---
  // Throws store_error when the name exists, or when a source overlaps a source of another
  // sandbox (two sandboxes cannot both own an address).
  void add_sandbox(std::string_view name, std::string_view token_hash,
                   const std::vector<policy::ip_network>& sources = {});
  bool remove_sandbox(std::string_view name);  // also removes its rules
  // Issues a new token for an existing sandbox (the old one stops working); false if missing.
  bool replace_token_hash(std::string_view name, std::string_view token_hash);
  [[nodiscard]] std::vector<sandbox_info> sandboxes();  // with their sources
  [[nodiscard]] std::optional<std::string> token_hash(std::string_view name);

  // --- decisions ---
  void insert_decisions(const std::vector<decision_row>& rows);  // one transaction
  [[nodiscard]] std::vector<decision_row> query_decisions(const decision_filter& f);
  [[nodiscard]] std::vector<host_summary> summarize_decisions(const decision_filter& f);
  int prune_decisions_before(std::string_view ts);  // returns rows deleted

 private:
  explicit state_db(sqlite3* db);
  sqlite3* db_ = nullptr;
  // Prepared statements by SQL text, finalized before the connection closes.
  std::unique_ptr<detail::statement_cache> stmts_;
};

// The current time as RFC 3339 UTC with milliseconds ("2026-11-22T06:00:00.123Z").
[[nodiscard]] std::string now_rfc3339();
// Parses "10m", "2h", "7d", "30s" or an RFC 3339 time into an RFC 3339 UTC lower bound relative to
// now. Throws store_error on anything else.
[[nodiscard]] std::string parse_since(std::string_view text);

}  // namespace sbx::store
