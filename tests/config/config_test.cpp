#include <doctest/doctest.h>

#include <string>

#include "config/config.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using sbx::config::config_error;
using sbx::config::load;
using sbx::config::load_from_string;
using sbx::config::settings;
using sbx::config::test::load_error;
using sbx::config::test::scoped_env;
using sbx::config::test::temp_dir;
using sbx::config::test::write_file;

namespace {

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

}  // namespace

TEST_CASE("the embedded defaults load with every documented value") {
  scoped_env no_config("SBX_CONFIG", std::nullopt);
  auto s = load(std::nullopt);
  CHECK(s.listen == "127.0.0.1:3128");
  CHECK(s.resolve.empty());
  CHECK(s.upstream_ca_file.empty());
  CHECK_FALSE(s.intercept_all);
  CHECK(s.lim.header_timeout == 10s);
  CHECK(s.lim.idle_timeout == 60s);
  CHECK(s.lim.connect_timeout == 10s);
  CHECK(s.lim.upstream_timeout == 120s);
  CHECK(s.lim.tunnel_idle_timeout == 600s);
  CHECK(s.lim.shutdown_grace == 10s);
  CHECK(s.lim.max_header_bytes == 65536);
  CHECK(s.lim.max_connections == 8192);
  CHECK(s.lim.max_connections_per_sandbox == 2048);
  CHECK(s.lim.max_connections_per_client == 2048);
  CHECK(s.lim.first_byte_timeout == 5s);
  CHECK_FALSE(s.lim.max_connections_set);
  CHECK_FALSE(s.lim.max_connections_per_client_set);
  CHECK_FALSE(s.lim.max_connections_per_sandbox_set);
  CHECK(s.anonymous == sbx::config::anonymous_access::same_user);
  CHECK(s.log_retention_days == 30);
  CHECK(s.log_queue_capacity == 65536);
  CHECK(s.services.size() == 19);  // the built-in catalogue
  CHECK_FALSE(s.source_file.has_value());
}

TEST_CASE("defaults.json agrees with the defaults written in config.hpp") {
  scoped_env no_config("SBX_CONFIG", std::nullopt);
  const settings header_defaults;
  auto s = load(std::nullopt);
  CHECK(s.listen == header_defaults.listen);
  CHECK(s.intercept_all == header_defaults.intercept_all);
  CHECK(s.lim.header_timeout == header_defaults.lim.header_timeout);
  CHECK(s.lim.idle_timeout == header_defaults.lim.idle_timeout);
  CHECK(s.lim.connect_timeout == header_defaults.lim.connect_timeout);
  CHECK(s.lim.upstream_timeout == header_defaults.lim.upstream_timeout);
  CHECK(s.lim.tunnel_idle_timeout == header_defaults.lim.tunnel_idle_timeout);
  CHECK(s.lim.shutdown_grace == header_defaults.lim.shutdown_grace);
  CHECK(s.lim.max_header_bytes == header_defaults.lim.max_header_bytes);
  CHECK(s.lim.max_connections == header_defaults.lim.max_connections);
  CHECK(s.lim.max_connections_per_sandbox == header_defaults.lim.max_connections_per_sandbox);
  CHECK(s.lim.max_connections_per_client == header_defaults.lim.max_connections_per_client);
  CHECK(s.lim.first_byte_timeout == header_defaults.lim.first_byte_timeout);
  CHECK(s.anonymous == header_defaults.anonymous);
  CHECK(s.log_retention_days == header_defaults.log_retention_days);
  CHECK(s.log_queue_capacity == header_defaults.log_queue_capacity);
}

TEST_CASE("defaults_json is a valid config file naming every key") {
  auto text = sbx::config::defaults_json();
  for (auto key : {"\"listen\"",
                   "\"resolve\"",
                   "\"upstream_ca_file\"",
                   "\"intercept_all\"",
                   "\"services\"",
                   "\"limits\"",
                   "\"header_timeout_ms\"",
                   "\"idle_timeout_ms\"",
                   "\"connect_timeout_ms\"",
                   "\"upstream_timeout_ms\"",
                   "\"tunnel_idle_timeout_ms\"",
                   "\"shutdown_grace_ms\"",
                   "\"max_header_bytes\"",
                   "\"max_connections\"",
                   "\"max_connections_per_sandbox\"",
                   "\"log\"",
                   "\"anonymous\"",
                   "\"first_byte_timeout_ms\"",
                   "\"max_connections_per_client\"",
                   "\"retention_days\"",
                   "\"queue_capacity\""}) {
    CAPTURE(key);
    CHECK(contains(text, key));
  }
  CHECK(load_error(text).empty());
}

