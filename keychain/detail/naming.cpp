#include "keychain/detail/naming.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "keychain/secret.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::keychain::detail {

namespace {

bool has_control_character(std::string_view text) {
  return std::any_of(text.begin(), text.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte < 0x20 || byte == 0x7f;
  });
}

}  // namespace

std::string describe_secret(std::string_view scope, std::string_view service) {
  if (scope.empty()) return fmt::format("{} API key (global)", service);
  return fmt::format("{} API key (sandbox {})", service, scope);
}

void check_names(std::string_view scope, std::string_view service) {
  if (service.empty()) throw keychain_error("the service name is empty");
  if (has_control_character(service)) {
    throw keychain_error("the service name contains a control character");
  }
  if (has_control_character(scope)) {
    throw keychain_error("the sandbox name contains a control character");
  }
}

void check_value_for_store(std::string_view scope, std::string_view service,
                           std::string_view value) {
  if (auto reason = check_secret_value(value); !reason.empty()) {
    throw keychain_error(
        fmt::format("not storing the {}: {}", describe_secret(scope, service), reason));
  }
}

}  // namespace sbx::keychain::detail
