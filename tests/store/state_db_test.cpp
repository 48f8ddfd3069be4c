#include "policy/store/state_db.hpp"

#include <sys/stat.h>
#include <time.h>

#include <chrono>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "policy/store/sandbox_token.hpp"
#include "tests/store/test_support.hpp"

namespace {

using namespace sbx::store;
using sbx::policy::action;
using sbx::policy::make_rule;
using sbx::policy::rule_source;
using sbx::store::test::error_of;
using sbx::store::test::raw_db;
using sbx::store::test::temp_dir;

unsigned mode_of(const std::filesystem::path& file) {
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  return st.st_mode & 0777;
}

decision_row make_row(std::string ts, std::string sandbox, std::string host, std::string decision,
                      std::string rule = "default", std::string reason = "r",
                      std::string route = "tunnel") {
  decision_row row;
  row.ts = std::move(ts);
  row.sandbox = std::move(sandbox);
  row.client = "127.0.0.1:40000";
  row.method = "CONNECT";
  row.scheme = "https";
  row.host = std::move(host);
  row.port = 443;
  row.route = std::move(route);
  row.decision = std::move(decision);
  row.rule = std::move(rule);
  row.reason = std::move(reason);
  return row;
}

std::vector<std::int64_t> ids_of(const std::vector<decision_row>& rows) {
  std::vector<std::int64_t> ids;
  for (const auto& r : rows)
    ids.push_back(r.id);
  return ids;
}

std::vector<std::string> resources_of(const std::vector<sbx::policy::rule>& rules) {
  std::vector<std::string> texts;
  for (const auto& r : rules)
    texts.push_back(r.res.text());
  return texts;
}

// Milliseconds since the epoch of a normalised "YYYY-MM-DDTHH:MM:SS.mmmZ".
std::int64_t epoch_ms(const std::string& ts) {
  std::tm tm{};
  int ms = 0;
  REQUIRE(std::sscanf(ts.c_str(), "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon,
                      &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms) == 7);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return static_cast<std::int64_t>(timegm(&tm)) * 1000 + ms;
}

std::int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

const std::regex rfc3339_ms(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)");

}  // namespace

TEST_CASE("open creates the schema, in WAL mode, readable only by the owner") {
  temp_dir dir;
  ::umask(022);  // what most users have: SQLite alone would create the file 0644
  auto db = state_db::open(dir.db());

  CHECK(mode_of(dir.db()) == 0600);
  REQUIRE(std::filesystem::exists(dir.path / "policy.db-wal"));
  CHECK(mode_of(dir.path / "policy.db-wal") == 0600);
  CHECK(mode_of(dir.path / "policy.db-shm") == 0600);

  raw_db raw(dir.db());
  CHECK(raw.text("PRAGMA journal_mode") == "wal");
  CHECK(raw.integer("PRAGMA user_version") == 2);
  CHECK(raw.text("SELECT value FROM meta WHERE key = 'schema_version'") == "2");
  CHECK(raw.integer("SELECT value FROM meta WHERE key = 'rules_version'") == 0);
  CHECK(raw.text("SELECT group_concat(name, ' ') FROM (SELECT name FROM pragma_table_info("
                 "'decisions') ORDER BY cid)") ==
        "id ts sandbox client method scheme host port path route decision rule reason "
        "credential status bytes_up bytes_down duration_ms");
  CHECK(raw.text("SELECT group_concat(name, ' ') FROM (SELECT name FROM pragma_table_info("
                 "'rules') ORDER BY cid)") ==
        "id sandbox decision resource methods path source created");
  CHECK(raw.text("SELECT group_concat(name, ' ') FROM (SELECT name FROM pragma_table_info("
                 "'sandboxes') ORDER BY cid)") == "name token_hash created");
  CHECK(raw.text("SELECT group_concat(name, ' ') FROM (SELECT name FROM pragma_table_info("
                 "'sandbox_sources') ORDER BY cid)") == "sandbox network");
  CHECK(raw.text("SELECT group_concat(name, ' ') FROM (SELECT name FROM pragma_index_list("
                 "'decisions') ORDER BY name)") == "decisions_ts");
  CHECK(raw.integer("SELECT count(*) FROM pragma_index_info('decisions_ts') WHERE name = 'ts'") ==
        1);
  CHECK(db.preset_name() == std::nullopt);
  CHECK(db.rules_version() == 0);
}