TEST_CASE("every key can be overridden") {
  temp_dir dir;
  auto ca = dir.path() / "extra-ca.pem";
  write_file(ca, "-----BEGIN CERTIFICATE-----\n");
  auto text = R"({
    "listen": "[::1]:8080",
    "resolve": {"API.Example.com.:443": "192.0.2.10:8443", "[2001:db8::1]:80": "[2001:DB8::2]:8080"},
    "upstream_ca_file": ")" +
              ca.string() + R"(",
    "intercept_all": true,
    "anonymous": "none",
    "services": {"internal": {"hosts": ["llm.internal.example"], "header": "X-Key: {secret}"}},
    "limits": {
      "header_timeout_ms": 1001, "idle_timeout_ms": 1002, "connect_timeout_ms": 1003,
      "upstream_timeout_ms": 1004, "tunnel_idle_timeout_ms": 1005, "shutdown_grace_ms": 0,
      "max_header_bytes": 1024, "max_connections": 7, "max_connections_per_sandbox": 3,
      "max_connections_per_client": 2, "first_byte_timeout_ms": 1006
    },
    "log": {"retention_days": 7, "queue_capacity": 1024}
  })";
  auto s = load_from_string(text, "test.json");
  CHECK(s.listen == "[::1]:8080");
  CHECK(s.upstream_ca_file == ca.string());
  CHECK(s.intercept_all);
  REQUIRE(s.find_service("internal") != nullptr);
  CHECK(s.lim.header_timeout == 1001ms);
  CHECK(s.lim.idle_timeout == 1002ms);
  CHECK(s.lim.connect_timeout == 1003ms);
  CHECK(s.lim.upstream_timeout == 1004ms);
  CHECK(s.lim.tunnel_idle_timeout == 1005ms);
  CHECK(s.lim.shutdown_grace == 0ms);
  CHECK(s.lim.max_header_bytes == 1024);
  CHECK(s.lim.max_connections == 7);
  CHECK(s.lim.max_connections_per_sandbox == 3);
  CHECK(s.lim.max_connections_per_client == 2);
  CHECK(s.lim.first_byte_timeout == 1006ms);
  CHECK(s.lim.max_connections_set);
  CHECK(s.lim.max_connections_per_client_set);
  CHECK(s.lim.max_connections_per_sandbox_set);
  CHECK(s.anonymous == sbx::config::anonymous_access::none);
  CHECK(s.log_retention_days == 7);
  CHECK(s.log_queue_capacity == 1024);

  CHECK(s.resolve.size() == 2);
  CHECK(s.resolve.at("api.example.com:443") == "192.0.2.10:8443");
  auto v4 = s.resolve_override("api.EXAMPLE.com.", 443);
  REQUIRE(v4.has_value());
  CHECK(v4->ip == "192.0.2.10");
  CHECK(v4->port == 8443);
  CHECK_FALSE(s.resolve_override("api.example.com", 80).has_value());
  CHECK_FALSE(s.resolve_override("other.example.com", 443).has_value());
  auto v6 = s.resolve_override("2001:db8::1", 80);
  REQUIRE(v6.has_value());
  CHECK(v6->to_string() == "[2001:DB8::2]:8080");
  CHECK(s.resolve_override("[2001:db8::1]", 80).has_value());
}

TEST_CASE("keys left out keep their defaults") {
  auto s = load_from_string(R"({"limits": {"max_connections": 9}})", "test.json");
  CHECK(s.lim.max_connections == 9);
  CHECK(s.lim.max_connections_per_sandbox == 2048);
  CHECK(s.lim.header_timeout == 10s);
  CHECK(s.listen == "127.0.0.1:3128");
  CHECK(s.services.size() == 19);  // the built-in catalogue
}

