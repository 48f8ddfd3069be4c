#include "policy/store/state_db.hpp"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#include "policy/store/sandbox_token.hpp"

namespace sbx::store {

namespace detail {

// Statements stay prepared for the connection's lifetime, so a hot path (one decision row, one
// rules_version poll) costs a reset and a step, not a parse.
struct statement_cache {
  std::unordered_map<std::string, sqlite3_stmt*> by_sql;

  statement_cache() = default;
  statement_cache(const statement_cache&) = delete;
  statement_cache& operator=(const statement_cache&) = delete;
  ~statement_cache() {
    for (auto& entry : by_sql)
      sqlite3_finalize(entry.second);
  }
};

}  // namespace detail

namespace {

namespace fs = std::filesystem;
using namespace std::chrono;

// PRAGMA user_version of the schema below; a newer file is refused rather than misread.
constexpr int current_schema_version = 1;
// PRAGMA application_id ("sbxp"): tells our file apart from any other SQLite database.
constexpr int sbx_application_id = 0x73627870;
constexpr milliseconds default_busy_timeout{5000};
// Pruning deletes in chunks, each its own transaction, so the proxy's writer never waits long.
constexpr int prune_chunk_rows = 10000;
// Rows per INSERT statement when writing a batch of decisions. Per-statement costs (the VDBE
// program, the AUTOINCREMENT counter) then count once per this many rows: about 1.3x the rate of
// one row per statement. 64 x 17 parameters stays far below SQLite's limit of 32766.
constexpr std::size_t rows_per_insert = 64;
constexpr int columns_per_decision = 17;  // every column but id

constexpr const char* schema_sql = R"sql(
CREATE TABLE meta (
  key TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
CREATE TABLE rules (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  sandbox TEXT NOT NULL DEFAULT '',
  decision TEXT NOT NULL CHECK (decision IN ('allow', 'deny')),
  resource TEXT NOT NULL,
  methods TEXT NOT NULL DEFAULT '',
  path TEXT NOT NULL DEFAULT '',
  source TEXT NOT NULL CHECK (source IN ('preset', 'local')),
  created TEXT NOT NULL
);
CREATE TABLE sandboxes (
  name TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL,
  created TEXT NOT NULL
);
CREATE TABLE decisions (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  ts TEXT NOT NULL,
  sandbox TEXT NOT NULL DEFAULT '',
  client TEXT NOT NULL DEFAULT '',
  method TEXT NOT NULL DEFAULT '',
  scheme TEXT NOT NULL DEFAULT '',
  host TEXT NOT NULL DEFAULT '',
  port INTEGER NOT NULL DEFAULT 0,
  path TEXT NOT NULL DEFAULT '',
  route TEXT NOT NULL DEFAULT '',
  decision TEXT NOT NULL DEFAULT '',
  rule TEXT NOT NULL DEFAULT '',
  reason TEXT NOT NULL DEFAULT '',
  credential TEXT NOT NULL DEFAULT '',
  status INTEGER NOT NULL DEFAULT 0,
  bytes_up INTEGER NOT NULL DEFAULT 0,
  bytes_down INTEGER NOT NULL DEFAULT 0,
  duration_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX decisions_ts ON decisions (ts);
)sql";

// The header fields are set in the same transaction as the tables, so a crash in between leaves
// an empty file that the next open simply initialises again.
std::string schema_script() {
  return fmt::format(
      "{}INSERT INTO meta (key, value) VALUES ('schema_version', '{}'), ('rules_version', '0');\n"
      "PRAGMA application_id = {};\nPRAGMA user_version = {};\n",
      schema_sql, current_schema_version, sbx_application_id, current_schema_version);
}

std::string file_name(sqlite3* db) {
  const char* name = sqlite3_db_filename(db, "main");
  return name != nullptr && *name != '\0' ? name : ":memory:";
}

// What a user can do about each kind of failure.
std::string_view advice_for(int code) {
  switch (code & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return "another process is writing to it; try again";
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return "move it aside or run `sbx reset -f`";
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_CANTOPEN:
    case SQLITE_AUTH:
      return "check that the file and its directory exist and are writable by this user";
    case SQLITE_FULL:
      return "free some disk space";
    case SQLITE_IOERR:
      return "check the disk that holds it";
    default:
      return {};
  }
}

std::string describe_failure(const std::string& file, std::string_view what, int code,
                             const char* sqlite_message) {
  auto message = fmt::format("{}: {}: {}", file, what, sqlite_message);
  if (auto advice = advice_for(code); !advice.empty()) message += fmt::format("; {}", advice);
  return message;
}

[[noreturn]] void fail(sqlite3* db, std::string_view what) {
  throw store_error(
      describe_failure(file_name(db), what, sqlite3_extended_errcode(db), sqlite3_errmsg(db)));
}

// One cached prepared statement, reset and unbound when this handle goes out of scope so that no
// statement keeps a read transaction open between calls.
class statement {
 public:
  statement(sqlite3* db, detail::statement_cache& cache, const std::string& sql) : db_(db) {
    if (auto it = cache.by_sql.find(sql); it != cache.by_sql.end()) {
      stmt_ = it->second;
      return;
    }
    if (sqlite3_prepare_v3(db, sql.c_str(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                           &stmt_, nullptr) != SQLITE_OK) {
      // The multi-row INSERT is long; its start says which statement it was.
      constexpr std::size_t shown = 80;
      fail(db, fmt::format("cannot prepare `{}{}`", sql.substr(0, shown),
                           sql.size() > shown ? "..." : ""));
    }
    cache.by_sql.emplace(sql, stmt_);
  }
  statement(const statement&) = delete;
  statement& operator=(const statement&) = delete;
  ~statement() { clear(); }

  // Text is bound without copying: every caller keeps the value alive until the step.
  statement& bind(int index, std::string_view value) {
    // An empty view may have a null data pointer, which SQLite would store as NULL.
    const char* data = value.data() != nullptr ? value.data() : "";
    check(sqlite3_bind_text(stmt_, index, data, static_cast<int>(value.size()), SQLITE_STATIC));
    return *this;
  }
  statement& bind(int index, std::int64_t value) {
    check(sqlite3_bind_int64(stmt_, index, value));
    return *this;
  }

  // True while there is a row to read.
  bool step(std::string_view what) {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    fail(db_, what);
  }
  void run(std::string_view what) {
    while (step(what)) {
    }
    sqlite3_reset(stmt_);
  }
  void clear() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }

  [[nodiscard]] std::string text(int column) const {
    const auto* data = sqlite3_column_text(stmt_, column);
    if (data == nullptr) return {};
    return {reinterpret_cast<const char*>(data),
            static_cast<std::size_t>(sqlite3_column_bytes(stmt_, column))};
  }
  [[nodiscard]] std::int64_t integer(int column) const {
    return sqlite3_column_int64(stmt_, column);
  }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) fail(db_, "cannot bind a parameter");
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

// BEGIN IMMEDIATE takes the write lock up front: a deferred transaction that later upgrades can
// fail with SQLITE_BUSY in WAL mode without the busy handler ever being called.
class write_transaction {
 public:
  write_transaction(sqlite3* db, detail::statement_cache& cache, std::string_view what)
      : db_(db), cache_(cache), what_(what) {
    statement(db_, cache_, "BEGIN IMMEDIATE").run(what_);
  }
  write_transaction(const write_transaction&) = delete;
  write_transaction& operator=(const write_transaction&) = delete;
  ~write_transaction() {
    if (!committed_ && sqlite3_get_autocommit(db_) == 0) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
  }
  void commit() {
    statement(db_, cache_, "COMMIT").run(what_);
    committed_ = true;
  }

 private:
  sqlite3* db_;
  detail::statement_cache& cache_;
  std::string what_;
  bool committed_ = false;
};

// Every reader of rules or sandboxes (the running proxy) reloads when this number changes.
void bump_rules_version(sqlite3* db, detail::statement_cache& cache) {
  statement(db, cache,
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rules_version'")
      .run("cannot update rules_version");
}

std::string join_methods(const std::vector<std::string>& methods) {
  std::string csv;
  for (const auto& m : methods) {
    if (!csv.empty()) csv += ',';
    csv += m;
  }
  return csv;
}

// The user typed it; keep messages printable and short.
std::string quoted_input(std::string_view text) {
  std::string out = "'";
  for (char c : text.substr(0, 64)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (text.size() > 64) out += "...";
  return out + "'";
}

// Creates the file 0600 before SQLite sees it: SQLite would create it 0644, and the -wal/-shm
// files inherit the database file's mode. An existing file is opened without truncation.
// Only ever opens a file that does not exist yet: POSIX drops every lock a process holds on a
// file when it closes ANY descriptor to it, so opening and closing an existing policy.db while this
// process has SQLite connections to it would silently release SQLite's locks (another reader then
// checkpoints and deletes the live WAL).
void create_private_file(const fs::path& file) {
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0 && errno == EEXIST) return;
  if (fd < 0) {
    throw store_error(fmt::format("cannot open {}: {}; {}", file.string(), std::strerror(errno),
                                  advice_for(SQLITE_CANTOPEN)));
  }
  ::close(fd);
}

void restrict_permissions(const fs::path& file) {
  // Best effort: a file someone else owns cannot be chmod-ed, and its mode is theirs to choose.
  for (const char* suffix : {"", "-wal", "-shm"}) {
    ::chmod((file.string() + suffix).c_str(), 0600);
  }
}

struct file_identity {
  std::int64_t application_id = 0;
  std::int64_t user_version = 0;
  std::int64_t objects = 0;
};

std::int64_t read_integer(sqlite3* db, detail::statement_cache& cache, const std::string& sql,
                          std::string_view what) {
  statement s(db, cache, sql);
  return s.step(what) ? s.integer(0) : 0;
}

// Files made before 2026-11-22 also index decisions by host. No query can use that index (the
// host filter is a case-folded GLOB), and keeping it up to date cost a third of each row's insert,
// so it goes. The layout is otherwise unchanged: no new schema version.
void drop_obsolete_indexes(sqlite3* db, detail::statement_cache& cache) {
  const auto present = read_integer(
      db, cache,
      "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'decisions_host'",
      "cannot read the schema");
  if (present == 0) return;
  statement(db, cache, "DROP INDEX IF EXISTS decisions_host").run("cannot drop an old index");
}

file_identity identify(sqlite3* db, detail::statement_cache& cache) {
  constexpr std::string_view what = "cannot read the database header";
  return {read_integer(db, cache, "PRAGMA application_id", what),
          read_integer(db, cache, "PRAGMA user_version", what),
          read_integer(db, cache, "SELECT count(*) FROM sqlite_schema", what)};
}

// Refuses anything that is not an empty file or our own schema, so a mistyped SBX_HOME can never
// make the proxy rewrite someone else's database. Returns true when the schema must be created.
bool check_identity(sqlite3* db, const file_identity& id) {
  auto file = file_name(db);
  if (id.application_id == 0 && id.objects == 0) return true;
  if (id.application_id != sbx_application_id) {
    throw store_error(fmt::format(
        "{} is a SQLite database that sbx did not create (application_id {}, {} schema objects); "
        "move it aside or run `sbx reset -f`",
        file, id.application_id, id.objects));
  }
  if (id.user_version > current_schema_version) {
    throw store_error(fmt::format(
        "{} was written by a newer sbx (schema version {}, this sbx knows up to {}); upgrade "
        "sbx, or move the file aside or run `sbx reset -f`",
        file, id.user_version, current_schema_version));
  }
  if (id.user_version < 1) {
    throw store_error(fmt::format(
        "{} has an unfinished or unknown schema (version {}); move it aside or run `sbx reset -f`",
        file, id.user_version));
  }
  return false;
}

constexpr const char* decision_columns =
    "id, ts, sandbox, client, method, scheme, host, port, path, route, decision, rule, reason, "
    "credential, status, bytes_up, bytes_down, duration_ms";

std::string make_insert_decisions_sql(std::size_t rows) {
  std::string sql =
      "INSERT INTO decisions (ts, sandbox, client, method, scheme, host, port, path, route, "
      "decision, rule, reason, credential, status, bytes_up, bytes_down, duration_ms) VALUES ";
  for (std::size_t i = 0; i < rows; ++i) {
    if (i > 0) sql += ", ";
    sql += "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
  }
  return sql;
}

// Built once: the text is also the statement cache's key.
const std::string& insert_decisions_sql(std::size_t rows) {
  static const std::string one = make_insert_decisions_sql(1);
  static const std::string chunk = make_insert_decisions_sql(rows_per_insert);
  return rows == rows_per_insert ? chunk : one;
}

decision_row read_decision(const statement& s) {
  decision_row row;
  row.id = s.integer(0);
  row.ts = s.text(1);
  row.sandbox = s.text(2);
  row.client = s.text(3);
  row.method = s.text(4);
  row.scheme = s.text(5);
  row.host = s.text(6);
  row.port = static_cast<int>(s.integer(7));
  row.path = s.text(8);
  row.route = s.text(9);
  row.decision = s.text(10);
  row.rule = s.text(11);
  row.reason = s.text(12);
  row.credential = s.text(13);
  row.status = static_cast<int>(s.integer(14));
  row.bytes_up = s.integer(15);
  row.bytes_down = s.integer(16);
  row.duration_ms = s.integer(17);
  return row;
}

// The WHERE clause for a filter; bind_filter() binds its parameters in the same order.
std::string where_clause(const decision_filter& f) {
  std::string sql = " WHERE id > ?";
  if (f.sandbox) sql += " AND sandbox = ?";
  if (f.since) sql += " AND ts >= ?";
  if (f.host_pattern) sql += " AND lower(host) GLOB lower(?)";
  if (f.decision) sql += " AND decision = ?";
  return sql;
}

int bind_filter(statement& s, const decision_filter& f) {
  int index = 1;
  s.bind(index++, f.after_id);
  if (f.sandbox) s.bind(index++, *f.sandbox);
  if (f.since) s.bind(index++, *f.since);
  if (f.host_pattern) s.bind(index++, *f.host_pattern);
  if (f.decision) s.bind(index++, *f.decision);
  return index;
}

using ms_time = time_point<system_clock, milliseconds>;

std::string format_rfc3339(ms_time t) {
  // Fixed width keeps string order equal to time order, which the ts index and filters rely on.
  constexpr auto earliest = sys_days{year{0} / January / 1};
  constexpr auto latest = sys_days{year{9999} / December / 31} + days{1} - milliseconds{1};
  t = std::clamp<ms_time>(t, earliest, latest);
  auto day = floor<days>(t);
  year_month_day ymd{day};
  hh_mm_ss<milliseconds> hms{t - day};
  // Written by hand rather than with fmt: this runs once for every decision row.
  std::string out = "0000-00-00T00:00:00.000Z";
  auto put = [&out](std::size_t pos, unsigned value, int width) {
    for (int i = width - 1; i >= 0; --i, value /= 10)
      out[pos + i] = static_cast<char>('0' + value % 10);
  };
  put(0, static_cast<unsigned>(static_cast<int>(ymd.year())), 4);
  put(5, static_cast<unsigned>(ymd.month()), 2);
  put(8, static_cast<unsigned>(ymd.day()), 2);
  put(11, static_cast<unsigned>(hms.hours().count()), 2);
  put(14, static_cast<unsigned>(hms.minutes().count()), 2);
  put(17, static_cast<unsigned>(hms.seconds().count()), 2);
  put(20, static_cast<unsigned>(hms.subseconds().count()), 3);
  return out;
}

// Reads exactly `width` digits at `pos`.
std::optional<int> read_digits(std::string_view text, std::size_t& pos, std::size_t width) {
  if (pos + width > text.size()) return std::nullopt;
  int value = 0;
  for (std::size_t i = 0; i < width; ++i) {
    char c = text[pos + i];
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  pos += width;
  return value;
}

bool read_char(std::string_view text, std::size_t& pos, std::string_view accepted) {
  if (pos >= text.size() || accepted.find(text[pos]) == std::string_view::npos) return false;
  ++pos;
  return true;
}

// RFC 3339 section 5.6 date-time: 2026-11-22T06:00:00[.123](Z|+02:00). The T may be lower-case or
// a space (section 5.6, note), fractions beyond milliseconds are truncated.
std::optional<ms_time> parse_rfc3339(std::string_view text) {
  std::size_t pos = 0;
  auto y = read_digits(text, pos, 4);
  if (!y || !read_char(text, pos, "-")) return std::nullopt;
  auto mo = read_digits(text, pos, 2);
  if (!mo || !read_char(text, pos, "-")) return std::nullopt;
  auto d = read_digits(text, pos, 2);
  if (!d || !read_char(text, pos, "Tt ")) return std::nullopt;
  auto h = read_digits(text, pos, 2);
  if (!h || !read_char(text, pos, ":")) return std::nullopt;
  auto mi = read_digits(text, pos, 2);
  if (!mi || !read_char(text, pos, ":")) return std::nullopt;
  auto s = read_digits(text, pos, 2);
  if (!s) return std::nullopt;
  int millis = 0;
  if (read_char(text, pos, ".")) {
    std::size_t digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (digits < 3) millis = millis * 10 + (text[pos] - '0');
      ++digits;
      ++pos;
    }
    if (digits == 0) return std::nullopt;
    for (; digits < 3; ++digits)
      millis *= 10;
  }
  minutes offset{0};
  if (!read_char(text, pos, "Zz")) {
    if (pos >= text.size()) return std::nullopt;
    int sign = text[pos] == '+' ? 1 : text[pos] == '-' ? -1 : 0;
    if (sign == 0) return std::nullopt;
    ++pos;
    auto oh = read_digits(text, pos, 2);
    if (!oh || !read_char(text, pos, ":")) return std::nullopt;
    auto om = read_digits(text, pos, 2);
    if (!om || *oh > 23 || *om > 59) return std::nullopt;
    offset = minutes{sign * (*oh * 60 + *om)};
  }
  if (pos != text.size()) return std::nullopt;

  year_month_day ymd{year{*y}, month{static_cast<unsigned>(*mo)}, day{static_cast<unsigned>(*d)}};
  // Second 60 is a leap second (section 5.7); it lands on the next minute's first second.
  if (!ymd.ok() || *h > 23 || *mi > 59 || *s > 60) return std::nullopt;
  return ms_time{sys_days{ymd}} + hours{*h} + minutes{*mi} + seconds{*s} + milliseconds{millis} -
         offset;
}

// "30s", "10m", "2h", "7d": a count of units ago.
std::optional<milliseconds> parse_age(std::string_view text) {
  // Ten digits of days is still far from overflowing milliseconds in 64 bits.
  if (text.size() < 2 || text.size() > 11) return std::nullopt;
  std::int64_t count = 0;
  for (char c : text.substr(0, text.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    count = count * 10 + (c - '0');
  }
  switch (text.back()) {
    case 's':
      return seconds{count};
    case 'm':
      return minutes{count};
    case 'h':
      return hours{count};
    case 'd':
      return days{count};
    default:
      return std::nullopt;
  }
}

}  // namespace

// --- opening ---

state_db::state_db(sqlite3* db) : db_(db), stmts_(std::make_unique<detail::statement_cache>()) {}

state_db::state_db(state_db&& other) noexcept
    : db_(std::exchange(other.db_, nullptr)), stmts_(std::move(other.stmts_)) {}

state_db& state_db::operator=(state_db&& other) noexcept {
  if (this != &other) {
    stmts_.reset();
    if (db_ != nullptr) sqlite3_close_v2(db_);
    db_ = std::exchange(other.db_, nullptr);
    stmts_ = std::move(other.stmts_);
  }
  return *this;
}

state_db::~state_db() {
  stmts_.reset();  // statements must be finalized before their connection closes
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

state_db state_db::open(const std::filesystem::path& file) {
  create_private_file(file);
  sqlite3* raw = nullptr;
  int rc =
      sqlite3_open_v2(file.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, nullptr);
  // SQLite hands out a handle even when opening fails; the state_db owns and closes it.
  state_db db(raw);
  if (rc != SQLITE_OK) {
    throw store_error(describe_failure(file.string(), "cannot open", rc,
                                       raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc)));
  }
  sqlite3_extended_result_codes(raw, 1);
  db.set_busy_timeout(default_busy_timeout);

  auto& cache = *db.stmts_;
  file_identity id;
  try {
    id = identify(raw, cache);
  } catch (const store_error&) {
    int code = sqlite3_extended_errcode(raw);
    if ((code & 0xff) == SQLITE_NOTADB || (code & 0xff) == SQLITE_CORRUPT) {
      throw store_error(fmt::format("{} is not a SQLite database ({}); {}", file.string(),
                                    sqlite3_errmsg(raw), advice_for(code)));
    }
    throw;
  }
  bool fresh = check_identity(raw, id);

  // WAL lets sqlite3 clients and the CLI read while the proxy writes. The mode is stored in the
  // file, so this is a no-op after the first open.
  {
    statement wal(raw, cache, "PRAGMA journal_mode = WAL");
    if (wal.step("cannot switch to WAL mode") && wal.text(0) != "wal") {
      throw store_error(fmt::format(
          "{}: cannot switch to WAL mode (the journal mode stays {}); put SBX_HOME on a local "
          "file system",
          file.string(), wal.text(0)));
    }
  }
  // In WAL mode NORMAL loses at most the last transactions on power failure, never consistency.
  statement(raw, cache, "PRAGMA synchronous = NORMAL").run("cannot set synchronous mode");

  if (fresh) {
    write_transaction tx(raw, cache, "cannot create the schema");
    // Another process may have created the schema between our check and our write lock.
    if (check_identity(raw, identify(raw, cache))) {
      if (sqlite3_exec(raw, schema_script().c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
        fail(raw, "cannot create the schema");
      }
    }
    tx.commit();
  }
  drop_obsolete_indexes(raw, cache);
  restrict_permissions(file);
  return db;
}

void state_db::set_busy_timeout(std::chrono::milliseconds timeout) {
  sqlite3_busy_timeout(db_, static_cast<int>(timeout.count()));
}

// --- rules ---

std::vector<policy::rule> state_db::load_rules() {
  statement s(
      db_, *stmts_,
      "SELECT id, sandbox, decision, resource, methods, path, source FROM rules ORDER BY id");
  std::vector<policy::rule> rules;
  while (s.step("cannot read rules")) {
    auto id = s.integer(0);
    auto act = s.text(2) == "allow" ? policy::action::allow : policy::action::deny;
    auto source = s.text(6) == "preset" ? policy::rule_source::preset : policy::rule_source::local;
    try {
      rules.push_back(
          policy::make_rule(id, s.text(1), act, s.text(3), s.text(4), s.text(5), source));
    } catch (const policy::rule_error& e) {
      throw store_error(fmt::format(
          "{}: stored rule {} ({} {}) is no longer valid: {}; remove it with `sbx policy rm --id "
          "{}`",
          file_name(db_), id, s.text(2), s.text(3), e.what(), id));
    }
  }
  return rules;
}

namespace {

std::int64_t insert_rule(sqlite3* db, detail::statement_cache& cache, const policy::rule& r,
                         policy::rule_source source, const std::string& created) {
  auto resource = r.res.text();
  auto methods = join_methods(r.methods);
  statement s(db, cache,
              "INSERT INTO rules (sandbox, decision, resource, methods, path, source, created) "
              "VALUES (?, ?, ?, ?, ?, ?, ?)");
  s.bind(1, r.sandbox)
      .bind(2, policy::to_string(r.act))
      .bind(3, resource)
      .bind(4, methods)
      .bind(5, r.path)
      .bind(6, policy::to_string(source))
      .bind(7, created);
  s.run("cannot add a rule");
  return sqlite3_last_insert_rowid(db);
}

}  // namespace

std::vector<std::int64_t> state_db::add_rules(const std::vector<policy::rule>& rules) {
  std::vector<std::int64_t> ids;
  if (rules.empty()) return ids;
  auto created = now_rfc3339();
  write_transaction tx(db_, *stmts_, "cannot add rules");
  for (const auto& r : rules)
    ids.push_back(insert_rule(db_, *stmts_, r, r.source, created));
  bump_rules_version(db_, *stmts_);
  tx.commit();
  return ids;
}

bool state_db::remove_rule(std::int64_t id) {
  write_transaction tx(db_, *stmts_, "cannot remove a rule");
  statement(db_, *stmts_, "DELETE FROM rules WHERE id = ?").bind(1, id).run("cannot remove a rule");
  bool removed = sqlite3_changes(db_) > 0;
  if (removed) bump_rules_version(db_, *stmts_);
  tx.commit();
  return removed;
}

int state_db::remove_rules_for(std::string_view resource_text, std::string_view sandbox) {
  // Stored resources are canonical, so "Example.COM" must find "example.com". Text that does not
  // parse cannot match any stored rule and is looked up as given.
  std::string resource(resource_text);
  try {
    resource = policy::parse_resource(resource_text).text();
  } catch (const policy::rule_error&) {
  }
  write_transaction tx(db_, *stmts_, "cannot remove rules");
  statement(db_, *stmts_, "DELETE FROM rules WHERE resource = ? AND sandbox = ?")
      .bind(1, resource)
      .bind(2, sandbox)
      .run("cannot remove rules");
  int removed = sqlite3_changes(db_);
  if (removed > 0) bump_rules_version(db_, *stmts_);
  tx.commit();
  return removed;
}

void state_db::replace_presets(const std::vector<policy::rule>& rules,
                               std::string_view preset_name) {
  auto created = now_rfc3339();
  write_transaction tx(db_, *stmts_, "cannot replace the preset rules");
  statement(db_, *stmts_, "DELETE FROM rules WHERE source = 'preset'")
      .run("cannot remove the old preset rules");
  for (const auto& r : rules)
    insert_rule(db_, *stmts_, r, policy::rule_source::preset, created);
  statement(db_, *stmts_, "INSERT OR REPLACE INTO meta (key, value) VALUES ('preset', ?)")
      .bind(1, preset_name)
      .run("cannot record the preset name");
  bump_rules_version(db_, *stmts_);
  tx.commit();
}

std::optional<std::string> state_db::preset_name() {
  statement s(db_, *stmts_, "SELECT value FROM meta WHERE key = 'preset'");
  if (!s.step("cannot read the preset name")) return std::nullopt;
  return s.text(0);
}

std::int64_t state_db::rules_version() {
  statement s(db_, *stmts_, "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'rules_version'");
  return s.step("cannot read rules_version") ? s.integer(0) : 0;
}

// --- sandboxes ---

void state_db::add_sandbox(std::string_view name, std::string_view token_hash) {
  validate_sandbox_name(name);
  auto created = now_rfc3339();
  write_transaction tx(db_, *stmts_, "cannot add a sandbox");
  try {
    statement(db_, *stmts_, "INSERT INTO sandboxes (name, token_hash, created) VALUES (?, ?, ?)")
        .bind(1, name)
        .bind(2, token_hash)
        .bind(3, created)
        .run("cannot add a sandbox");
  } catch (const store_error&) {
    if (sqlite3_extended_errcode(db_) == SQLITE_CONSTRAINT_PRIMARYKEY) {
      throw store_error(fmt::format(
          "sandbox '{}' already exists; pick another name, or remove it first with `sbx sandbox rm "
          "{}`",
          name, name));
    }
    throw;
  }
  bump_rules_version(db_, *stmts_);
  tx.commit();
}

bool state_db::replace_token_hash(std::string_view name, std::string_view token_hash) {
  write_transaction tx(db_, *stmts_, "cannot replace a sandbox token");
  statement(db_, *stmts_, "UPDATE sandboxes SET token_hash = ? WHERE name = ?")
      .bind(1, token_hash)
      .bind(2, name)
      .run("cannot replace a sandbox token");
  const bool changed = sqlite3_changes(db_) > 0;
  if (changed) bump_rules_version(db_, *stmts_);
  tx.commit();
  return changed;
}

bool state_db::remove_sandbox(std::string_view name) {
  write_transaction tx(db_, *stmts_, "cannot remove a sandbox");
  statement(db_, *stmts_, "DELETE FROM sandboxes WHERE name = ?")
      .bind(1, name)
      .run("cannot remove a sandbox");
  bool removed = sqlite3_changes(db_) > 0;
  // Rules without their sandbox could never match again, and would silently apply to a new sandbox
  // that reuses the name.
  statement(db_, *stmts_, "DELETE FROM rules WHERE sandbox = ?")
      .bind(1, name)
      .run("cannot remove the sandbox's rules");
  bool rules_removed = sqlite3_changes(db_) > 0;
  if (removed || rules_removed) bump_rules_version(db_, *stmts_);
  tx.commit();
  return removed;
}

std::vector<sandbox_info> state_db::sandboxes() {
  statement s(db_, *stmts_, "SELECT name, created FROM sandboxes ORDER BY name");
  std::vector<sandbox_info> result;
  while (s.step("cannot list sandboxes"))
    result.push_back({s.text(0), s.text(1)});
  return result;
}

std::optional<std::string> state_db::token_hash(std::string_view name) {
  statement s(db_, *stmts_, "SELECT token_hash FROM sandboxes WHERE name = ?");
  s.bind(1, name);
  if (!s.step("cannot read a sandbox")) return std::nullopt;
  return s.text(0);
}

// --- decisions ---

void state_db::insert_decisions(const std::vector<decision_row>& rows) {
  if (rows.empty()) return;
  std::string now;
  write_transaction tx(db_, *stmts_, "cannot write decisions");
  std::size_t done = 0;
  auto insert = [&](std::size_t count) {
    statement s(db_, *stmts_, insert_decisions_sql(count));
    for (std::size_t i = 0; i < count; ++i) {
      const auto& row = rows[done + i];
      int base = static_cast<int>(i) * columns_per_decision;
      if (row.ts.empty() && now.empty()) now = now_rfc3339();
      s.bind(base + 1, row.ts.empty() ? std::string_view(now) : std::string_view(row.ts))
          .bind(base + 2, row.sandbox)
          .bind(base + 3, row.client)
          .bind(base + 4, row.method)
          .bind(base + 5, row.scheme)
          .bind(base + 6, row.host)
          .bind(base + 7, std::int64_t{row.port})
          .bind(base + 8, row.path)
          .bind(base + 9, row.route)
          .bind(base + 10, row.decision)
          .bind(base + 11, row.rule)
          .bind(base + 12, row.reason)
          .bind(base + 13, row.credential)
          .bind(base + 14, std::int64_t{row.status})
          .bind(base + 15, row.bytes_up)
          .bind(base + 16, row.bytes_down)
          .bind(base + 17, row.duration_ms);
    }
    s.run("cannot write decisions");
    done += count;
  };
  while (rows.size() - done >= rows_per_insert)
    insert(rows_per_insert);
  while (done < rows.size())
    insert(1);
  tx.commit();
}

std::vector<decision_row> state_db::query_decisions(const decision_filter& f) {
  auto sql = fmt::format("SELECT {} FROM decisions{}", decision_columns, where_clause(f));
  // With a limit the newest rows are wanted, so the query walks backwards and the result is
  // turned around to read oldest first like a log.
  sql += f.limit > 0 ? " ORDER BY id DESC LIMIT ?" : " ORDER BY id";
  statement s(db_, *stmts_, sql);
  int next = bind_filter(s, f);
  if (f.limit > 0) s.bind(next, f.limit);
  std::vector<decision_row> rows;
  while (s.step("cannot read decisions"))
    rows.push_back(read_decision(s));
  if (f.limit > 0) std::reverse(rows.begin(), rows.end());
  return rows;
}

std::vector<host_summary> state_db::summarize_decisions(const decision_filter& f) {
  auto sql = fmt::format(
      "SELECT sandbox, host, route, decision, rule, reason, credential, max(ts) AS last_seen, "
      "count(*) FROM decisions{} GROUP BY sandbox, host, route, decision, rule, reason, credential "
      "ORDER BY decision = 'deny' DESC, last_seen DESC, host, sandbox",
      where_clause(f));
  if (f.limit > 0) sql += " LIMIT ?";
  statement s(db_, *stmts_, sql);
  int next = bind_filter(s, f);
  if (f.limit > 0) s.bind(next, f.limit);
  std::vector<host_summary> groups;
  while (s.step("cannot summarize decisions")) {
    groups.push_back({.sandbox = s.text(0),
                      .host = s.text(1),
                      .route = s.text(2),
                      .decision = s.text(3),
                      .rule = s.text(4),
                      .reason = s.text(5),
                      .credential = s.text(6),
                      .last_seen = s.text(7),
                      .count = s.integer(8)});
  }
  return groups;
}

int state_db::prune_decisions_before(std::string_view ts) {
  int removed = 0;
  for (;;) {
    write_transaction tx(db_, *stmts_, "cannot prune decisions");
    statement(db_, *stmts_,
              "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions WHERE ts < ? LIMIT ?)")
        .bind(1, ts)
        .bind(2, std::int64_t{prune_chunk_rows})
        .run("cannot prune decisions");
    int chunk = sqlite3_changes(db_);
    tx.commit();
    removed += chunk;
    if (chunk < prune_chunk_rows) return removed;
  }
}

// --- time ---

std::string now_rfc3339() {
  return format_rfc3339(floor<milliseconds>(system_clock::now()));
}

std::string parse_since(std::string_view text) {
  if (auto age = parse_age(text)) {
    auto now = floor<milliseconds>(system_clock::now());
    // Ages reaching before year 0 are clamped by format_rfc3339.
    return format_rfc3339(now - *age);
  }
  if (auto t = parse_rfc3339(text)) return format_rfc3339(*t);
  throw store_error(
      fmt::format("{} is not a time: use an age such as 30s, 10m, 2h or 7d, or an RFC 3339 time "
                  "such as 2026-11-22T06:00:00Z or 2026-11-22T08:00:00.000+02:00",
                  quoted_input(text)));
}

}  // namespace sbx::store
