// The JSON files compiled into the binary (config/CMakeLists.txt generates the definitions from
// config/defaults.json and config/catalogue.json).
#pragma once

#include <string_view>

namespace sbx::config::detail {

[[nodiscard]] std::string_view embedded_defaults_json();
[[nodiscard]] std::string_view embedded_catalogue_json();

inline constexpr std::string_view defaults_origin = "embedded defaults";
inline constexpr std::string_view catalogue_origin = "embedded catalogue";

}  // namespace sbx::config::detail
