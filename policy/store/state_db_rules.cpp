// Rules in policy.db: load, add, remove, presets, and the version the proxy polls.
#include <fmt/format.h>

#include "policy/store/detail/sqlite.hpp"
#include "policy/store/state_db.hpp"

namespace sbx::store {
namespace {

using detail::bump_rules_version;
using detail::statement;
using detail::write_transaction;

std::string join_methods(const std::vector<std::string>& methods) {
  std::string csv;
  for (const auto& m : methods) {
    if (!csv.empty()) csv += ',';
    csv += m;
  }
  return csv;
}

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
          detail::file_name(db_), id, s.text(2), s.text(3), e.what(), id));
    }
  }
  return rules;
}

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
}  // namespace sbx::store
