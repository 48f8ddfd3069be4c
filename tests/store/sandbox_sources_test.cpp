// Source addresses bound to sandboxes (`sbx sandbox add NAME --source CIDR`), and the upgrade of
// files written before they existed.
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "policy/store/sandbox_token.hpp"
#include "policy/store/state_db.hpp"
#include "tests/store/test_support.hpp"

using namespace sbx::store;
using sbx::store::test::error_of;
using sbx::store::test::raw_db;
using sbx::store::test::temp_dir;

namespace {

std::vector<sbx::policy::ip_network> nets(std::initializer_list<const char*> texts) {
  std::vector<sbx::policy::ip_network> out;
  for (const char* t : texts)
    out.push_back(parse_source_network(t));
  return out;
}

std::vector<std::string> texts(const std::vector<sbx::policy::ip_network>& networks) {
  std::vector<std::string> out;
  for (const auto& n : networks)
    out.push_back(n.to_string());
  return out;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("a --source is an address or CIDR without a port") {
  CHECK(parse_source_network("10.0.3.7").to_string() == "10.0.3.7/32");
  CHECK(parse_source_network("10.0.3.0/24").to_string() == "10.0.3.0/24");
  CHECK(parse_source_network("fd00::/64").to_string() == "fd00::/64");
  CHECK(parse_source_network("[::1]").to_string() == "::1/128");
  for (const char* bad : {"example.com", "10.0.0.1:80", "**", "10.0.0.0/33", "", "*.x.test"}) {
    CAPTURE(bad);
    auto why = error_of([&] { (void)parse_source_network(bad); });
    CHECK(contains(why, "--source"));
    CHECK(contains(why, "CIDR such as"));
  }
}

TEST_CASE("sources are stored with the sandbox, listed, and removed with it") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  db.add_sandbox("vm", hash_sandbox_token("a"), nets({"10.0.3.0/24", "fd00:1::5"}));
  db.add_sandbox("plain", hash_sandbox_token("b"));
  auto list = db.sandboxes();
  REQUIRE(list.size() == 2);
  CHECK(list[0].name == "plain");
  CHECK(list[0].sources.empty());
  CHECK(texts(list[1].sources) == std::vector<std::string>{"10.0.3.0/24", "fd00:1::5/128"});

  const auto before = db.rules_version();
  CHECK(db.remove_sandbox("vm"));
  CHECK(db.rules_version() > before);
  raw_db raw(dir.db());
  CHECK(raw.integer("SELECT count(*) FROM sandbox_sources") == 0);
  // The address is free again.
  db.add_sandbox("vm2", hash_sandbox_token("c"), nets({"10.0.3.9"}));
  CHECK(texts(db.sandboxes()[1].sources) == std::vector<std::string>{"10.0.3.9/32"});
}

TEST_CASE("overlapping sources of two sandboxes are refused, and nothing is added") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  db.add_sandbox("a", hash_sandbox_token("a"), nets({"10.0.3.0/24"}));
  for (const char* clash : {"10.0.3.7", "10.0.0.0/16", "10.0.3.0/24", "::ffff:10.0.3.1"}) {
    CAPTURE(clash);
    auto why = error_of([&] { db.add_sandbox("b", hash_sandbox_token("b"), nets({clash})); });
    CHECK(contains(why, "overlaps 10.0.3.0/24 of sandbox 'a'"));
    CHECK(db.token_hash("b") == std::nullopt);
  }
  // Next to it is fine.
  db.add_sandbox("b", hash_sandbox_token("b"), nets({"10.0.4.0/24"}));
  CHECK(db.sandboxes().size() == 2);
}

TEST_CASE("a schema version 1 file is upgraded in place and keeps its contents") {
  temp_dir dir;
  {
    auto db = state_db::open(dir.db());
    db.add_sandbox("dev", hash_sandbox_token("t"));
  }
  {
    // What a version 1 file looks like: no sandbox_sources table.
    raw_db raw(dir.db());
    raw.exec("DROP TABLE sandbox_sources");
    raw.exec("PRAGMA user_version = 1");
    raw.exec("UPDATE meta SET value = '1' WHERE key = 'schema_version'");
  }
  auto db = state_db::open(dir.db());
  raw_db raw(dir.db());
  CHECK(raw.integer("PRAGMA user_version") == 2);
  CHECK(raw.text("SELECT value FROM meta WHERE key = 'schema_version'") == "2");
  CHECK(db.token_hash("dev") == hash_sandbox_token("t"));
  db.add_sandbox("vm", hash_sandbox_token("v"), nets({"10.9.0.1"}));
  CHECK(db.sandboxes().size() == 2);
  // Opening again is a no-op.
  auto again = state_db::open(dir.db());
  CHECK(again.sandboxes().size() == 2);
}
