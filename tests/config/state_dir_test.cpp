#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "config/config.hpp"
#include "test_support.hpp"

namespace fs = std::filesystem;
using sbx::config::config_error;
using sbx::config::ensure_state_dir;
using sbx::config::state_dir;
using sbx::config::test::mode_of;
using sbx::config::test::scoped_env;
using sbx::config::test::temp_dir;
using sbx::config::test::write_file;

TEST_CASE("state_dir: SBX_HOME, then XDG_STATE_HOME/sbx, then ~/.local/state/sbx") {
  temp_dir dir;
  auto home = dir.path() / "home";
  auto xdg = dir.path() / "xdg";
  auto sbx_home = dir.path() / "sbx-home";
  scoped_env home_env("HOME", home.string());

  {
    scoped_env sbx_env("SBX_HOME", sbx_home.string());
    scoped_env xdg_env("XDG_STATE_HOME", xdg.string());
    CHECK(state_dir() == sbx_home);
  }
  {
    scoped_env sbx_env("SBX_HOME", std::nullopt);
    scoped_env xdg_env("XDG_STATE_HOME", xdg.string());
    CHECK(state_dir() == xdg / "sbx");
  }
  {
    scoped_env sbx_env("SBX_HOME", "");
    scoped_env xdg_env("XDG_STATE_HOME", std::nullopt);
    CHECK(state_dir() == home / ".local" / "state" / "sbx");
  }
  {
    // The XDG spec says a relative path there is invalid and must be ignored.
    scoped_env sbx_env("SBX_HOME", std::nullopt);
    scoped_env xdg_env("XDG_STATE_HOME", "relative/state");
    CHECK(state_dir() == home / ".local" / "state" / "sbx");
  }
  {
    scoped_env sbx_env("SBX_HOME", "relative-home");
    CHECK(state_dir() == fs::current_path() / "relative-home");
    CHECK(state_dir().is_absolute());
  }
}

TEST_CASE("ensure_state_dir creates the directory and its parents 0700") {
  temp_dir dir;
  auto target = dir.path() / "a" / "b" / "sbx";
  scoped_env sbx_env("SBX_HOME", target.string());
  // A umask that takes the owner's write bit away must not leave an unusable directory.
  auto old_umask = ::umask(0277);
  auto created = ensure_state_dir();
  ::umask(old_umask);
  CHECK(created == target);
  REQUIRE(fs::is_directory(target));
  CHECK(mode_of(target) == 0700);
  CHECK(mode_of(dir.path() / "a") == 0700);
  CHECK(mode_of(dir.path() / "a" / "b") == 0700);
  // A second call finds it in place.
  CHECK(ensure_state_dir() == target);
  CHECK(mode_of(target) == 0700);
}

TEST_CASE("ensure_state_dir tightens an existing directory open to others") {
  temp_dir dir;
  auto target = dir.path() / "sbx";
  fs::create_directory(target);
  ::chmod(target.c_str(), 0755);
  REQUIRE(mode_of(target) == 0755);
  scoped_env sbx_env("SBX_HOME", target.string());
  CHECK(ensure_state_dir() == target);
  CHECK(mode_of(target) == 0700);
}

TEST_CASE("ensure_state_dir refuses a path that is not a directory") {
  temp_dir dir;
  auto file = dir.path() / "not-a-dir";
  write_file(file, "x");
  {
    scoped_env sbx_env("SBX_HOME", file.string());
    CHECK_THROWS_AS((void)ensure_state_dir(), config_error);
  }
  {
    scoped_env sbx_env("SBX_HOME", (file / "below").string());
    CHECK_THROWS_AS((void)ensure_state_dir(), config_error);
  }
}

TEST_CASE("ensure_state_dir refuses a directory that belongs to another user") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: only root can give a directory to another user");
    return;
  }
  temp_dir dir;
  auto target = dir.path() / "sbx";
  fs::create_directory(target);
  constexpr uid_t nobody = 65534;
  REQUIRE(::chown(target.c_str(), nobody, nobody) == 0);
  scoped_env sbx_env("SBX_HOME", target.string());
  try {
    (void)ensure_state_dir();
    FAIL("no error for a directory owned by another user");
  } catch (const config_error& e) {
    CHECK(std::string_view(e.what()).find("belongs to uid 65534") != std::string_view::npos);
  }
}
