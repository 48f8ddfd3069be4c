#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "config/config.hpp"

namespace sbx::config {
namespace {

namespace fs = std::filesystem;

// The state directory holds the CA key and the secrets file: owner only.
constexpr mode_t private_dir_mode = 0700;

std::optional<std::string> non_empty_env(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

fs::path home_dir() {
  if (auto home = non_empty_env("HOME")) return *home;
  // No $HOME (a service manager, `env -i`): fall back to the password database.
  std::vector<char> buffer(16 * 1024);
  passwd entry{};
  passwd* found = nullptr;
  if (getpwuid_r(geteuid(), &entry, buffer.data(), buffer.size(), &found) == 0 &&
      found != nullptr && found->pw_dir != nullptr && *found->pw_dir != '\0') {
    return found->pw_dir;
  }
  throw config_error("cannot find the home directory (HOME is not set): set SBX_HOME");
}

[[noreturn]] void fail(const fs::path& dir, std::string_view what) {
  throw config_error(fmt::format("state directory {}: {}", dir.string(), what));
}

}  // namespace

fs::path state_dir() {
  if (auto home = non_empty_env("SBX_HOME")) return fs::absolute(*home);
  // XDG Base Directory spec: a relative path in these variables is invalid and must be ignored.
  if (auto xdg = non_empty_env("XDG_STATE_HOME"); xdg && fs::path(*xdg).is_absolute()) {
    return fs::path(*xdg) / "sbx";
  }
  return fs::absolute(home_dir() / ".local" / "state" / "sbx");
}

fs::path ensure_state_dir() {
  auto dir = state_dir().lexically_normal();
  // Missing parents are made 0700 too: XDG asks that of ~/.local/state, and they are ours.
  fs::path prefix;
  for (const auto& part : dir) {
    prefix /= part;
    struct stat st {};
    if (::stat(prefix.c_str(), &st) == 0) continue;
    if (errno != ENOENT) fail(prefix, std::strerror(errno));
    if (::mkdir(prefix.c_str(), private_dir_mode) != 0) {
      if (errno == EEXIST) continue;
      fail(dir, fmt::format("cannot create {}: {}", prefix.string(), std::strerror(errno)));
    }
    // mkdir's mode is reduced by the umask; a parent left without write permission would stop the
    // next mkdir.
    if (::chmod(prefix.c_str(), private_dir_mode) != 0) {
      fail(dir, fmt::format("cannot set the mode of {} to 0700: {}", prefix.string(),
                            std::strerror(errno)));
    }
  }

  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) fail(dir, std::strerror(errno));
  if (!S_ISDIR(st.st_mode)) fail(dir, "exists but is not a directory");
  if (st.st_uid != geteuid()) {
    fail(dir, fmt::format("belongs to uid {}, not to this user (uid {}); choose another SBX_HOME",
                          st.st_uid, geteuid()));
  }
  // A directory made by hand, or by an older version, may be open to others.
  if ((st.st_mode & 07777) != private_dir_mode && ::chmod(dir.c_str(), private_dir_mode) != 0) {
    fail(dir, fmt::format("cannot set its mode to 0700: {}", std::strerror(errno)));
  }
  return dir;
}

}  // namespace sbx::config
