// Copies API keys from the current environment (OPENAI_API_KEY, ...) into a secret store, for
// `sbx secret import`.
//
//   auto result = sbx::keychain::import_from_environment(
//       *store, "", {{"openai", {"OPENAI_API_KEY"}}, {"google", {"GEMINI_API_KEY",
//       "GOOGLE_API_KEY"}}});
//   // result.imported == {"openai"}, result.missing == {"google"}
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "keychain/secret_store.hpp"

namespace sbx::keychain {

struct service_env {
  std::string service;
  std::vector<std::string> variables;  // in order of preference
};

// Service names only: a rejected value is never echoed back.
struct import_result {
  std::vector<std::string> imported;
  std::vector<std::string> missing;   // none of its variables is set (or all are empty)
  std::vector<std::string> rejected;  // the value failed check_secret_value(); nothing was stored
};

// For each service, stores the first of its variables that is set and non-empty into `scope`.
// Store failures propagate as keychain_error, leaving earlier services imported.
[[nodiscard]] import_result import_from_environment(secret_store& store, std::string_view scope,
                                                    const std::vector<service_env>& services);

}  // namespace sbx::keychain