TEST_CASE("unknown keys are errors that name the key and list the known ones") {
  auto top = load_error(R"({"limts": {}})");
  CHECK(top.starts_with("test.json: "));
  CHECK(contains(top, "unknown key \"limts\""));
  CHECK(contains(
      top,
      "(known: listen, resolve, upstream_ca_file, intercept_all, anonymous, services, limits, "
      "log)"));

  auto in_limits = load_error(R"({"limits": {"header_timeout": 5}})");
  CHECK(contains(in_limits, "unknown key \"limits.header_timeout\""));
  CHECK(contains(in_limits, "header_timeout_ms"));
  CHECK(contains(in_limits, "max_connections_per_sandbox"));

  auto in_log = load_error(R"({"log": {"retention": 5}})");
  CHECK(contains(in_log, "unknown key \"log.retention\" (known: retention_days, queue_capacity)"));

  auto in_service = load_error(
      R"({"services": {"foo": {"hosts": ["a.example"], "header": "X-Key: {secret}", "envs": []}}})");
  CHECK(contains(in_service,
                 "unknown key \"services.foo.envs\" (known: hosts, header, headers, env)"));
}

TEST_CASE("wrong types name the key and the expected type") {
  CHECK(load_error(R"({"listen": 3128})") == "test.json: listen must be a string, not an integer");
  CHECK(load_error(R"({"intercept_all": "yes"})") ==
        "test.json: intercept_all must be true or false, not a string");
  CHECK(load_error(R"({"limits": {"max_connections": "10"}})") ==
        "test.json: limits.max_connections must be an integer, not a string");
  CHECK(load_error(R"({"limits": {"idle_timeout_ms": 1.5}})") ==
        "test.json: limits.idle_timeout_ms must be an integer, not a fractional number");
  CHECK(load_error(R"({"limits": []})") == "test.json: limits must be an object, not an array");
  CHECK(load_error(R"({"log": {"retention_days": null}})") ==
        "test.json: log.retention_days must be an integer, not null");
  CHECK(load_error(R"({"resolve": ["a:1"]})") ==
        "test.json: resolve must be an object, not an array");
  CHECK(load_error(R"({"upstream_ca_file": false})") ==
        "test.json: upstream_ca_file must be a string, not a boolean");
  CHECK(load_error(R"({"services": {"foo": {"hosts": "a.example", "header": "X: {secret}"}}})") ==
        "test.json: services.foo.hosts must be an array, not a string");
  CHECK(load_error(R"({"services": {"foo": {"hosts": [1], "header": "X: {secret}"}}})") ==
        "test.json: services.foo.hosts[0] must be a string, not an integer");
  CHECK(load_error("[]") == "test.json: the configuration must be an object, not an array");
}

TEST_CASE("values out of range say what the range is") {
  CHECK(load_error(R"({"limits": {"max_header_bytes": 10}})") ==
        "test.json: limits.max_header_bytes must be between 1024 and 1048576 (got 10)");
  CHECK(contains(load_error(R"({"limits": {"max_header_bytes": 1048577}})"),
                 "must be between 1024 and 1048576"));
  CHECK(contains(load_error(R"({"limits": {"max_connections": -1}})"),
                 "limits.max_connections must be between 1 and"));
  CHECK(contains(load_error(R"({"limits": {"connect_timeout_ms": 18446744073709551615}})"),
                 "limits.connect_timeout_ms must be between"));
  CHECK(contains(load_error(R"({"limits": {"header_timeout_ms": 0}})"),
                 "limits.header_timeout_ms must be between 10 and"));
  CHECK(contains(load_error(R"({"log": {"retention_days": 0}})"),
                 "log.retention_days must be between 1 and"));
  CHECK(load_error(R"({"limits": {"max_header_bytes": 1048576}})").empty());
}

TEST_CASE("malformed and ambiguous JSON is refused") {
  auto broken = load_error("{\"listen\": ");
  CHECK(broken.starts_with("test.json: invalid JSON: "));
  CHECK_FALSE(contains(broken, "json.exception"));

  CHECK(load_error(R"({"listen": "127.0.0.1:1", "listen": "127.0.0.1:2"})") ==
        "test.json: duplicate key \"listen\"");
  CHECK(load_error(R"({"limits": {"max_connections": 1, "max_connections": 2}})") ==
        "test.json: duplicate key \"limits.max_connections\"");
}

TEST_CASE("listen must be an IP literal and a port") {
  CHECK(load_from_string(R"({"listen": "0.0.0.0:0"})", "t").listen == "0.0.0.0:0");
  CHECK(load_from_string(R"({"listen": "[::]:3128"})", "t").listen == "[::]:3128");
  for (auto bad : {"localhost:3128", "127.0.0.1", "::1:3128", "127.0.0.1:70000", "[::1]:x", "[::1",
                   "1.2.3:80", "[127.0.0.1]:80", "127.0.0.1:", ""}) {
    CAPTURE(bad);
    auto error = load_error(std::string(R"({"listen": ")") + bad + "\"}");
    CHECK(error.starts_with("test.json: listen: "));
  }
  CHECK(contains(load_error(R"({"listen": "::1:3128"})"), "IPv6 addresses go in brackets"));
  CHECK(contains(load_error(R"({"listen": "localhost:3128"})"), "is not an IP address"));
}

