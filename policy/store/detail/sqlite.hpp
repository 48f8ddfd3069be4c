// SQLite plumbing shared by the files of state_db: cached prepared statements, write
// transactions, and error messages that say what to do. Private to sbx_store.
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>

#include "policy/store/state_db.hpp"

namespace sbx::store::detail {

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

[[nodiscard]] std::string file_name(sqlite3* db);
// What a user can do about each kind of failure.
[[nodiscard]] std::string_view advice_for(int code);
[[nodiscard]] std::string describe_failure(const std::string& file, std::string_view what, int code,
                                           const char* sqlite_message);
[[noreturn]] void fail(sqlite3* db, std::string_view what);

// One cached prepared statement, reset and unbound when this handle goes out of scope so that no
// statement keeps a read transaction open between calls.
class statement {
 public:
  statement(sqlite3* db, statement_cache& cache, const std::string& sql) : db_(db) {
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
  write_transaction(sqlite3* db, statement_cache& cache, std::string_view what)
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
  statement_cache& cache_;
  std::string what_;
  bool committed_ = false;
};

// Every reader of rules or sandboxes (the running proxy) reloads when this number changes.
void bump_rules_version(sqlite3* db, statement_cache& cache);
// The first column of the first row of `sql`, or 0.
[[nodiscard]] std::int64_t read_integer(sqlite3* db, statement_cache& cache, const std::string& sql,
                                        std::string_view what);
// The user typed it; keep messages printable and short.
[[nodiscard]] std::string quoted_input(std::string_view text);

}  // namespace sbx::store::detail
