#include <cstdlib>
#include <string_view>

#include <fmt/format.h>

#include "keychain/detail/secret_service_probe.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::keychain {

namespace {

constexpr const char* kSecretsFileName = "secrets.json";

}  // namespace

std::unique_ptr<secret_store> open_default_store(const std::filesystem::path& state_dir,
                                                 std::string* warning) {
  const std::filesystem::path file = state_dir / kSecretsFileName;
  const char* choice = std::getenv("SBX_KEYCHAIN");
  if (choice != nullptr && *choice != '\0') {
    const std::string_view name(choice);
    if (name == "secret-service") return open_libsecret_store();
    if (name == "file") return open_file_store(file);
    throw keychain_error(fmt::format(
        "SBX_KEYCHAIN=\"{}\" is not a keychain sbx knows: use secret-service or file, or unset it "
        "to use the Secret Service when one answers and {} otherwise",
        name, file.string()));
  }

  // Only a missing Secret Service falls back to the file: one that answers but then fails (a
  // locked keyring, a refused prompt) is an error, or secrets would silently split over two stores.
  if (detail::probe_secret_service().empty()) return open_libsecret_store();
  if (warning != nullptr) {
    *warning = fmt::format(
        "no Secret Service answered on the session bus; secrets are kept in {} (0600). To use the "
        "OS keychain, start gnome-keyring-daemon (or another Secret Service) and run again.",
        file.string());
  }
  return open_file_store(file);
}

}  // namespace sbx::keychain
