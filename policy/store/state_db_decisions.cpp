// The decision log's table: batched inserts, filtered queries, the grouped view, pruning.
#include <algorithm>

#include <fmt/format.h>

#include "policy/store/detail/sqlite.hpp"
#include "policy/store/state_db.hpp"

namespace sbx::store {
namespace {

using detail::statement;
using detail::write_transaction;

// Pruning deletes in chunks, each its own transaction, so the proxy's writer never waits long.
constexpr int prune_chunk_rows = 10000;
// Rows per INSERT statement when writing a batch of decisions. Per-statement costs (the VDBE
// program, the AUTOINCREMENT counter) then count once per this many rows: about 1.3x the rate of
// one row per statement. 64 x 17 parameters stays far below SQLite's limit of 32766.
constexpr std::size_t rows_per_insert = 64;
constexpr int columns_per_decision = 17;  // every column but id

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

}  // namespace

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

}  // namespace sbx::store
