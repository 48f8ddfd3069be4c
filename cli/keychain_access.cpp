#include "cli/keychain_access.hpp"

#include <fmt/format.h>

#include "cli/common.hpp"
#include "proxy/control_client.hpp"

namespace sbx::cli {

std::shared_ptr<keychain::secret_store> open_keychain(const std::filesystem::path& state_dir,
                                                      bool quiet) {
  std::string warning;
  try {
    std::shared_ptr<keychain::secret_store> store =
        keychain::open_default_store(state_dir, &warning);
    if (!warning.empty() && !quiet) fmt::print(stderr, "sbx: warning: {}\n", warning);
    return store;
  } catch (const keychain::keychain_error& e) {
    throw failure(e.what());
  }
}

void notify_secrets_changed(const std::filesystem::path& state_dir) {
  const auto socket = control_socket_path(state_dir);
  if (!std::filesystem::exists(socket)) return;
  std::string error;
  auto r = proxy::control_request(socket, "POST", "/v1/secrets/changed", {},
                                  std::chrono::seconds(10), &error);
  if (!r) return;  // a stale socket: no proxy runs
  if (r->status != 200 || r->body.find("\"ok\":true") == std::string::npos) {
    fmt::print(stderr,
               "sbx: warning: the running proxy could not reload its secrets ({}); it retries "
               "every 10 s, or restart it\n",
               r->body);
  }
}

}  // namespace sbx::cli