TEST_CASE("reopening keeps rules, sandboxes, decisions and the rules version") {
  temp_dir dir;
  std::int64_t version = 0;
  {
    auto db = state_db::open(dir.db());
    db.add_rule(make_rule(0, "", action::allow, "example.com"));
    db.add_sandbox("dev", hash_sandbox_token("t"));
    db.insert_decisions({make_row("2026-11-22T06:00:00.000Z", "dev", "example.com", "allow")});
    version = db.rules_version();
  }
  auto db = state_db::open(dir.db());
  CHECK(resources_of(db.load_rules()) == std::vector<std::string>{"example.com"});
  CHECK(db.token_hash("dev") == hash_sandbox_token("t"));
  CHECK(db.query_decisions({}).size() == 1);
  CHECK(db.rules_version() == version);
  CHECK(version == 2);
}

TEST_CASE("reopening drops the unused host index of older files and keeps their rows") {
  temp_dir dir;
  {
    auto db = state_db::open(dir.db());
    db.insert_decisions({make_row("2026-11-22T06:00:00.000Z", "dev", "example.com", "allow")});
  }
  {
    raw_db raw(dir.db());
    raw.exec("CREATE INDEX decisions_host ON decisions (host)");  // as files before 2026-11-22
  }
  auto db = state_db::open(dir.db());
  raw_db raw(dir.db());
  CHECK(raw.integer("SELECT count(*) FROM sqlite_master WHERE name = 'decisions_host'") == 0);
  CHECK(raw.integer("PRAGMA user_version") == 2);
  CHECK(db.query_decisions({}).size() == 1);
}

TEST_CASE("a file that is not a database is refused and left as it was") {
  temp_dir dir;
  std::string garbage;
  for (int i = 0; i < 512; ++i)
    garbage += "not a database, just bytes\n";
  sbx::store::test::write_bytes(dir.db(), garbage);
  ::chmod(dir.db().c_str(), 0644);

  auto message = error_of([&] { (void)state_db::open(dir.db()); });
  CHECK(message.find(dir.db().string()) != std::string::npos);
  CHECK(message.find("file is not a database") != std::string::npos);
  CHECK(message.find("move it aside or run `sbx reset -f`") != std::string::npos);
  CHECK(sbx::store::test::read_bytes(dir.db()) == garbage);
  CHECK(mode_of(dir.db()) == 0644);
  CHECK_FALSE(std::filesystem::exists(dir.path / "policy.db-wal"));
}

TEST_CASE("a SQLite database that sbx did not create is refused and left as it was") {
  temp_dir dir;
  {
    raw_db raw(dir.db());
    raw.exec(
        "CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT); "
        "INSERT INTO photos (name) VALUES ('cat.jpg')");
  }
  auto before = sbx::store::test::read_bytes(dir.db());
  auto message = error_of([&] { (void)state_db::open(dir.db()); });
  CHECK(message.find(dir.db().string()) != std::string::npos);
  CHECK(message.find("did not create") != std::string::npos);
  CHECK(message.find("move it aside or run `sbx reset -f`") != std::string::npos);
  CHECK(sbx::store::test::read_bytes(dir.db()) == before);
}

TEST_CASE("a database from a newer sbx is refused") {
  temp_dir dir;
  (void)state_db::open(dir.db());
  {
    raw_db raw(dir.db());
    raw.exec("PRAGMA user_version = 99");
  }
  auto message = error_of([&] { (void)state_db::open(dir.db()); });
  CHECK(message.find("newer sbx") != std::string::npos);
  CHECK(message.find(dir.db().string()) != std::string::npos);
}

