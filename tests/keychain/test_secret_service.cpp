// Runs against a real Secret Service: with-keyring.sh starts a throw-away D-Bus session with a
// fresh, unlocked gnome-keyring and sets SBX_TEST_THROWAWAY_KEYRING. These tests empty sbx's
// entries in the keyring they reach, so without that variable they refuse to run (and fail).
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <doctest/doctest.h>

#include "keychain/secret_store.hpp"
#include "tests/keychain/test_support.hpp"

namespace sbx::keychain {
namespace {

void require_throwaway_keyring() {
  REQUIRE_MESSAGE(std::getenv("SBX_TEST_THROWAWAY_KEYRING") != nullptr,
                  "run test_keychain through tests/keychain/with-keyring.sh: the Secret Service "
                  "tests need a real but throw-away keyring");
}

std::unique_ptr<secret_store> open_or_fail() {
  try {
    return open_libsecret_store();
  } catch (const keychain_error& e) {
    FAIL("the throw-away Secret Service does not answer: ", std::string(e.what()));
  }
  return nullptr;
}

std::string run(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[4096];
  while (std::size_t n = std::fread(buffer, 1, sizeof buffer, pipe))
    output.append(buffer, n);
  const int status = ::pclose(pipe);
  CHECK_MESSAGE(status == 0, command, " failed: ", output);
  return output;
}

TEST_CASE("secret service: meets the store contract") {
  require_throwaway_keyring();
  auto store = open_or_fail();
  CHECK(store->kind() == "secret-service");
  test::check_store_contract(*store);
}

TEST_CASE("secret service: items are labelled for people and readable by secret-tool") {
  require_throwaway_keyring();
  auto store = open_or_fail();
  store->set("", "openai", secret{"sk-global-for-secret-tool-0001"});
  store->set("dev", "openai", secret{"sk-dev-for-secret-tool-0002"});

  const std::string listing = run("secret-tool search --all application sbx 2>&1");
  CHECK(listing.find("label = sbx: openai API key (global)\n") != std::string::npos);
  CHECK(listing.find("label = sbx: openai API key (sandbox dev)\n") != std::string::npos);
  CHECK(listing.find("secret = sk-global-for-secret-tool-0001\n") != std::string::npos);
  CHECK(listing.find("secret = sk-dev-for-secret-tool-0002\n") != std::string::npos);
  CHECK(listing.find("attribute.scope = global\n") != std::string::npos);
  CHECK(listing.find("attribute.scope = sandbox:dev\n") != std::string::npos);
  CHECK(listing.find("attribute.service = openai\n") != std::string::npos);

  CHECK(run("secret-tool lookup application sbx scope sandbox:dev service openai") ==
        "sk-dev-for-secret-tool-0002");

  // Overwriting keeps one item, as Seahorse would show it.
  store->set("", "openai", secret{"sk-global-for-secret-tool-0003"});
  const std::string after = run("secret-tool search --all application sbx scope global 2>&1");
  CHECK(after.find("sk-global-for-secret-tool-0001") == std::string::npos);
  CHECK(after.find("secret = sk-global-for-secret-tool-0003\n") != std::string::npos);

  CHECK(store->remove("", "openai"));
  CHECK(store->remove("dev", "openai"));
  CHECK(run("secret-tool search --all application sbx 2>&1").find("sbx: openai") ==
        std::string::npos);
}

TEST_CASE("secret service: a second store object sees changes at once") {
  require_throwaway_keyring();
  auto cli_side = open_or_fail();
  auto proxy_side = open_or_fail();
  cli_side->set("dev", "github", secret{"ghp_first"});
  CHECK(proxy_side->get("dev", "github")->reveal() == "ghp_first");
  cli_side->set("dev", "github", secret{"ghp_second"});
  CHECK(proxy_side->get("dev", "github")->reveal() == "ghp_second");
  CHECK(cli_side->remove("dev", "github"));
  CHECK_FALSE(proxy_side->get("dev", "github").has_value());
}

TEST_CASE("open_default_store: the Secret Service when it answers") {
  require_throwaway_keyring();
  const test::temp_dir dir;
  for (const auto& choice :
       {std::optional<std::string>(), std::optional<std::string>("secret-service")}) {
    const test::scoped_env keychain("SBX_KEYCHAIN", choice);
    std::string warning;
    auto store = open_default_store(dir.path(), &warning);
    CHECK(store->kind() == "secret-service");
    CHECK(warning.empty());
  }
  CHECK_FALSE(std::filesystem::exists(dir.path() / "secrets.json"));
}

}  // namespace
}  // namespace sbx::keychain
