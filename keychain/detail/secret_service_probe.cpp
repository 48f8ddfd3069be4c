#include "keychain/detail/secret_service_probe.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>

#include <fmt/format.h>
#include <gio/gio.h>

#include "keychain/detail/glib_ptr.hpp"

namespace sbx::keychain::detail {

namespace {

using namespace std::chrono_literals;
using detail::error_ptr;
using detail::object_ptr;
using detail::variant_ptr;

// Connecting and asking the bus two questions takes milliseconds; a bus that has not answered in
// this long is wedged, and the caller would rather fall back to the file store.
constexpr std::chrono::milliseconds kBusDeadline = 1000ms;
// gnome-keyring starts in well under a second; this bounds a service file whose daemon hangs.
constexpr std::chrono::milliseconds kActivationDeadline = 5000ms;
constexpr const char* kSecretServiceName = "org.freedesktop.secrets";
constexpr std::string_view kWhatToDo =
    "start gnome-keyring-daemon or KeePassXC's Secret Service, or set SBX_KEYCHAIN=file";

// Cancels `cancellable` unless destroyed before `deadline`: the one way to bound the connect and
// authentication steps of g_dbus_connection_new_for_address_sync(), which take no timeout.
class cancel_after {
 public:
  cancel_after(GCancellable* cancellable, std::chrono::milliseconds deadline)
      : thread_([this, cancellable, deadline] {
          std::unique_lock lock(mutex_);
          if (!finished_cv_.wait_for(lock, deadline, [this] { return finished_; })) {
            g_cancellable_cancel(cancellable);
          }
        }) {}
  cancel_after(const cancel_after&) = delete;
  cancel_after& operator=(const cancel_after&) = delete;
  ~cancel_after() {
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    finished_cv_.notify_one();
    thread_.join();
  }

 private:
  std::mutex mutex_;
  std::condition_variable finished_cv_;
  bool finished_ = false;
  std::thread thread_;
};

// The address GLib would use, minus its last resort: `dbus-launch --autolaunch` can spawn a bus
// (and an X11 connection) nobody asked for, or stall for seconds.
std::string session_bus_address() {
  if (const char* env = std::getenv("DBUS_SESSION_BUS_ADDRESS"); env != nullptr && *env != '\0') {
    return env;
  }
  if (const char* runtime = std::getenv("XDG_RUNTIME_DIR");
      runtime != nullptr && *runtime != '\0') {
    const std::string path = std::string(runtime) + "/bus";
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
      char* escaped = g_dbus_address_escape_value(path.c_str());
      std::string address = std::string("unix:path=") + escaped;
      g_free(escaped);
      return address;
    }
  }
  return {};
}

bool timed_out(const GError* error) {
  return g_error_matches(error, G_IO_ERROR, G_IO_ERROR_CANCELLED) ||
         g_error_matches(error, G_IO_ERROR, G_IO_ERROR_TIMED_OUT);
}

variant_ptr call_bus(GDBusConnection* bus, const char* method, GVariant* args,
                     const GVariantType* reply_type, std::chrono::milliseconds deadline,
                     error_ptr& error) {
  GError* raw_error = nullptr;
  GVariant* reply = g_dbus_connection_call_sync(
      bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", method, args,
      reply_type, G_DBUS_CALL_FLAGS_NO_AUTO_START, static_cast<int>(deadline.count()), nullptr,
      &raw_error);
  error.reset(raw_error);
  return variant_ptr(reply);
}

}  // namespace

