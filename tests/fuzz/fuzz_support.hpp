// Shared by the fuzz targets: a property check that stops the run with a message libFuzzer saves
// the input for.
#pragma once

#include <array>
#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace sbx::fuzz {

// Aborts (a crash to libFuzzer, which saves the input) when a property does not hold.
inline void require(bool holds, const char* property) {
  if (holds) return;
  std::fprintf(stderr, "fuzz property violated: %s\n", property);
  std::abort();
}

inline std::string_view as_text(const unsigned char* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Splits "a\nb\nc" into its first `n` lines (missing ones empty); the last takes the rest.
template <std::size_t N>
std::array<std::string_view, N> split_lines(std::string_view text) {
  std::array<std::string_view, N> parts{};
  for (std::size_t i = 0; i < N; ++i) {
    const auto nl = i + 1 < N ? text.find('\n') : std::string_view::npos;
    parts[i] = text.substr(0, nl);
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  return parts;
}

}  // namespace sbx::fuzz
