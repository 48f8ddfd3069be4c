// Request-path normalization and path patterns. Patterns are matched against the match key of a
// normalized path (see rule.hpp), so a pattern is refused when it could never equal a key: that
// would be a rule that silently never applies.
#include <array>
#include <vector>

#include "policy/detail/ascii.hpp"
#include "policy/rule.hpp"

namespace sbx::policy {
namespace {

using detail::hex_value;
using detail::is_control;
using detail::is_hex_digit;
using detail::is_unreserved;
using detail::quoted;

constexpr auto npos = std::string_view::npos;

// Segments are addressed by the offset of their first character; npos means none is left. A path
// "/a/" has the segments "a" and "" (the empty one after the trailing slash).
std::size_t next_segment(std::string_view s, std::size_t at) {
  const auto slash = s.find('/', at);
  return slash == npos ? npos : slash + 1;
}

std::string_view segment_at(std::string_view s, std::size_t at) {
  const auto slash = s.find('/', at);
  return s.substr(at, slash == npos ? npos : slash - at);
}

// '*' matches any run of characters, including none, within one segment.
bool segment_matches(std::string_view pattern, std::string_view segment, bool fold_case) {
  const auto same = [fold_case](char a, char b) {
    return a == b || (fold_case && detail::to_lower(a) == detail::to_lower(b));
  };
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = npos;
  std::size_t star_t = 0;
  while (t < segment.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_t = t;
    } else if (p < pattern.size() && same(pattern[p], segment[t])) {
      ++p;
      ++t;
    } else if (star != npos) {
      p = star + 1;
      t = ++star_t;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*')
    ++p;
  return p == pattern.size();
}

bool is_escape(std::string_view s, std::size_t at, char hi, char lo) {
  return at + 2 < s.size() && s[at] == '%' && detail::to_upper(s[at + 1]) == hi &&
         detail::to_upper(s[at + 2]) == lo;
}

// Where a segment's parameters start: at its first ';' (Tomcat, Jetty and Spring drop
// ";jsessionid=1" before routing), or at an encoded one (%3B), which a server that decodes before
// it splits would read as ';'.
std::size_t parameters_start(std::string_view segment) {
  for (std::size_t i = 0; i < segment.size(); ++i) {
    if (segment[i] == ';' || is_escape(segment, i, '3', 'B')) return i;
  }
  return npos;
}

// Trailing dots and spaces of a segment: Windows file systems (IIS) drop them, so "admin." and
// "admin%20" name "admin" there.
std::string_view without_trailing_dots(std::string_view segment) {
  while (true) {
    if (segment.ends_with('.')) {
      segment.remove_suffix(1);
    } else if (segment.size() >= 3 && is_escape(segment, segment.size() - 3, '2', '0')) {
      segment.remove_suffix(3);
    } else {
      return segment;
    }
  }
}

// The part of a segment that path rules compare: parameters dropped, then trailing dots and
// spaces. Empty for "", ";x", "%20".
std::string_view key_of(std::string_view segment) {
  return without_trailing_dots(segment.substr(0, parameters_start(segment)));
}

// A segment that a server may read as "." or "..", other than "." and ".." themselves: "..;x",
// ".;", "...", "..%20", ".%3Bx". Tomcat resolves "/a/..;/b" to "/b" and Windows "/a/.. /b" to
// "/b"; the proxy cannot tell which reading the upstream makes, so it refuses them all.
bool is_disguised_dot_segment(std::string_view segment) {
  if (segment == "." || segment == "..") return false;
  const auto base = segment.substr(0, parameters_start(segment));
  if (base.find('.') == npos) return false;
  for (std::size_t i = 0; i < base.size(); ++i) {
    if (base[i] == '.') continue;
    if (!is_escape(base, i, '2', '0')) return false;
    i += 2;
  }
  return true;
}

// The key segments of a normalized path, in a stack buffer for the usual path (a path of many
// segments spills to the heap).
class key_segments {
 public:
  explicit key_segments(std::string_view path) {
    for (std::size_t at = 1; at != npos; at = next_segment(path, at)) {
      const auto key = key_of(segment_at(path, at));
      if (key.empty()) {
        trailing_empty_ = next_segment(path, at) == npos;
      } else {
        push(key);
      }
    }
  }
  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] std::string_view operator[](std::size_t i) const {
    return i < inline_.size() ? inline_[i] : spill_[i - inline_.size()];
  }
  // The path ended in a segment with an empty key ("/a/", "/a;x", "/"): it may also be read with
  // one empty segment after the others, so "/a/*" still matches "/a/" as it always did.
  [[nodiscard]] bool trailing_empty() const { return trailing_empty_; }
  void push(std::string_view key) {
    if (size_ < inline_.size()) {
      inline_[size_] = key;
    } else {
      spill_.push_back(key);
    }
    ++size_;
  }

 private:
  std::array<std::string_view, 32> inline_{};
  std::vector<std::string_view> spill_;
  std::size_t size_ = 0;
  bool trailing_empty_ = false;
};

// Greedy matching with one backtrack point, as for '*' in a glob: each non-'**' pattern segment
// consumes exactly one key segment, so retrying only from the latest '**' is enough.
bool pattern_matches_keys(std::string_view pattern, const key_segments& keys, bool fold_case) {
  std::size_t p = 1;
  std::size_t t = 0;
  std::size_t star_p = npos;
  std::size_t star_t = 0;
  bool seen_star = false;
  while (t < keys.size()) {
    if (p != npos) {
      const auto pattern_segment = segment_at(pattern, p);
      if (pattern_segment == "**") {
        seen_star = true;
        star_p = next_segment(pattern, p);
        star_t = t;
        p = star_p;
        continue;
      }
      if (segment_matches(pattern_segment, keys[t], fold_case)) {
        p = next_segment(pattern, p);
        ++t;
        continue;
      }
    }
    if (!seen_star) return false;
    t = ++star_t;
    p = star_p;
  }
  while (p != npos && segment_at(pattern, p) == "**")
    p = next_segment(pattern, p);
  return p == npos;
}

void check_percent_escape(std::string_view pattern, std::size_t i) {
  if (i + 2 >= pattern.size()) {
    throw rule_error("path pattern " + quoted(pattern) +
                     " has a '%' that is not followed by two hex digits; write a literal % as %25");
  }
  const char hi = pattern[i + 1];
  const char lo = pattern[i + 2];
  const std::string escape(pattern.substr(i, 3));
  if (!is_hex_digit(hi) || !is_hex_digit(lo)) {
    throw rule_error("path pattern " + quoted(pattern) + " has an invalid escape " +
                     quoted(escape) + "; write a literal % as %25");
  }
  const char value = static_cast<char>(hex_value(hi) * 16 + hex_value(lo));
  if (value == '/' || value == '\\' || value == '\0') {
    throw rule_error("path pattern " + quoted(pattern) + " contains " + escape +
                     ": the proxy refuses paths with an encoded '/', '\\' or NUL, so it could "
                     "never match");
  }
  if (value == ';') {
    throw rule_error("path pattern " + quoted(pattern) + " contains " + escape +
                     ": parameters (;x or %3Bx) are dropped from each segment before matching, "
                     "so remove the part from " +
                     escape + " on");
  }
  if (is_unreserved(value)) {
    throw rule_error("path pattern " + quoted(pattern) + ": write '" + std::string(1, value) +
                     "' instead of " + escape + ", the proxy decodes it before matching");
  }
  if (detail::to_upper(hi) != hi || detail::to_upper(lo) != lo) {
    throw rule_error("path pattern " + quoted(pattern) + ": write " + escape.substr(0, 1) +
                     detail::to_upper(hi) + detail::to_upper(lo) + " instead of " + escape +
                     ", the proxy upper-cases escapes before matching");
  }
}

}  // namespace

std::string validate_path_pattern(std::string_view pattern) {
  if (pattern.empty()) {
    throw rule_error("path pattern is empty; leave out --path to match every path");
  }
  if (pattern.find("://") != npos) {
    throw rule_error("path pattern " + quoted(pattern) +
                     " is a URL; give only the path, starting with '/' (for example /v1/**)");
  }
  if (pattern.front() != '/') {
    throw rule_error("path pattern " + quoted(pattern) + " must start with '/' (for example /" +
                     std::string(pattern) + ")");
  }
  for (std::size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (is_control(c)) throw rule_error("path pattern contains a control character");
    switch (c) {
      case ' ':
        throw rule_error("path pattern " + quoted(pattern) + " contains a space; write it as %20");
      case '?':
        throw rule_error("path pattern " + quoted(pattern) +
                         " contains '?': patterns match the path without its query string, so "
                         "remove the part from '?' on");
      case '#':
        throw rule_error("path pattern " + quoted(pattern) +
                         " contains '#': a fragment is never sent to the server, so remove the "
                         "part from '#' on");
      case '\\':
        throw rule_error("path pattern " + quoted(pattern) +
                         " contains '\\': the proxy refuses such paths, so it could never match; "
                         "use '/'");
      case ';':
        throw rule_error("path pattern " + quoted(pattern) +
                         " contains ';': parameters (;jsessionid=...) are dropped from each "
                         "segment before matching, so remove the part from ';' on");
      case '%':
        check_percent_escape(pattern, i);
        i += 2;
        break;
      default:
        break;
    }
  }
  for (std::size_t at = 1; at != npos; at = next_segment(pattern, at)) {
    const auto segment = segment_at(pattern, at);
    const bool last = next_segment(pattern, at) == npos;
    if (segment.empty() && !last) {
      throw rule_error("path pattern " + quoted(pattern) +
                       " has an empty segment (//); repeated slashes are collapsed before "
                       "matching, so write a single '/'");
    }
    if (segment == "." || segment == ".." || is_disguised_dot_segment(segment)) {
      throw rule_error("path pattern " + quoted(pattern) + " has a " + quoted(segment) +
                       " segment; dot-segments are resolved before matching (RFC 3986 §5.2.4), "
                       "so write the path it stands for");
    }
    if (const auto key = without_trailing_dots(segment); key.size() != segment.size()) {
      throw rule_error("path pattern " + quoted(pattern) + " has a segment ending in '.' or %20 (" +
                       quoted(segment) +
                       "); trailing dots and spaces are dropped from each segment before "
                       "matching, so write " +
                       quoted(key));
    }
    if (segment != "**" && segment.find("**") != npos) {
      throw rule_error("path pattern " + quoted(pattern) +
                       ": '**' must be a whole segment (as in /v1/**); use '*' to match within a "
                       "segment");
    }
  }
  return std::string(pattern);
}

bool path_matches(std::string_view pattern, std::string_view path, bool fold_case) {
  if (pattern.empty() || pattern.front() != '/' || path.empty() || path.front() != '/') {
    return false;
  }
  key_segments keys(path);
  if (pattern_matches_keys(pattern, keys, fold_case)) return true;
  if (!keys.trailing_empty()) return false;
  keys.push({});
  return pattern_matches_keys(pattern, keys, fold_case);
}

std::optional<std::string> normalize_path(std::string_view raw) {
  if (const auto cut = raw.find_first_of("?#"); cut != npos) raw = raw.substr(0, cut);
  if (raw.empty() || raw.front() != '/') return std::nullopt;

  std::string decoded;
  decoded.reserve(raw.size());
  for (std::size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    // Some servers treat '\' as '/', which would let "/v1\..\admin" reach /admin.
    if (is_control(c) || c == '\\') return std::nullopt;
    if (c != '%') {
      decoded += c;
      continue;
    }
    if (i + 2 >= raw.size()) return std::nullopt;
    const char hi = raw[i + 1];
    const char lo = raw[i + 2];
    if (!is_hex_digit(hi) || !is_hex_digit(lo)) return std::nullopt;
    const char value = static_cast<char>(hex_value(hi) * 16 + hex_value(lo));
    // An encoded separator is one segment to us and two to a server that decodes before routing;
    // an encoded NUL ends the path early for a server written in C ("/..%00x" read as "/..").
    if (value == '/' || value == '\\' || value == '\0') return std::nullopt;
    if (is_unreserved(value)) {
      decoded += value;
    } else {
      decoded += '%';
      decoded += detail::to_upper(hi);
      decoded += detail::to_upper(lo);
    }
    i += 2;
  }

  std::vector<std::string_view> kept;
  bool trailing_slash = false;
  for (std::size_t at = 1; at != npos; at = next_segment(decoded, at)) {
    const auto segment = segment_at(decoded, at);
    const bool last = next_segment(decoded, at) == npos;
    if (segment.empty() || segment == ".") {
      trailing_slash = last;
    } else if (segment == "..") {
      if (!kept.empty()) kept.pop_back();
      trailing_slash = last;
    } else if (is_disguised_dot_segment(segment)) {
      return std::nullopt;
    } else {
      kept.push_back(segment);
      trailing_slash = false;
    }
  }

  std::string normalized;
  normalized.reserve(decoded.size());
  for (const auto segment : kept) {
    normalized += '/';
    normalized += segment;
  }
  if (normalized.empty() || trailing_slash) normalized += '/';
  return normalized;
}

}  // namespace sbx::policy