TEST_CASE("a directory that does not exist is a readable error") {
  temp_dir dir;
  auto file = dir.path / "missing" / "policy.db";
  auto message = error_of([&] { (void)state_db::open(file); });
  CHECK(message.find(file.string()) != std::string::npos);
  CHECK(message.find("No such file or directory") != std::string::npos);
}

TEST_CASE("rules: add, load, remove; every change bumps the rules version") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  auto v0 = db.rules_version();

  auto ids = db.add_rules({
      make_rule(0, "", action::allow, "**.npmjs.org"),
      make_rule(0, "dev", action::deny, "Example.COM:8443", "get,post", "/v1/**"),
      make_rule(0, "", action::allow, "10.0.0.0/8"),
  });
  REQUIRE(ids.size() == 3);
  CHECK(ids[0] < ids[1]);
  CHECK(ids[1] < ids[2]);
  auto v1 = db.rules_version();
  CHECK(v1 > v0);

  auto rules = db.load_rules();
  REQUIRE(rules.size() == 3);
  CHECK(rules[1].id == ids[1]);
  CHECK(rules[1].sandbox == "dev");
  CHECK(rules[1].act == action::deny);
  CHECK(rules[1].res.text() == "example.com:8443");
  CHECK(rules[1].methods == std::vector<std::string>{"GET", "POST"});
  CHECK(rules[1].path == "/v1/**");
  CHECK(rules[1].source == rule_source::local);
  CHECK(rules[0].act == action::allow);
  CHECK(rules[0].sandbox.empty());

  CHECK(db.remove_rule(ids[0]));
  auto v2 = db.rules_version();
  CHECK(v2 > v1);
  CHECK_FALSE(db.remove_rule(ids[0]));
  CHECK(resources_of(db.load_rules()) ==
        std::vector<std::string>{"example.com:8443", "10.0.0.0/8"});

  // Ids are never reused, so a decision row's rule id keeps pointing at what decided it.
  auto next = db.add_rule(make_rule(0, "", action::allow, "a.example"));
  CHECK(next > ids[2]);
  CHECK(db.rules_version() > v2);
}

TEST_CASE("rules: remove_rules_for matches the canonical resource within one scope") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  db.add_rules({
      make_rule(0, "", action::allow, "example.com"),
      make_rule(0, "", action::deny, "example.com", "POST"),
      make_rule(0, "dev", action::allow, "example.com"),
      make_rule(0, "", action::allow, "other.example"),
  });
  auto v = db.rules_version();

  CHECK(db.remove_rules_for("EXAMPLE.com", "") == 2);
  CHECK(db.rules_version() > v);
  auto rules = db.load_rules();
  REQUIRE(rules.size() == 2);
  CHECK(rules[0].sandbox == "dev");
  CHECK(rules[1].res.text() == "other.example");

  v = db.rules_version();
  CHECK(db.remove_rules_for("nothing.example", "") == 0);
  CHECK(db.remove_rules_for("not a resource!", "") == 0);
  CHECK(db.rules_version() == v);
  CHECK(db.remove_rules_for("example.com", "dev") == 1);
  CHECK(db.rules_version() > v);
}

