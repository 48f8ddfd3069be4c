// SQLite plumbing of state_db (see detail/sqlite.hpp).
#include "policy/store/detail/sqlite.hpp"

#include <fmt/format.h>

namespace sbx::store::detail {

std::string file_name(sqlite3* db) {
  const char* name = sqlite3_db_filename(db, "main");
  return name != nullptr && *name != '\0' ? name : ":memory:";
}

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

void bump_rules_version(sqlite3* db, statement_cache& cache) {
  statement(db, cache,
            "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'rules_version'")
      .run("cannot update rules_version");
}

std::int64_t read_integer(sqlite3* db, statement_cache& cache, const std::string& sql,
                          std::string_view what) {
  statement s(db, cache, sql);
  return s.step(what) ? s.integer(0) : 0;
}

std::string quoted_input(std::string_view text) {
  std::string out = "'";
  for (char c : text.substr(0, 64)) {
    out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  if (text.size() > 64) out += "...";
  return out + "'";
}

}  // namespace sbx::store::detail
