// Choosing a store, and failing fast when the Secret Service is missing. The buses here are
// private dbus-daemons (or a socket nobody answers), so these tests also pass outside
// with-keyring.sh.
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "keychain/secret_store.hpp"
#include "tests/keychain/test_support.hpp"

namespace sbx::keychain {
namespace {

namespace fs = std::filesystem;
using test::scoped_env;
using test::temp_dir;
using namespace std::chrono_literals;

// The contract: no Secret Service means an answer in well under two seconds.
constexpr auto kFailFastLimit = 2s;

// The stock session policy, or one that lets clients connect and send but delivers them nothing:
// a bus that is up yet never answers.
enum class bus_policy { session, drops_replies };

// A dbus-daemon of our own, with no service files unless given one for org.freedesktop.secrets.
class private_bus {
 public:
  explicit private_bus(const fs::path& dir, const std::string& secrets_exec = {},
                       bus_policy policy = bus_policy::session) {
    const fs::path services = dir / "services";
    fs::create_directories(services);
    if (!secrets_exec.empty()) {
      std::ofstream(services / "org.freedesktop.secrets.service")
          << "[D-BUS Service]\nName=org.freedesktop.secrets\nExec=" << secrets_exec << "\n";
    }
    const fs::path config = dir / "bus.conf";
    std::ofstream(config) << fmt::format(
        R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <servicedir>{}</servicedir>
  <policy context="default">
    {}
  </policy>
</busconfig>
)",
        (dir / "bus").string(), services.string(),
        policy == bus_policy::session
            ? R"(<allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>)"
            : R"(<allow send_destination="*"/>)");

