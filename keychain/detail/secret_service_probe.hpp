// Asks the D-Bus session bus, with short deadlines, whether a Secret Service is there, so that
// opening the keychain fails in well under two seconds instead of waiting out libsecret's D-Bus
// timeouts (25 s and more) or GLib autolaunching a bus of its own.
//
//   if (auto why = probe_secret_service(); !why.empty()) throw keychain_error(why);
#pragma once

#include <string>

namespace sbx::keychain::detail {

// Empty when org.freedesktop.secrets has an owner on the session bus (starting it first when the
// bus can activate it); otherwise what is wrong and what to do about it.
[[nodiscard]] std::string probe_secret_service();

}  // namespace sbx::keychain::detail
