#include "tests/keychain/test_support.hpp"

#include <cstdlib>
#include <stdexcept>
#include <string>

#include <doctest/doctest.h>

namespace sbx::keychain::test {

temp_dir::temp_dir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/sbx-keychain-test.XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  path_ = pattern;
}

temp_dir::~temp_dir() {
  std::error_code ignored;
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ignored);
  std::filesystem::remove_all(path_, ignored);
}

scoped_env::scoped_env(std::string name, const std::optional<std::string>& value)
    : name_(std::move(name)) {
  if (const char* old = std::getenv(name_.c_str()); old != nullptr) previous_ = old;
  if (value) {
    ::setenv(name_.c_str(), value->c_str(), 1);
  } else {
    ::unsetenv(name_.c_str());
  }
}

scoped_env::~scoped_env() {
  if (previous_) {
    ::setenv(name_.c_str(), previous_->c_str(), 1);
  } else {
    ::unsetenv(name_.c_str());
  }
}

namespace {

// Long and using every printable ASCII character class a provider key might contain.
const std::string kLongValue =
    "sk-proj-" + std::string(300, 'A') + "abcXYZ0123456789_-.~+/=" + std::string(200, 'z') + "END!";

std::vector<std::pair<std::string, std::string>> keys_of(const std::vector<stored_secret>& list) {
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& entry : list)
    keys.emplace_back(entry.scope, entry.service);
  return keys;
}

using key_list = std::vector<std::pair<std::string, std::string>>;

}  // namespace

void check_store_contract(secret_store& store) {
  for (const auto& entry : store.list())
    (void)store.remove(entry.scope, entry.service);
  REQUIRE(store.list().empty());

  INFO("store kind: ", store.kind());
  CHECK_FALSE(store.get("", "openai").has_value());
  CHECK_FALSE(store.remove("", "openai"));
  CHECK_FALSE(store.remove("dev", "openai"));

  store.set("", "openai", secret{"sk-global-1111222233334444"});
  REQUIRE(store.get("", "openai").has_value());
  CHECK(store.get("", "openai")->reveal() == "sk-global-1111222233334444");

  // Overwrite replaces rather than adding a second entry.
  store.set("", "openai", secret{"sk-global-5555666677778888"});
  CHECK(store.get("", "openai")->reveal() == "sk-global-5555666677778888");
  CHECK(store.list().size() == 1);

  // Scope isolation, both ways.
  CHECK_FALSE(store.get("dev", "openai").has_value());
  store.set("dev", "openai", secret{"sk-dev-aaaabbbbccccdddd"});
  CHECK(store.get("dev", "openai")->reveal() == "sk-dev-aaaabbbbccccdddd");
  CHECK(store.get("", "openai")->reveal() == "sk-global-5555666677778888");
  store.set("ci", "anthropic", secret{"sk-ant-ci-0000"});
  CHECK_FALSE(store.get("", "anthropic").has_value());
  CHECK_FALSE(store.get("dev", "anthropic").has_value());
  // A sandbox literally named like the global scope's stored form stays a sandbox.
  store.set("global", "github", secret{"ghp_sandbox_named_global"});
  CHECK_FALSE(store.get("", "github").has_value());

  store.set("", "google", secret{kLongValue});
  REQUIRE(store.get("", "google").has_value());
  CHECK(store.get("", "google")->reveal() == kLongValue);

  // Sorted by scope then service; "" (global) first.
  CHECK(keys_of(store.list()) == key_list{{"", "google"},
                                          {"", "openai"},
                                          {"ci", "anthropic"},
                                          {"dev", "openai"},
                                          {"global", "github"}});
  CHECK(keys_of(store.list("")) == key_list{{"", "google"}, {"", "openai"}});
  CHECK(keys_of(store.list("dev")) == key_list{{"dev", "openai"}});
  CHECK(keys_of(store.list(std::nullopt, "openai")) == key_list{{"", "openai"}, {"dev", "openai"}});
  CHECK(keys_of(store.list("ci", "openai")).empty());
  CHECK(store.list("nobody").empty());
  const auto with_values = store.list("", "google");
  REQUIRE(with_values.size() == 1);
  CHECK(with_values[0].value.reveal() == kLongValue);

  // Removing the sandbox secret leaves the global one in place.
  CHECK(store.remove("dev", "openai"));
  CHECK_FALSE(store.remove("dev", "openai"));
  CHECK_FALSE(store.get("dev", "openai").has_value());
  CHECK(store.get("", "openai")->reveal() == "sk-global-5555666677778888");

  // Refused values never reach the store, and the message does not quote them.
  try {
    store.set("", "openai", secret{"sk-new\r\nX-Injected: 1"});
    FAIL("a value with CR/LF was stored");
  } catch (const keychain_error& e) {
    CHECK(std::string(e.what()).find("X-Injected") == std::string::npos);
    CHECK(std::string(e.what()).find("openai") != std::string::npos);
  }
  CHECK(store.get("", "openai")->reveal() == "sk-global-5555666677778888");
  CHECK_THROWS_AS(store.set("", "", secret{"sk-abc"}), keychain_error);

  for (const auto& entry : store.list())
    CHECK(store.remove(entry.scope, entry.service));
  CHECK(store.list().empty());
}

}  // namespace sbx::keychain::test
