// Sandbox identities in policy.db: names, token hashes, and the source addresses bound to them.
#include <fmt/format.h>

#include "policy/store/detail/sqlite.hpp"
#include "policy/store/sandbox_token.hpp"
#include "policy/store/state_db.hpp"

namespace sbx::store {
namespace {

using detail::bump_rules_version;
using detail::statement;
using detail::write_transaction;

bool overlap(const policy::ip_network& a, const policy::ip_network& b) {
  // Two prefixes overlap exactly when one contains the other's base address.
  return a.contains(b.base) || b.contains(a.base);
}

struct stored_source {
  std::string sandbox;
  policy::ip_network network;
};

std::vector<stored_source> all_sources(sqlite3* db, detail::statement_cache& cache) {
  statement s(db, cache, "SELECT sandbox, network FROM sandbox_sources ORDER BY sandbox, network");
  std::vector<stored_source> out;
  while (s.step("cannot read sandbox sources")) {
    try {
      out.push_back({s.text(0), parse_source_network(s.text(1))});
    } catch (const store_error& e) {
      throw store_error(
          fmt::format("{}: sandbox '{}' has a stored source that is no longer valid "
                      "({}); remove the sandbox with `sbx sandbox rm {}`",
                      detail::file_name(db), s.text(0), e.what(), s.text(0)));
    }
  }
  return out;
}

}  // namespace

policy::ip_network parse_source_network(std::string_view text) {
  const auto problem = [&](std::string_view why) {
    return store_error(fmt::format(
        "--source {}: {}; give an IP address or CIDR such as 10.0.3.7, 10.0.3.0/24 or fd00::/64",
        detail::quoted_input(text), why));
  };
  policy::resource res;
  try {
    res = policy::parse_resource(text);
  } catch (const policy::rule_error& e) {
    throw problem(e.what());
  }
  if (res.k != policy::resource::kind::network) throw problem("not an IP address or CIDR");
  if (res.port) throw problem("a source has no port");
  return res.network;
}

void state_db::add_sandbox(std::string_view name, std::string_view token_hash,
                           const std::vector<policy::ip_network>& sources) {
  validate_sandbox_name(name);
  auto created = now_rfc3339();
  write_transaction tx(db_, *stmts_, "cannot add a sandbox");
  // Checked inside the write transaction, so two `sbx sandbox add` at once cannot both claim an
  // address.
  for (const auto& taken : all_sources(db_, *stmts_)) {
    if (taken.sandbox == name) continue;
    for (const auto& wanted : sources) {
      if (overlap(wanted, taken.network)) {
        throw store_error(fmt::format(
            "source {} overlaps {} of sandbox '{}': an address can belong to one sandbox only; "
            "pick another range, or remove that sandbox with `sbx sandbox rm {}`",
            wanted.to_string(), taken.network.to_string(), taken.sandbox, taken.sandbox));
      }
    }
  }
  try {
    statement(db_, *stmts_, "INSERT INTO sandboxes (name, token_hash, created) VALUES (?, ?, ?)")
        .bind(1, name)
        .bind(2, token_hash)
        .bind(3, created)
        .run("cannot add a sandbox");
    for (const auto& source : sources) {
      const auto text = source.to_string();
      statement(db_, *stmts_,
                "INSERT OR IGNORE INTO sandbox_sources (sandbox, network) VALUES (?, ?)")
          .bind(1, name)
          .bind(2, text)
          .run("cannot add a sandbox source");
    }
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
  statement(db_, *stmts_, "DELETE FROM sandbox_sources WHERE sandbox = ?")
      .bind(1, name)
      .run("cannot remove the sandbox's sources");
  bool sources_removed = sqlite3_changes(db_) > 0;
  if (removed || rules_removed || sources_removed) bump_rules_version(db_, *stmts_);
  tx.commit();
  return removed;
}

std::vector<sandbox_info> state_db::sandboxes() {
  statement s(db_, *stmts_, "SELECT name, created FROM sandboxes ORDER BY name");
  std::vector<sandbox_info> result;
  while (s.step("cannot list sandboxes"))
    result.push_back({s.text(0), s.text(1), {}});
  for (auto& source : all_sources(db_, *stmts_)) {
    for (auto& info : result) {
      if (info.name == source.sandbox) info.sources.push_back(source.network);
    }
  }
  return result;
}

std::optional<std::string> state_db::token_hash(std::string_view name) {
  statement s(db_, *stmts_, "SELECT token_hash FROM sandboxes WHERE name = ?");
  s.bind(1, name);
  if (!s.step("cannot read a sandbox")) return std::nullopt;
  return s.text(0);
}
}  // namespace sbx::store