TEST_CASE("parse_endpoint splits IPv4 and bracketed IPv6") {
  auto v4 = sbx::config::parse_endpoint("127.0.0.1:3128");
  CHECK(v4.ip == "127.0.0.1");
  CHECK(v4.port == 3128);
  CHECK(v4.to_string() == "127.0.0.1:3128");
  auto v6 = sbx::config::parse_endpoint("[::1]:443");
  CHECK(v6.ip == "::1");
  CHECK(v6.port == 443);
  CHECK(v6.to_string() == "[::1]:443");
  CHECK_THROWS_AS((void)sbx::config::parse_endpoint("example.com:80"), config_error);
  CHECK_THROWS_AS((void)sbx::config::parse_endpoint("[::1]"), config_error);
}

TEST_CASE("resolve entries must map HOST:PORT to an IP address and port") {
  CHECK(contains(load_error(R"({"resolve": {"api.example.com:443": "example.net:443"}})"),
                 "resolve[\"api.example.com:443\"]: \"example.net\" is not an IP address"));
  CHECK(contains(load_error(R"({"resolve": {"api.example.com:443": "192.0.2.1"}})"),
                 "resolve[\"api.example.com:443\"]: missing \":PORT\""));
  CHECK(contains(load_error(R"({"resolve": {"api.example.com:443": "192.0.2.1:0"}})"),
                 "the port must be from 1 to 65535"));
  CHECK(contains(load_error(R"({"resolve": {"api.example.com:443": "::1:443"}})"),
                 "IPv6 addresses go in brackets"));
  CHECK(contains(load_error(R"({"resolve": {"api.example.com": "192.0.2.1:443"}})"),
                 "the key must be HOST:PORT"));
  CHECK(contains(load_error(R"({"resolve": {"api.example.com:0": "192.0.2.1:443"}})"),
                 "port \"0\" is not a number from 1 to 65535"));
  CHECK(contains(load_error(R"({"resolve": {"*.example.com:443": "192.0.2.1:443"}})"),
                 "is not a host name"));
  CHECK(load_error(R"({"resolve": {"api.example.com:443": 5}})") ==
        "test.json: resolve[\"api.example.com:443\"] must be a string, not an integer");
}

TEST_CASE("upstream_ca_file must exist") {
  auto error = load_error(R"({"upstream_ca_file": "/nonexistent/sbx-test-ca.pem"})");
  CHECK(error.starts_with("test.json: upstream_ca_file: "));
  CHECK(contains(error, "/nonexistent/sbx-test-ca.pem"));
  CHECK(load_error(R"({"upstream_ca_file": ""})").empty());
}

TEST_CASE("load reads the file it is given, else SBX_CONFIG") {
  temp_dir dir;
  auto from_arg = dir.path() / "arg.json";
  auto from_env = dir.path() / "env.json";
  write_file(from_arg, R"({"listen": "127.0.0.1:1111"})");
  write_file(from_env, R"({"listen": "127.0.0.1:2222"})");

  {
    scoped_env no_config("SBX_CONFIG", std::nullopt);
    auto s = load(from_arg);
    CHECK(s.listen == "127.0.0.1:1111");
    REQUIRE(s.source_file.has_value());
    CHECK(*s.source_file == from_arg);
    CHECK(load(std::nullopt).listen == "127.0.0.1:3128");
  }
  {
    scoped_env config("SBX_CONFIG", from_env.string());
    auto s = load(std::nullopt);
    CHECK(s.listen == "127.0.0.1:2222");
    REQUIRE(s.source_file.has_value());
    CHECK(*s.source_file == from_env);
    CHECK(load(from_arg).listen == "127.0.0.1:1111");
  }
  {
    scoped_env empty("SBX_CONFIG", "");
    CHECK(load(std::nullopt).listen == "127.0.0.1:3128");
  }
}

