#include "policy/store/sandbox_token.hpp"

#include <regex>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "policy/store/state_db.hpp"

using namespace sbx::store;

TEST_CASE("sandbox tokens are distinct 256-bit base64url strings") {
  std::set<std::string> seen;
  const std::regex base64url_256(R"([A-Za-z0-9_-]{43})");
  for (int i = 0; i < 1000; ++i) {
    auto token = make_sandbox_token();
    CHECK(std::regex_match(token, base64url_256));
    seen.insert(token);
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("token hashes are hex SHA-256") {
  // FIPS 180-2 test vector.
  CHECK(hash_sandbox_token("abc") ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  auto hash = hash_sandbox_token(make_sandbox_token());
  CHECK(std::regex_match(hash, std::regex("[0-9a-f]{64}")));
}

TEST_CASE("a token matches only its own hash") {
  auto token = make_sandbox_token();
  auto hash = hash_sandbox_token(token);
  CHECK(sandbox_token_matches(token, hash));
  CHECK_FALSE(sandbox_token_matches(make_sandbox_token(), hash));
  CHECK_FALSE(sandbox_token_matches(token.substr(1), hash));
  CHECK_FALSE(sandbox_token_matches("", hash));
  CHECK_FALSE(sandbox_token_matches(token, hash.substr(0, 63)));
  CHECK_FALSE(sandbox_token_matches(token, ""));
  CHECK_FALSE(sandbox_token_matches(token, token));
}

TEST_CASE("sandbox names") {
  for (const std::string& good : std::vector<std::string>{"a", "0", "dev", "dev-1", "my_box",
                                                          "9lives", std::string(63, 'x')}) {
    CAPTURE(good);
    CHECK_NOTHROW(validate_sandbox_name(good));
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "-dev", "_dev", "Dev", "dev box", "dev.1", "dev/1", "dév",
                                "dev\n", std::string(64, 'x')}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(validate_sandbox_name(bad), store_error);
  }
  try {
    validate_sandbox_name("Dev");
    FAIL("no error");
  } catch (const store_error& e) {
    CHECK(std::string(e.what()).find("'Dev'") != std::string::npos);
    CHECK(std::string(e.what()).find("a-z, 0-9") != std::string::npos);
  }
}