TEST_CASE("rules: replace_presets swaps preset rules and keeps local ones") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  auto local = db.add_rule(make_rule(0, "", action::deny, "evil.example"));

  auto v0 = db.rules_version();
  db.replace_presets({make_rule(0, "", action::allow, "**.npmjs.org"),
                      make_rule(0, "", action::allow, "api.openai.com")},
                     "balanced");
  auto v1 = db.rules_version();
  CHECK(v1 > v0);
  CHECK(db.preset_name() == "balanced");
  auto rules = db.load_rules();
  REQUIRE(rules.size() == 3);
  CHECK(rules[0].id == local);
  CHECK(rules[0].source == rule_source::local);
  CHECK(rules[1].source == rule_source::preset);
  CHECK(rules[2].source == rule_source::preset);

  db.replace_presets({make_rule(0, "", action::deny, "**")}, "deny-all");
  CHECK(db.rules_version() > v1);
  CHECK(db.preset_name() == "deny-all");
  CHECK(resources_of(db.load_rules()) == std::vector<std::string>{"evil.example", "**"});

  // Removing by resource reaches preset rules too.
  CHECK(db.remove_rules_for("**", "") == 1);
  CHECK(resources_of(db.load_rules()) == std::vector<std::string>{"evil.example"});
}

TEST_CASE("rules: a stored rule that no longer parses is an error naming its id") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  db.add_rule(make_rule(0, "", action::allow, "example.com"));
  {
    raw_db raw(dir.db());
    raw.exec(
        "INSERT INTO rules (id, sandbox, decision, resource, source, created) VALUES "
        "(41, '', 'allow', 'example.com:70000', 'local', '2026-11-22T06:00:00.000Z')");
  }
  auto message = error_of([&] { (void)db.load_rules(); });
  CHECK(message.find("rule 41") != std::string::npos);
  CHECK(message.find("sbx policy rm --id 41") != std::string::npos);
}

TEST_CASE("sandboxes: add, duplicate, list, token hash, remove with its rules") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  auto hash = hash_sandbox_token("secret-token");

  auto v0 = db.rules_version();
  db.add_sandbox("dev", hash);
  auto v1 = db.rules_version();
  CHECK(v1 > v0);
  db.add_sandbox("ci", hash_sandbox_token("other"));

  auto duplicate = error_of([&] { db.add_sandbox("dev", hash); });
  CHECK(duplicate.find("'dev' already exists") != std::string::npos);
  CHECK(db.token_hash("dev") == hash);
  CHECK_FALSE(error_of([&] { db.add_sandbox("Bad Name", hash); }).empty());

  auto list = db.sandboxes();
  REQUIRE(list.size() == 2);
  CHECK(list[0].name == "ci");
  CHECK(list[1].name == "dev");
  CHECK(std::regex_match(list[1].created, rfc3339_ms));
  CHECK(db.token_hash("nobody") == std::nullopt);

  db.add_rules({make_rule(0, "dev", action::allow, "dev-only.example"),
                make_rule(0, "ci", action::allow, "ci-only.example"),
                make_rule(0, "", action::allow, "global.example")});
  auto v2 = db.rules_version();
  CHECK(db.remove_sandbox("dev"));
  CHECK(db.rules_version() > v2);
  CHECK(resources_of(db.load_rules()) ==
        std::vector<std::string>{"ci-only.example", "global.example"});
  CHECK(db.token_hash("dev") == std::nullopt);
  CHECK_FALSE(db.remove_sandbox("dev"));
  CHECK(db.sandboxes().size() == 1);
}

