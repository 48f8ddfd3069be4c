// Request-path normalization and path patterns. Patterns are matched against normalized paths
// only, so a pattern is refused when it could never equal a normalized path: that would be a rule
// that silently never applies.
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
bool segment_matches(std::string_view pattern, std::string_view segment) {
  std::size_t p = 0;
  std::size_t t = 0;
  std::size_t star = npos;
  std::size_t star_t = 0;
  while (t < segment.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_t = t;
    } else if (p < pattern.size() && pattern[p] == segment[t]) {
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

// A segment that is "." or ".." once its ";parameters" are dropped: Tomcat and others resolve
// "/a/..;/b" to "/b", so such a segment is a dot-segment in disguise.
bool is_dot_segment_with_parameters(std::string_view segment) {
  const auto semicolon = segment.find(';');
  if (semicolon == npos) return false;
  const auto base = segment.substr(0, semicolon);
  return base == "." || base == "..";
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
  if (value == '/' || value == '\\') {
    throw rule_error(
        "path pattern " + quoted(pattern) + " contains " + escape +
        ": the proxy refuses paths with an encoded '/' or '\\', so it could never match");
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
    if (segment == "." || segment == ".." || is_dot_segment_with_parameters(segment)) {
      throw rule_error("path pattern " + quoted(pattern) + " has a " + quoted(segment) +
                       " segment; dot-segments are resolved before matching (RFC 3986 §5.2.4), "
                       "so write the path it stands for");
    }
    if (segment != "**" && segment.find("**") != npos) {
      throw rule_error("path pattern " + quoted(pattern) +
                       ": '**' must be a whole segment (as in /v1/**); use '*' to match within a "
                       "segment");
    }
  }
  return std::string(pattern);
}

bool path_matches(std::string_view pattern, std::string_view path) {
  if (pattern.empty() || pattern.front() != '/' || path.empty() || path.front() != '/') {
    return false;
  }
  // Greedy matching with one backtrack point, as for '*' in a glob: each non-'**' pattern segment
  // consumes exactly one path segment, so retrying only from the latest '**' is enough.
  std::size_t p = 1;
  std::size_t t = 1;
  std::size_t star_p = npos;
  std::size_t star_t = npos;
  bool seen_star = false;
  while (t != npos) {
    if (p != npos) {
      const auto pattern_segment = segment_at(pattern, p);
      if (pattern_segment == "**") {
        seen_star = true;
        star_p = next_segment(pattern, p);
        star_t = t;
        p = star_p;
        continue;
      }
      if (segment_matches(pattern_segment, segment_at(path, t))) {
        p = next_segment(pattern, p);
        t = next_segment(path, t);
        continue;
      }
    }
    if (!seen_star) return false;
    star_t = next_segment(path, star_t);
    t = star_t;
    p = star_p;
  }
  while (p != npos && segment_at(pattern, p) == "**")
    p = next_segment(pattern, p);
  return p == npos;
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
    // An encoded separator is one segment to us and two to a server that decodes before routing.
    if (value == '/' || value == '\\') return std::nullopt;
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
    } else if (is_dot_segment_with_parameters(segment)) {
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
