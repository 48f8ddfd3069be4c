#include <doctest/doctest.h>

#include "keychain/env_import.hpp"
#include "tests/keychain/test_support.hpp"

namespace sbx::keychain {
namespace {

using test::scoped_env;

const std::vector<service_env> kServices = {
    {"openai", {"SBX_TEST_OPENAI_API_KEY"}},
    {"anthropic", {"SBX_TEST_ANTHROPIC_API_KEY"}},
    {"google", {"SBX_TEST_GEMINI_API_KEY", "SBX_TEST_GOOGLE_API_KEY"}},
    {"github", {"SBX_TEST_GH_TOKEN", "SBX_TEST_GITHUB_TOKEN"}},
    {"groq", {"SBX_TEST_GROQ_API_KEY"}},
};

TEST_CASE("import_from_environment: first set variable per service, by service name") {
  const test::temp_dir dir;
  auto store = open_file_store(dir.path() / "secrets.json");
  const scoped_env openai("SBX_TEST_OPENAI_API_KEY", "sk-from-env");
  const scoped_env anthropic("SBX_TEST_ANTHROPIC_API_KEY", std::nullopt);
  const scoped_env gemini("SBX_TEST_GEMINI_API_KEY", "");  // empty counts as unset
  const scoped_env google("SBX_TEST_GOOGLE_API_KEY", "AIza-from-google-var");
  // The preferred variable decides even when broken: a second one must not silently win.
  const scoped_env gh("SBX_TEST_GH_TOKEN", "ghp_TOPSECRET\n");
  const scoped_env github("SBX_TEST_GITHUB_TOKEN", "ghp_fine");
  const scoped_env groq("SBX_TEST_GROQ_API_KEY", std::nullopt);

  const auto result = import_from_environment(*store, "", kServices);
  CHECK(result.imported == std::vector<std::string>{"openai", "google"});
  CHECK(result.missing == std::vector<std::string>{"anthropic", "groq"});
  CHECK(result.rejected == std::vector<std::string>{"github"});

  CHECK(store->get("", "openai")->reveal() == "sk-from-env");
  CHECK(store->get("", "google")->reveal() == "AIza-from-google-var");
  CHECK_FALSE(store->get("", "github").has_value());
  CHECK(store->list().size() == 2);
}

TEST_CASE("import_from_environment: into a sandbox scope, overwriting what was there") {
  const test::temp_dir dir;
  auto store = open_file_store(dir.path() / "secrets.json");
  store->set("dev", "openai", secret{"sk-old"});
  store->set("", "openai", secret{"sk-global"});
  const scoped_env openai("SBX_TEST_OPENAI_API_KEY", "sk-new");
  const auto result =
      import_from_environment(*store, "dev", {{"openai", {"SBX_TEST_OPENAI_API_KEY"}}});
  CHECK(result.imported == std::vector<std::string>{"openai"});
  CHECK(result.missing.empty());
  CHECK(result.rejected.empty());
  CHECK(store->get("dev", "openai")->reveal() == "sk-new");
  CHECK(store->get("", "openai")->reveal() == "sk-global");
}

TEST_CASE("import_from_environment: nothing set imports nothing") {
  const test::temp_dir dir;
  auto store = open_file_store(dir.path() / "secrets.json");
  const scoped_env unset("SBX_TEST_UNSET_KEY", std::nullopt);
  const auto result =
      import_from_environment(*store, "", {{"x", {"SBX_TEST_UNSET_KEY"}}, {"y", {}}});
  CHECK(result.imported.empty());
  CHECK(result.missing == std::vector<std::string>{"x", "y"});
  CHECK(store->list().empty());
}

}  // namespace
}  // namespace sbx::keychain
