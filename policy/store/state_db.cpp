// Opening policy.db: refusing files that are not ours, creating the schema, upgrading older ones.
#include "policy/store/state_db.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include <fmt/format.h>

#include "policy/store/detail/sqlite.hpp"

namespace sbx::store {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono;
using detail::advice_for;
using detail::describe_failure;
using detail::fail;
using detail::file_name;
using detail::read_integer;
using detail::statement;
using detail::write_transaction;

// PRAGMA user_version of the schema below; a newer file is refused rather than misread, an older
// one is upgraded in place (upgrade_schema).
//   1  meta, rules, sandboxes, decisions
//   2  + sandbox_sources (sbx sandbox add --source)
constexpr int current_schema_version = 2;
// PRAGMA application_id ("sbxp"): tells our file apart from any other SQLite database.
constexpr int sbx_application_id = 0x73627870;
constexpr milliseconds default_busy_timeout{5000};
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
CREATE TABLE sandbox_sources (
  sandbox TEXT NOT NULL,
  network TEXT NOT NULL,
  PRIMARY KEY (sandbox, network)
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

// Each step takes a file from version N to N + 1; the tables it adds are written exactly as in
// schema_sql, so an upgraded file and a fresh one are the same.
constexpr const char* upgrade_steps[] = {
    // 1 -> 2: source addresses bound to sandboxes.
    "CREATE TABLE sandbox_sources (\n"
    "  sandbox TEXT NOT NULL,\n"
    "  network TEXT NOT NULL,\n"
    "  PRIMARY KEY (sandbox, network)\n"
    ");\n",
};
static_assert(std::size(upgrade_steps) == current_schema_version - 1);

void upgrade_schema(sqlite3* db, detail::statement_cache& cache) {
  if (read_integer(db, cache, "PRAGMA user_version", "cannot read the schema version") >=
      current_schema_version) {
    return;
  }
  write_transaction tx(db, cache, "cannot upgrade the schema");
  // Another process may have upgraded the file between the check and the write lock.
  auto version = read_integer(db, cache, "PRAGMA user_version", "cannot read the schema version");
  for (; version < current_schema_version; ++version) {
    if (sqlite3_exec(db, upgrade_steps[version - 1], nullptr, nullptr, nullptr) != SQLITE_OK) {
      fail(db, fmt::format("cannot upgrade the schema from version {}", version));
    }
  }
  auto stamp = fmt::format(
      "PRAGMA user_version = {0};\n"
      "UPDATE meta SET value = '{0}' WHERE key = 'schema_version';\n",
      current_schema_version);
  if (sqlite3_exec(db, stamp.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    fail(db, "cannot record the schema version");
  }
  tx.commit();
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
  upgrade_schema(raw, cache);
  drop_obsolete_indexes(raw, cache);
  restrict_permissions(file);
  return db;
}

void state_db::set_busy_timeout(std::chrono::milliseconds timeout) {
  sqlite3_busy_timeout(db_, static_cast<int>(timeout.count()));
}
}  // namespace sbx::store