std::string probe_secret_service() {
  const std::string address = session_bus_address();
  if (address.empty()) {
    return fmt::format(
        "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set and $XDG_RUNTIME_DIR/bus does "
        "not exist), so no Secret Service: {}",
        kWhatToDo);
  }

  // One budget for every step, so a bus that is slow at each of them still answers in time.
  const auto deadline = std::chrono::steady_clock::now() + kBusDeadline;
  const auto remaining = [deadline] {
    return std::max(std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now()),
                    1ms);
  };

  const object_ptr<GCancellable> cancellable(g_cancellable_new());
  object_ptr<GDBusConnection> bus;
  error_ptr error;
  {
    const cancel_after watchdog(cancellable.get(), remaining());
    GError* raw_error = nullptr;
    // Without G_DBUS_CONNECTION_FLAGS_MESSAGE_BUS_CONNECTION: GLib would then send Hello itself
    // and wait 25 s for a bus that accepts connections but never replies, ignoring the cancellable.
    bus.reset(g_dbus_connection_new_for_address_sync(address.c_str(),
                                                     G_DBUS_CONNECTION_FLAGS_AUTHENTICATION_CLIENT,
                                                     nullptr, cancellable.get(), &raw_error));
    error.reset(raw_error);
  }
  if (!bus) {
    if (timed_out(error.get())) {
      return fmt::format("the D-Bus session bus at {} did not answer within {} ms: {}", address,
                         kBusDeadline.count(), kWhatToDo);
    }
    return fmt::format("cannot reach the D-Bus session bus at {} ({}): {}", address, error->message,
                       kWhatToDo);
  }
  // A private connection, so that closing it cannot disturb the shared one libsecret uses.
  const auto close_bus = [&bus] { g_dbus_connection_close_sync(bus.get(), nullptr, nullptr); };

  auto bus_failed = [&](std::string_view question) {
    close_bus();
    if (timed_out(error.get())) {
      return fmt::format("the D-Bus session bus at {} did not answer {} within {} ms: {}", address,
                         question, kBusDeadline.count(), kWhatToDo);
    }
    return fmt::format("the D-Bus session bus at {} failed {} ({}): {}", address, question,
                       error->message, kWhatToDo);
  };

  // A bus accepts no other call before Hello.
  if (!call_bus(bus.get(), "Hello", nullptr, G_VARIANT_TYPE("(s)"), remaining(), error)) {
    return bus_failed("Hello");
  }
  const variant_ptr has_owner =
      call_bus(bus.get(), "NameHasOwner", g_variant_new("(s)", kSecretServiceName),
               G_VARIANT_TYPE("(b)"), remaining(), error);
  if (!has_owner) return bus_failed("NameHasOwner");
  gboolean owned = FALSE;
  g_variant_get(has_owner.get(), "(b)", &owned);
  if (owned) {
    close_bus();
    return {};
  }

  const variant_ptr activatable = call_bus(bus.get(), "ListActivatableNames", nullptr,
                                           G_VARIANT_TYPE("(as)"), remaining(), error);
  if (!activatable) return bus_failed("ListActivatableNames");
  bool can_activate = false;
  {
    GVariantIter* names = nullptr;
    g_variant_get(activatable.get(), "(as)", &names);
    const gchar* name = nullptr;
    while (g_variant_iter_next(names, "&s", &name)) {
      if (std::string_view(name) == kSecretServiceName) can_activate = true;
    }
    g_variant_iter_free(names);
  }
  if (!can_activate) {
    close_bus();
    return fmt::format("no Secret Service on the session bus: {}", kWhatToDo);
  }

  // Started here, with a deadline, rather than by libsecret's first call, which would wait for as
  // long as the bus lets an activation take.
  const variant_ptr started =
      call_bus(bus.get(), "StartServiceByName", g_variant_new("(su)", kSecretServiceName, 0u),
               G_VARIANT_TYPE("(u)"), kActivationDeadline, error);
  close_bus();
  if (!started) {
    if (timed_out(error.get())) {
      return fmt::format("the Secret Service on the session bus did not start within {} ms: {}",
                         kActivationDeadline.count(), kWhatToDo);
    }
    return fmt::format("the session bus could not start the Secret Service ({}): {}",
                       error->message, kWhatToDo);
  }
  return {};
}

}  // namespace sbx::keychain::detail
