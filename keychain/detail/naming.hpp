// Names and checks both stores share, so a secret reads the same in Seahorse, `secret-tool`,
// secrets.json and error messages.
#pragma once

#include <string>
#include <string_view>

namespace sbx::keychain::detail {

// "openai API key (global)", "openai API key (sandbox dev)".
[[nodiscard]] std::string describe_secret(std::string_view scope, std::string_view service);

// Throws keychain_error unless the service is non-empty and neither name holds control
// characters: both are printed in labels, listings and error messages.
void check_names(std::string_view scope, std::string_view service);

// Throws keychain_error, naming the entry but never showing the value, when check_secret_value()
// refuses `value`.
void check_value_for_store(std::string_view scope, std::string_view service,
                           std::string_view value);

}  // namespace sbx::keychain::detail
