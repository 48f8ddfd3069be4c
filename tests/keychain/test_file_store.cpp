#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "keychain/secret_store.hpp"
#include "tests/keychain/test_support.hpp"

namespace sbx::keychain {
namespace {

namespace fs = std::filesystem;
using test::temp_dir;

std::string read_bytes(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& file, const std::string& bytes, fs::perms mode) {
  {
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  fs::permissions(file, mode);
}

mode_t mode_of(const fs::path& file) {
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::string error_of(const fs::path& file) {
  try {
    (void)open_file_store(file);
  } catch (const keychain_error& e) {
    return e.what();
  }
  return {};
}

constexpr auto kOwnerOnly = fs::perms::owner_read | fs::perms::owner_write;

TEST_CASE("file store: meets the store contract") {
  const temp_dir dir;
  auto store = open_file_store(dir.path() / "secrets.json");
  CHECK(store->kind() == "file");
  test::check_store_contract(*store);
}

TEST_CASE("file store: secrets.json is created 0600 in the documented format") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  auto store = open_file_store(file);
  CHECK_FALSE(fs::exists(file));  // opening alone writes nothing
  store->set("", "openai", secret{"sk-abc-123"});
  store->set("dev", "github", secret{"ghp_xyz"});
  CHECK(mode_of(file) == 0600);
  const std::string text = read_bytes(file);
  CHECK(text.find(R"("version": 1)") != std::string::npos);
  CHECK(text.find(R"("scope": "")") != std::string::npos);
  CHECK(text.find(R"("service": "openai")") != std::string::npos);
  CHECK(text.find(R"("value": "sk-abc-123")") != std::string::npos);
  CHECK(text.find(R"("scope": "dev")") != std::string::npos);
  // No temporary files are left next to it; only the lock file stays.
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  CHECK(names == std::vector<std::string>{"secrets.json", "secrets.json.lock"});
  CHECK(mode_of(dir.path() / "secrets.json.lock") == 0600);
}

TEST_CASE("file store: stays 0600 under a permissive umask and creates its directory 0700") {
  const temp_dir dir;
  const fs::path file = dir.path() / "state" / "secrets.json";
  const mode_t old_umask = ::umask(0);
  auto store = open_file_store(file);
  store->set("", "openai", secret{"sk-abc-123"});
  ::umask(old_umask);
  CHECK(mode_of(file) == 0600);
  CHECK(mode_of(file.parent_path()) == 0700);
}

TEST_CASE("file store: a hand-written file in the documented format is read") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  write_bytes(file,
              R"({"version": 1, "secrets": [{"scope": "", "service": "openai", "value": "sk-hand"},
                  {"scope": "dev", "service": "openai", "value": "sk-dev"}]})",
              kOwnerOnly);
  auto store = open_file_store(file);
  CHECK(store->get("", "openai")->reveal() == "sk-hand");
  CHECK(store->get("dev", "openai")->reveal() == "sk-dev");
}

TEST_CASE("file store: every call re-reads the file another process may have changed") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  auto proxy_side = open_file_store(file);
  auto cli_side = open_file_store(file);
  CHECK_FALSE(proxy_side->get("", "openai").has_value());
  cli_side->set("", "openai", secret{"sk-first"});
  CHECK(proxy_side->get("", "openai")->reveal() == "sk-first");
  cli_side->set("", "openai", secret{"sk-second"});
  CHECK(proxy_side->get("", "openai")->reveal() == "sk-second");
  CHECK(proxy_side->list().size() == 1);
  CHECK(cli_side->remove("", "openai"));
  CHECK_FALSE(proxy_side->get("", "openai").has_value());
}

TEST_CASE("file store: concurrent writers do not lose each other's updates") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  constexpr int kPerWriter = 15;
  auto writer = [&file](std::string scope) {
    auto store = open_file_store(file);
    for (int i = 0; i < kPerWriter; ++i) {
      store->set(scope, fmt::format("service{}", i), secret{fmt::format("sk-{}-{}", scope, i)});
    }
  };
  std::thread a(writer, "a");
  std::thread b(writer, "b");
  a.join();
  b.join();
  CHECK(open_file_store(file)->list().size() == 2 * kPerWriter);
}