TEST_CASE("decisions: rows round-trip and every filter narrows the query") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  auto full = make_row("2026-11-22T06:00:00.000Z", "", "api.openai.com", "allow", "7",
                       "allowed by rule 7", "intercept");
  full.method = "POST";
  full.path = "/v1/chat/completions";
  full.credential = "openai";
  full.status = 200;
  full.bytes_up = 1234;
  full.bytes_down = 56789;
  full.duration_ms = 321;
  db.insert_decisions({
      full,
      make_row("2026-11-22T06:01:00.000Z", "dev", "API.OpenAI.com", "deny"),
      make_row("2026-11-22T06:02:00.000Z", "dev", "example.com", "deny"),
      make_row("2026-11-22T06:03:00.000Z", "", "registry.npmjs.org", "allow"),
      make_row("2026-11-22T06:04:00.000Z", "dev", "api.openai.com", "allow"),
  });

  auto all = db.query_decisions({});
  REQUIRE(all.size() == 5);
  CHECK(ids_of(all) == std::vector<std::int64_t>{1, 2, 3, 4, 5});
  const auto& r = all[0];
  CHECK(r.ts == full.ts);
  CHECK(r.sandbox.empty());
  CHECK(r.client == full.client);
  CHECK(r.method == "POST");
  CHECK(r.scheme == "https");
  CHECK(r.host == "api.openai.com");
  CHECK(r.port == 443);
  CHECK(r.path == "/v1/chat/completions");
  CHECK(r.route == "intercept");
  CHECK(r.decision == "allow");
  CHECK(r.rule == "7");
  CHECK(r.reason == "allowed by rule 7");
  CHECK(r.credential == "openai");
  CHECK(r.status == 200);
  CHECK(r.bytes_up == 1234);
  CHECK(r.bytes_down == 56789);
  CHECK(r.duration_ms == 321);

  using ids = std::vector<std::int64_t>;
  CHECK(ids_of(db.query_decisions({.sandbox = "dev"})) == ids{2, 3, 5});
  CHECK(ids_of(db.query_decisions({.sandbox = ""})) == ids{1, 4});
  CHECK(ids_of(db.query_decisions({.since = "2026-11-22T06:02:00.000Z"})) == ids{3, 4, 5});
  CHECK(ids_of(db.query_decisions({.host_pattern = "*.openai.com"})) == ids{1, 2, 5});
  CHECK(ids_of(db.query_decisions({.host_pattern = "API.*"})) == ids{1, 2, 5});
  CHECK(ids_of(db.query_decisions({.host_pattern = "example.com"})) == ids{3});
  CHECK(ids_of(db.query_decisions({.decision = "deny"})) == ids{2, 3});
  CHECK(ids_of(db.query_decisions({.after_id = 3})) == ids{4, 5});
  // A limit keeps the newest rows, still listed oldest first.
  CHECK(ids_of(db.query_decisions({.limit = 2})) == ids{4, 5});
  CHECK(ids_of(db.query_decisions({.decision = "deny", .limit = 1})) == ids{3});
  CHECK(ids_of(db.query_decisions(
            {.sandbox = "dev", .host_pattern = "*openai*", .decision = "allow"})) == ids{5});
  CHECK(db.query_decisions({.host_pattern = "*.nothing"}).empty());
}

TEST_CASE("decisions: a row without a timestamp gets the current time") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  auto before = now_ms();
  db.insert_decisions({make_row("", "", "example.com", "allow")});
  auto rows = db.query_decisions({});
  REQUIRE(rows.size() == 1);
  REQUIRE(std::regex_match(rows[0].ts, rfc3339_ms));
  CHECK(epoch_ms(rows[0].ts) >= before - 1);
  CHECK(epoch_ms(rows[0].ts) <= now_ms());
}