    int address_pipe[2];
    REQUIRE(::pipe(address_pipe) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::close(address_pipe[0]);
      // The mute policy makes the daemon log every message it drops.
      if (const int null = ::open("/dev/null", O_WRONLY); null >= 0) ::dup2(null, STDERR_FILENO);
      const std::string config_arg = "--config-file=" + config.string();
      const std::string print_arg = fmt::format("--print-address={}", address_pipe[1]);
      ::execlp("dbus-daemon", "dbus-daemon", config_arg.c_str(), "--nofork", print_arg.c_str(),
               static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(address_pipe[1]);
    // The daemon prints its address once it listens: reading it is the readiness check.
    char buffer[512];
    ssize_t n = 0;
    while ((n = ::read(address_pipe[0], buffer, sizeof buffer)) > 0) {
      address_.append(buffer, static_cast<std::size_t>(n));
      if (address_.find('\n') != std::string::npos) break;
    }
    ::close(address_pipe[0]);
    REQUIRE_MESSAGE(!address_.empty(), "dbus-daemon did not start");
    address_.erase(address_.find_last_not_of("\n") + 1);
  }
  private_bus(const private_bus&) = delete;
  private_bus& operator=(const private_bus&) = delete;
  ~private_bus() {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
  [[nodiscard]] const std::string& address() const { return address_; }

 private:
  pid_t pid_ = -1;
  std::string address_;
};

// A socket that accepts connections into its backlog and never says a word.
class silent_socket {
 public:
  explicit silent_socket(const fs::path& path) : fd_(::socket(AF_UNIX, SOCK_STREAM, 0)) {
    REQUIRE(fd_ >= 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    REQUIRE(path.string().size() < sizeof address.sun_path);
    std::copy_n(path.c_str(), path.string().size(), address.sun_path);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    REQUIRE(::listen(fd_, 8) == 0);
  }
  silent_socket(const silent_socket&) = delete;
  silent_socket& operator=(const silent_socket&) = delete;
  ~silent_socket() { ::close(fd_); }

 private:
  int fd_;
};

template <class F>
std::chrono::steady_clock::duration timed(F&& f) {
  const auto start = std::chrono::steady_clock::now();
  f();
  return std::chrono::steady_clock::now() - start;
}

std::string libsecret_error() {
  try {
    (void)open_libsecret_store();
  } catch (const keychain_error& e) {
    return e.what();
  }
  return {};
}

// Each case: a session bus situation without a usable Secret Service, and what the error says.
void check_no_secret_service(const std::string& mentions) {
  std::string message;
  const auto elapsed = timed([&] { message = libsecret_error(); });
  CHECK(elapsed < kFailFastLimit);
  CHECK(message.find(mentions) != std::string::npos);
  CHECK(message.find("gnome-keyring-daemon") != std::string::npos);
  CHECK(message.find("SBX_KEYCHAIN=file") != std::string::npos);

  const temp_dir state;
  const scoped_env keychain("SBX_KEYCHAIN", std::nullopt);
  std::string warning;
  std::unique_ptr<secret_store> store;
  const auto fallback_elapsed = timed([&] { store = open_default_store(state.path(), &warning); });
  CHECK(fallback_elapsed < kFailFastLimit);
  REQUIRE(store != nullptr);
  CHECK(store->kind() == "file");
  CHECK(warning.find("no Secret Service answered") != std::string::npos);
  CHECK(warning.find((state.path() / "secrets.json").string() + " (0600)") != std::string::npos);
  CHECK(warning.find("start gnome-keyring-daemon") != std::string::npos);
  store->set("", "openai", secret{"sk-fallback"});
  CHECK(fs::exists(state.path() / "secrets.json"));
  // A null warning pointer is allowed.
  CHECK(open_default_store(state.path(), nullptr)->kind() == "file");

  const scoped_env forced("SBX_KEYCHAIN", "secret-service");
  const auto forced_elapsed = timed(
      [&] { CHECK_THROWS_AS((void)open_default_store(state.path(), &warning), keychain_error); });
  CHECK(forced_elapsed < kFailFastLimit);
}

TEST_CASE("open_default_store: SBX_KEYCHAIN=file keeps secrets.json in the state directory") {
  const temp_dir state;
  const scoped_env keychain("SBX_KEYCHAIN", "file");
  std::string warning;
  auto store = open_default_store(state.path(), &warning);
  CHECK(store->kind() == "file");
  CHECK(warning.empty());
  store->set("", "openai", secret{"sk-file"});
  CHECK(fs::exists(state.path() / "secrets.json"));
}

TEST_CASE("open_default_store: an unknown SBX_KEYCHAIN is an error listing the valid values") {
  const temp_dir state;
  const scoped_env keychain("SBX_KEYCHAIN", "kwallet");
  try {
    (void)open_default_store(state.path(), nullptr);
    FAIL("SBX_KEYCHAIN=kwallet was accepted");
  } catch (const keychain_error& e) {
    const std::string message = e.what();
    CHECK(message.find("kwallet") != std::string::npos);
    CHECK(message.find("secret-service") != std::string::npos);
    CHECK(message.find("file") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(state.path() / "secrets.json"));
}

TEST_CASE("no Secret Service: DBUS_SESSION_BUS_ADDRESS points nowhere") {
  const temp_dir dir;
  const scoped_env bus("DBUS_SESSION_BUS_ADDRESS",
                       "unix:path=" + (dir.path() / "no-such-socket").string());
  check_no_secret_service("cannot reach the D-Bus session bus");
}

TEST_CASE("no Secret Service: no session bus at all") {
  const temp_dir runtime;
  const scoped_env bus("DBUS_SESSION_BUS_ADDRESS", std::nullopt);
  const scoped_env xdg("XDG_RUNTIME_DIR", runtime.path().string());
  check_no_secret_service("no D-Bus session bus");
}

TEST_CASE("no Secret Service: the session bus never answers") {
  const temp_dir dir;
  const silent_socket silent(dir.path() / "bus");
  const scoped_env bus("DBUS_SESSION_BUS_ADDRESS", "unix:path=" + (dir.path() / "bus").string());
  check_no_secret_service("did not answer");
}

TEST_CASE("no Secret Service: the session bus accepts connections but never replies") {
  const temp_dir dir;
  const private_bus daemon(dir.path(), {}, bus_policy::drops_replies);
  const scoped_env bus("DBUS_SESSION_BUS_ADDRESS", daemon.address());
  check_no_secret_service("did not answer Hello");
}

TEST_CASE("no Secret Service: a session bus without one") {
  const temp_dir dir;
  const private_bus daemon(dir.path());
  const scoped_env bus("DBUS_SESSION_BUS_ADDRESS", daemon.address());
  check_no_secret_service("no Secret Service on the session bus");
}

TEST_CASE("no Secret Service: the bus can activate one, but it fails to start") {
  const temp_dir dir;
  const private_bus daemon(dir.path(), "/bin/false");
  const scoped_env bus("DBUS_SESSION_BUS_ADDRESS", daemon.address());
  check_no_secret_service("could not start the Secret Service");
}

}  // namespace
}  // namespace sbx::keychain
