// Request-path normalisation and path patterns (policy/rule.hpp). Input: "pattern\npath".
// Properties: normalize_path is idempotent and its result is a clean absolute path (no query or
// fragment, no empty, "." or ".." segment before the last); a valid pattern "/**" matches every
// normalised path; a normalised path that is itself a valid pattern without '*' matches itself.
#include <cstdint>
#include <string>

#include "policy/rule.hpp"
#include "tests/fuzz/fuzz_support.hpp"

using namespace sbx::policy;
using sbx::fuzz::require;

namespace {

void check_normalized(const std::string& n) {
  require(n.starts_with('/'), "normalised path starts with '/'");
  require(n.find_first_of("?#") == std::string::npos, "normalised path has no query or fragment");
  require(n.find("//") == std::string::npos, "normalised path has no empty segment");
  require(n.find("/./") == std::string::npos && n.find("/../") == std::string::npos,
          "normalised path has no dot-segment");
  require(!n.ends_with("/..") && !n.ends_with("/."), "normalised path ends in no dot-segment");
  const auto again = normalize_path(n);
  require(again.has_value(), "a normalised path normalises again");
  require(*again == n, "normalize_path is idempotent");
  require(path_matches("/**", n), "/** matches every normalised path");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto [pattern_text, path_text] = sbx::fuzz::split_lines<2>(sbx::fuzz::as_text(data, size));

  std::optional<std::string> pattern;
  try {
    pattern = validate_path_pattern(pattern_text);
    require(*pattern == pattern_text, "validate_path_pattern returns the pattern unchanged");
  } catch (const rule_error&) {
  }

  // Every input is also a raw path, and the second line too.
  for (auto raw : {pattern_text, path_text}) {
    const auto n = normalize_path(raw);
    (void)path_matches(pattern_text, raw);  // never crashes, even unvalidated
    if (!n) continue;
    check_normalized(*n);
    if (pattern) (void)path_matches(*pattern, *n);
    if (n->find('*') == std::string::npos) {
      try {
        validate_path_pattern(*n);
        require(path_matches(*n, *n), "a normalised path matches itself as a pattern");
      } catch (const rule_error&) {
      }
    }
  }
  return 0;
}