TEST_CASE("decisions: the summary groups rows, blocked first, then most recent") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  db.insert_decisions({
      make_row("2026-11-22T06:00:00.000Z", "", "a.example", "allow", "1"),
      make_row("2026-11-22T06:05:00.000Z", "", "a.example", "allow", "1"),
      make_row("2026-11-22T06:01:00.000Z", "", "b.example", "deny"),
      make_row("2026-11-22T06:02:00.000Z", "", "c.example", "allow", "2"),
      make_row("2026-11-22T06:03:00.000Z", "dev", "b.example", "deny"),
      make_row("2026-11-22T06:04:00.000Z", "dev", "b.example", "deny"),
      make_row("2026-11-22T06:00:30.000Z", "", "a.example", "allow", "1", "r", "intercept"),
  });

  auto groups = db.summarize_decisions({});
  REQUIRE(groups.size() == 5);
  CHECK(groups[0].sandbox == "dev");
  CHECK(groups[0].host == "b.example");
  CHECK(groups[0].decision == "deny");
  CHECK(groups[0].count == 2);
  CHECK(groups[0].last_seen == "2026-11-22T06:04:00.000Z");
  CHECK(groups[1].host == "b.example");
  CHECK(groups[1].sandbox.empty());
  CHECK(groups[1].count == 1);
  CHECK(groups[2].host == "a.example");
  CHECK(groups[2].route == "tunnel");
  CHECK(groups[2].count == 2);
  CHECK(groups[2].last_seen == "2026-11-22T06:05:00.000Z");
  CHECK(groups[2].rule == "1");
  CHECK(groups[3].host == "c.example");
  CHECK(groups[4].host == "a.example");
  CHECK(groups[4].route == "intercept");

  auto limited = db.summarize_decisions({.limit = 2});
  REQUIRE(limited.size() == 2);
  CHECK(limited[1].host == "b.example");

  auto dev = db.summarize_decisions({.sandbox = "dev"});
  REQUIRE(dev.size() == 1);
  CHECK(dev[0].count == 2);
  auto recent = db.summarize_decisions({.since = "2026-11-22T06:04:00.000Z"});
  REQUIRE(recent.size() == 2);
  CHECK(recent[0].count == 1);
  CHECK(recent[1].count == 1);
  auto allowed_a = db.summarize_decisions({.host_pattern = "A.*", .decision = "allow"});
  CHECK(allowed_a.size() == 2);
}

