#include "keychain/env_import.hpp"

#include <cstdlib>

namespace sbx::keychain {

import_result import_from_environment(secret_store& store, std::string_view scope,
                                      const std::vector<service_env>& services) {
  import_result result;
  for (const auto& entry : services) {
    const char* found = nullptr;
    for (const auto& variable : entry.variables) {
      const char* value = std::getenv(variable.c_str());
      if (value != nullptr && *value != '\0') {
        found = value;
        break;
      }
    }
    if (found == nullptr) {
      result.missing.push_back(entry.service);
      continue;
    }
    const secret value{std::string(found)};
    if (!check_secret_value(value.reveal()).empty()) {
      result.rejected.push_back(entry.service);
      continue;
    }
    store.set(scope, entry.service, value);
    result.imported.push_back(entry.service);
  }
  return result;
}

}  // namespace sbx::keychain