TEST_CASE("errors in a config file start with its path") {
  temp_dir dir;
  auto file = dir.path() / "config.json";
  write_file(file, R"({"limts": {}})");
  scoped_env no_config("SBX_CONFIG", std::nullopt);
  try {
    (void)load(file);
    FAIL("no error for an unknown key");
  } catch (const config_error& e) {
    CHECK(std::string_view(e.what()).starts_with(file.string() + ": unknown key \"limts\""));
  }

  auto missing = dir.path() / "missing.json";
  try {
    (void)load(missing);
    FAIL("no error for a missing file");
  } catch (const config_error& e) {
    CHECK(std::string_view(e.what()).starts_with(missing.string() + ": cannot read"));
  }

  scoped_env config("SBX_CONFIG", missing.string());
  CHECK_THROWS_AS((void)load(std::nullopt), config_error);
  CHECK_THROWS_AS((void)load(dir.path()), config_error);
}

TEST_CASE("a relative upstream_ca_file is found beside the config file") {
  temp_dir dir;
  write_file(dir.path() / "ca.pem", "-----BEGIN CERTIFICATE-----\n");
  write_file(dir.path() / "config.json", R"({"upstream_ca_file": "ca.pem"})");
  auto s = load(dir.path() / "config.json");
  CHECK(s.upstream_ca_file == (dir.path() / "ca.pem").string());
}

TEST_CASE("anonymous takes same-user, none or any") {
  using sbx::config::anonymous_access;
  CHECK(load_from_string(R"({"anonymous": "any"})", "t").anonymous == anonymous_access::any);
  CHECK(load_from_string(R"({"anonymous": "none"})", "t").anonymous == anonymous_access::none);
  CHECK(load_from_string(R"({"anonymous": "same-user"})", "t").anonymous ==
        anonymous_access::same_user);
  CHECK(sbx::config::to_string(anonymous_access::same_user) == "same-user");
  auto why = load_error(R"({"anonymous": "everyone"})");
  CHECK(contains(why, "anonymous: \"everyone\" is not one of \"same-user\""));
  CHECK(contains(load_error(R"({"anonymous": true})"), "anonymous must be a string"));
}

TEST_CASE("a per-client cap set at or above the total is refused") {
  auto why = load_error(R"({"limits": {"max_connections": 10, "max_connections_per_client": 10}})");
  CHECK(contains(why,
                 "limits.max_connections_per_client (10) must be below "
                 "limits.max_connections (10)"));
  CHECK(load_error(R"({"limits": {"max_connections": 10, "max_connections_per_client": 9}})")
            .empty());
}

TEST_CASE("connection caps left to the defaults are sized from the open-file limit") {
  using sbx::config::fit_connection_caps;
  SUBCASE("plenty of descriptors: the defaults stand") {
    auto lim = load_from_string("{}", "t").lim;
    auto line = fit_connection_caps(lim, 1'048'576);
    CHECK(lim.max_connections == 8192);
    CHECK(lim.max_connections_per_client == 2048);
    CHECK(lim.max_connections_per_sandbox == 2048);
    CHECK(contains(line, "8192 in total, 2048 per client address, 2048 per sandbox"));
  }
  SUBCASE("1024 descriptors: two per connection after a reserve, a quarter per client") {
    auto lim = load_from_string("{}", "t").lim;
    auto line = fit_connection_caps(lim, 1024);
    CHECK(lim.max_connections == 448);
    CHECK(lim.max_connections_per_client == 112);
    CHECK(lim.max_connections_per_sandbox == 112);
    CHECK(contains(line, "lowered from 8192"));
  }
  SUBCASE("caps the config set are kept; a derived per-client cap stays below the total") {
    auto lim = load_from_string(R"({"limits": {"max_connections": 20}})", "t").lim;
    fit_connection_caps(lim, 1024);
    CHECK(lim.max_connections == 20);
    CHECK(lim.max_connections_per_client == 5);
    lim = load_from_string(R"({"limits": {"max_connections_per_client": 5000}})", "t").lim;
    auto line = fit_connection_caps(lim, 1024);
    CHECK(lim.max_connections == 448);
    CHECK(lim.max_connections_per_client == 447);
    CHECK(contains(line, "max_connections_per_client lowered from 5000"));
  }
  SUBCASE("a total of one connection") {
    auto lim = load_from_string(R"({"limits": {"max_connections": 1}})", "t").lim;
    fit_connection_caps(lim, 1024);
    CHECK(lim.max_connections == 1);
    CHECK(lim.max_connections_per_client == 1);
  }
}