TEST_CASE("file store: a corrupt file is an error and is left byte for byte") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  const std::string corrupt_cases[] = {
      R"({"version": 1, "secrets": [{"scope": "", "service": "openai", "value": "sk-TOPSECRET)",
      "",
      "not json at all sk-TOPSECRET",
  };
  for (const auto& bytes : corrupt_cases) {
    CAPTURE(bytes);
    write_bytes(file, bytes, kOwnerOnly);
    const std::string message = error_of(file);
    CHECK(message.find("secrets.json") != std::string::npos);
    CHECK(message.find("not valid JSON") != std::string::npos);
    CHECK(message.find("Nothing was changed") != std::string::npos);
    CHECK(message.find("TOPSECRET") == std::string::npos);

    // Opened before the damage (as the proxy would be): writes refuse too.
    write_bytes(file, R"({"version": 1, "secrets": []})", kOwnerOnly);
    auto store = open_file_store(file);
    write_bytes(file, bytes, kOwnerOnly);
    CHECK_THROWS_AS(store->set("", "openai", secret{"sk-new"}), keychain_error);
    CHECK_THROWS_AS((void)store->remove("", "openai"), keychain_error);
    CHECK_THROWS_AS((void)store->get("", "openai"), keychain_error);
    CHECK_THROWS_AS((void)store->list(), keychain_error);
    CHECK(read_bytes(file) == bytes);
  }
}

TEST_CASE("file store: valid JSON of the wrong shape is an error naming the problem") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  struct shape_case {
    std::string bytes;
    std::string mentions;
  };
  const shape_case cases[] = {
      {R"([])", "top level"},
      {R"({"secrets": []})", "version"},
      {R"({"version": "1", "secrets": []})", "version"},
      {R"({"version": 2, "secrets": []})", "newer sbx"},
      {R"({"version": 1})", "secrets"},
      {R"({"version": 1, "secrets": {}})", "secrets"},
      {R"({"version": 1, "secrets": [], "extra": true})", "extra"},
      {R"({"version": 1, "secrets": ["sk-TOPSECRET"]})", "secrets[0]"},
      {R"({"version": 1, "secrets": [{"scope": "", "service": "openai"}]})", "secrets[0].value"},
      {R"({"version": 1, "secrets": [{"scope": "", "service": "openai", "value": 5}]})",
       "secrets[0].value"},
      {R"({"version": 1, "secrets": [{"service": "openai", "value": "sk-TOPSECRET"}]})",
       "secrets[0].scope"},
      {R"({"version": 1, "secrets": [{"scope": "", "service": "", "value": "sk-TOPSECRET"}]})",
       "service is empty"},
      {R"({"version": 1, "secrets": [{"scope": "", "service": "x", "value": "sk-TOPSECRET", "note": 1}]})",
       "note"},
      {R"({"version": 1, "secrets": [{"scope": "", "service": "openai", "value": "sk-TOPSECRET"},
                                     {"scope": "", "service": "openai", "value": "sk-TOPSECRET2"}]})",
       "appears twice"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.bytes);
    write_bytes(file, c.bytes, kOwnerOnly);
    const std::string message = error_of(file);
    CHECK(message.find("secrets.json") != std::string::npos);
    CHECK(message.find(c.mentions) != std::string::npos);
    CHECK(message.find("Nothing was changed") != std::string::npos);
    CHECK(message.find("TOPSECRET") == std::string::npos);
    CHECK(read_bytes(file) == c.bytes);
  }
}

TEST_CASE("file store: a file other users can read is refused with the chmod to run") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  const std::string bytes = R"({"version": 1, "secrets": []})";
  for (const auto mode : {fs::perms::group_read, fs::perms::others_read, fs::perms::group_write,
                          fs::perms::others_exec}) {
    write_bytes(file, bytes, kOwnerOnly | mode);
    const std::string message = error_of(file);
    CHECK(message.find(fmt::format("chmod 600 {}", file.string())) != std::string::npos);
    auto restored = mode_of(file);
    CHECK((restored & 077) != 0);  // sbx reports, it does not silently fix
  }
  write_bytes(file, bytes, kOwnerOnly);
  CHECK(error_of(file).empty());
}

TEST_CASE("file store: a value that cannot be a header is refused on read") {
  const temp_dir dir;
  const fs::path file = dir.path() / "secrets.json";
  write_bytes(
      file,
      R"({"version": 1, "secrets": [{"scope": "", "service": "openai", "value": "sk-TOPSECRET\n"}]})",
      kOwnerOnly);
  auto store = open_file_store(file);
  try {
    (void)store->get("", "openai");
    FAIL("a value ending in a newline was returned");
  } catch (const keychain_error& e) {
    const std::string message = e.what();
    CHECK(message.find("line break") != std::string::npos);
    CHECK(message.find("sbx secret set") != std::string::npos);
    CHECK(message.find("TOPSECRET") == std::string::npos);
  }
  // Still listed, so `sbx secret ls` shows it and `sbx secret rm` can remove it.
  CHECK(store->list().size() == 1);
  CHECK(store->remove("", "openai"));
}

TEST_CASE("file store: a symbolic link is refused") {
  const temp_dir dir;
  const fs::path target = dir.path() / "elsewhere.json";
  write_bytes(target, R"({"version": 1, "secrets": []})", kOwnerOnly);
  fs::create_symlink(target, dir.path() / "secrets.json");
  CHECK(error_of(dir.path() / "secrets.json").find("symbolic link") != std::string::npos);
}

}  // namespace
}  // namespace sbx::keychain