TEST_CASE("decisions: prune deletes rows strictly older than the cut-off") {
  temp_dir dir;
  auto db = state_db::open(dir.db());
  db.insert_decisions({
      make_row("2026-10-01T00:00:00.000Z", "", "old.example", "allow"),
      make_row("2026-11-01T00:00:00.000Z", "", "edge.example", "allow"),
      make_row("2026-11-22T00:00:00.000Z", "", "new.example", "allow"),
  });
  CHECK(db.prune_decisions_before("2026-11-01T00:00:00.000Z") == 1);
  auto rows = db.query_decisions({});
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].host == "edge.example");
  CHECK(db.prune_decisions_before("2026-11-01T00:00:00.000Z") == 0);

  // More rows than one pruning chunk.
  std::vector<decision_row> many(25'000, make_row("2026-09-01T00:00:00.000Z", "", "x", "deny"));
  db.insert_decisions(many);
  CHECK(db.prune_decisions_before("2026-10-01T00:00:00.000Z") == 25'000);
  CHECK(db.query_decisions({}).size() == 2);
}

TEST_CASE("a second connection sees rules_version change") {
  temp_dir dir;
  auto writer = state_db::open(dir.db());
  auto reader = state_db::open(dir.db());
  auto v = reader.rules_version();
  writer.add_rule(make_rule(0, "", action::allow, "example.com"));
  CHECK(reader.rules_version() == v + 1);
  CHECK(reader.load_rules().size() == 1);
}

TEST_CASE("now_rfc3339 is UTC with milliseconds") {
  auto before = now_ms();
  auto now = now_rfc3339();
  auto after = now_ms();
  REQUIRE(std::regex_match(now, rfc3339_ms));
  CHECK(epoch_ms(now) >= before - 1);
  CHECK(epoch_ms(now) <= after);
}

TEST_CASE("parse_since accepts ages and RFC 3339 times") {
  constexpr std::int64_t tolerance_ms = 2000;
  // Not a structured binding: clang 14 (the sanitizer build) cannot capture one in CAPTURE's
  // lambda.
  for (const auto& entry : std::vector<std::pair<std::string, std::int64_t>>{
           {"30s", 30'000}, {"10m", 600'000}, {"2h", 7'200'000}, {"7d", 604'800'000}, {"0s", 0}}) {
    const auto& text = entry.first;
    const auto age_ms = entry.second;
    CAPTURE(text);
    auto since = parse_since(text);
    REQUIRE(std::regex_match(since, rfc3339_ms));
    CHECK(std::abs(epoch_ms(since) - (now_ms() - age_ms)) < tolerance_ms);
  }

  CHECK(parse_since("2026-11-22T06:00:00Z") == "2026-11-22T06:00:00.000Z");
  CHECK(parse_since("2026-11-22T06:00:00.123Z") == "2026-11-22T06:00:00.123Z");
  CHECK(parse_since("2026-11-22T06:00:00.123456789Z") == "2026-11-22T06:00:00.123Z");
  CHECK(parse_since("2026-11-22t06:00:00.5z") == "2026-11-22T06:00:00.500Z");
  CHECK(parse_since("2026-11-22T08:00:00+02:00") == "2026-11-22T06:00:00.000Z");
  CHECK(parse_since("2026-11-21T23:30:00.250-06:30") == "2026-11-22T06:00:00.250Z");
  CHECK(parse_since("2026-01-01T00:30:00+01:00") == "2025-12-31T23:30:00.000Z");
  CHECK(parse_since("2024-02-29 12:00:00Z") == "2024-02-29T12:00:00.000Z");
  // Timestamps compare as strings, so even absurd ages stay fixed-width.
  CHECK(parse_since("9999999999d") == "0000-01-01T00:00:00.000Z");
}

TEST_CASE("parse_since refuses anything else and says what it accepts") {
  for (const char* text :
       {"", "10", "m", "10x", "-5m", "5 m", "1.5h", "yesterday", "2026-11-22",
        "2026-11-22T06:00:00", "2026-11-22T06:00Z", "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z",
        "2026-11-22T24:00:00Z", "2026-11-22T06:00:00+0200", "2026-11-22T06:00:00.Z",
        "2026-11-22T06:00:00Zjunk", "99999999999d"}) {
    CAPTURE(text);
    auto message = error_of([&] { (void)parse_since(text); });
    CHECK(message.find("30s, 10m, 2h or 7d") != std::string::npos);
    CHECK(message.find("RFC 3339") != std::string::npos);
  }
}

TEST_CASE("replace_token_hash issues a new token for an existing sandbox only") {
  temp_dir dir;
  auto db = state_db::open(dir.path / "policy.db");
  db.add_sandbox("dev", "aaaa");
  const auto before = db.rules_version();
  CHECK(db.replace_token_hash("dev", "bbbb"));
  CHECK(db.token_hash("dev") == "bbbb");
  CHECK(db.rules_version() > before);  // the proxy reloads tokens on this version
  CHECK_FALSE(db.replace_token_hash("nobody", "cccc"));
  CHECK_FALSE(db.token_hash("nobody").has_value());
}

TEST_CASE("opening a second connection keeps the first one's WAL alive for other processes") {
  // Regression: open() used to open()/close() policy.db, and closing any descriptor drops every
  // POSIX lock this process holds on the file, SQLite's included. An outside reader (another
  // process: the sqlite3 CLI here) then believed itself the last connection, checkpointed and
  // deleted the live WAL, and later writes became invisible until the writer closed.
  temp_dir dir;
  const auto file = dir.path / "policy.db";
  auto writer = state_db::open(file);
  writer.add_sandbox("dev", "aaaa");
  auto second = state_db::open(file);
  const auto count_outside = [&] {
    const auto cmd = "sqlite3 '" + file.string() + "' 'SELECT count(*) FROM sandboxes'";
    std::FILE* p = ::popen(cmd.c_str(), "r");
    REQUIRE(p != nullptr);
    char buf[32] = {};
    const bool got = std::fgets(buf, sizeof buf, p) != nullptr;
    ::pclose(p);
    return got ? std::atoi(buf) : -1;
  };
  CHECK(count_outside() == 1);
  writer.add_sandbox("ci", "bbbb");
  CHECK(std::filesystem::exists(dir.path / "policy.db-wal"));
  CHECK(count_outside() == 2);
}
