// Path patterns, path matching and request-path normalization.
#include <doctest/doctest.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "policy/rule.hpp"

using sbx::policy::normalize_path;
using sbx::policy::path_matches;
using sbx::policy::rule_error;
using sbx::policy::validate_path_pattern;

namespace {

std::string pattern_error(std::string_view pattern) {
  try {
    (void)validate_path_pattern(pattern);
  } catch (const rule_error& e) {
    return e.what();
  }
  return "<accepted>";
}

}  // namespace

TEST_CASE("path_matches") {
  struct row {
    std::string_view pattern;
    std::string_view path;
    bool matches;
  };
  const row rows[] = {
      {"/", "/", true},
      {"/", "/a", false},
      {"/v1", "/v1", true},
      {"/v1", "/v1/", true},  // a trailing slash cannot escape an exact rule
      {"/v1", "/v10", false},
      {"/v1/", "/v1/", true},
      {"/v1/**", "/v1", true},
      {"/v1/**", "/v1/", true},
      {"/v1/**", "/v1/a", true},
      {"/v1/**", "/v1/a/b/c", true},
      {"/v1/**", "/v10", false},
      {"/v1/**", "/v2/a", false},
      {"/v1/**", "/", false},
      {"/**", "/", true},
      {"/**", "/anything/at/all", true},
      {"/v1/*", "/v1/a", true},
      {"/v1/*", "/v1/a/b", false},
      {"/v1/*", "/v1", false},
      {"/v1/*.json", "/v1/data.json", true},
      {"/v1/*.json", "/v1/data.json/x", false},
      {"/v1/*.json", "/v1/data.xml", false},
      {"/v1/*.json", "/v1/dir/data.json", false},
      {"/v1/a*b*c", "/v1/aXXbYYc", true},
      {"/v1/a*b*c", "/v1/abc", true},
      {"/v1/a*b*c", "/v1/aXXbYY", false},
      {"/v1/*a", "/v1/aaa", true},
      {"/repos/*/issues", "/repos/sbx/issues", true},
      {"/repos/*/issues", "/repos/sbx/pulls", false},
      {"/repos/*/issues", "/repos/a/b/issues", false},
      {"/repos/**/issues", "/repos/issues", true},
      {"/repos/**/issues", "/repos/a/issues", true},
      {"/repos/**/issues", "/repos/a/b/issues", true},
      {"/repos/**/issues", "/repos/a/b/issues/1", false},
      {"/repos/**/issues/**", "/repos/a/b/issues/1/comments", true},
      {"/a/**/b/**/c", "/a/x/b/y/z/c", true},
      {"/a/**/b/**/c", "/a/x/c", false},
      {"/**/*.tgz", "/npm/-/pkg-1.0.0.tgz", true},
      {"/**/*.tgz", "/npm/-/pkg-1.0.0.tar", false},
      {"/V1/**", "/v1/a", false},  // paths are case-sensitive (RFC 3986 §6.2.2.1)
      {"/v1/**", "", false},
      {"/v1/**", "v1/a", false},
      {"", "/", false},
  };
  for (const auto& r : rows) {
    CAPTURE(r.pattern);
    CAPTURE(r.path);
    CHECK(path_matches(r.pattern, r.path) == r.matches);
  }
}

TEST_CASE("validate_path_pattern accepts patterns and returns them unchanged") {
  for (std::string_view pattern : {"/", "/v1", "/v1/", "/v1/**", "/**", "/repos/*/issues",
                                   "/v1/*.json", "/a/**/b", "/caf%C3%A9", "/a%20b", "/-/_~.x"}) {
    CAPTURE(pattern);
    CHECK(validate_path_pattern(pattern) == pattern);
  }
}

TEST_CASE("validate_path_pattern rejects patterns with the reason") {
  struct row {
    std::string_view pattern;
    std::string_view reason;
  };
  const row rows[] = {
      {"", "leave out --path"},
      {"v1/**", "must start with '/' (for example /v1/**)"},
      {"https://x.com/v1", "is a URL"},
      {"/v1?x=1", "query string"},
      {"/v1#top", "fragment"},
      {std::string_view("/v1\n", 4), "control character"},
      {std::string_view("/v1\0", 4), "control character"},
      {"/v1\x7f", "control character"},
      {"/a b", "write it as %20"},
      {"/a\\b", "'\\'"},
      {"/a%2Fb", "encoded '/'"},
      {"/a%5cb", "encoded '/', '\\' or NUL"},
      {"/a%00", "encoded '/', '\\' or NUL"},
      {"/a%41", "write 'A' instead of %41"},
      {"/a%3a", "write %3A instead of %3a"},
      {"/a%zz", "invalid escape"},
      {"/a%4", "not followed by two hex digits"},
      {"/a%", "not followed by two hex digits"},
      {"/v1/../admin", "\"..\" segment"},
      {"/v1/./x", "\".\" segment"},
      {"/v1/..;x/admin", "contains ';'"},
      {"/v1/...", "\"...\" segment"},
      {"/v1/..%20", "\"..%20\" segment"},
      {"/admin;jsessionid=1/**", "contains ';': parameters"},
      {"/admin%3Bx/**", "contains %3B: parameters"},
      {"/admin%3b", "contains %3b: parameters"},
      {"/admin./x", "ending in '.' or %20 (\"admin.\"); trailing dots and spaces are dropped"},
      {"/admin%20", "so write \"admin\""},
      {"/files/*.", "ending in '.'"},
      {"/v1//x", "empty segment"},
      {"//", "empty segment"},
      {"/v1/**.json", "'**' must be a whole segment"},
      {"/v1/a**", "'**' must be a whole segment"},
  };
  for (const auto& r : rows) {
    CAPTURE(r.pattern);
    const auto error = pattern_error(r.pattern);
    CAPTURE(error);
    CHECK(error.find(r.reason) != std::string::npos);
  }
  CHECK(pattern_error("v1/**") ==
        "path pattern \"v1/**\" must start with '/' (for example /v1/**)");
}

TEST_CASE("normalize_path") {
  struct row {
    std::string_view raw;
    std::optional<std::string> normalized;
  };
  const row rows[] = {
      {"/", "/"},
      {"/v1/models", "/v1/models"},
      {"/v1/models/", "/v1/models/"},
      {"/v1/models?limit=10", "/v1/models"},
      {"/v1/models#frag", "/v1/models"},
      {"/v1?x=/../admin", "/v1"},
      {"/?", "/"},
      // RFC 3986 §5.2.4 dot-segment removal.
      {"/v1/../admin", "/admin"},
      {"/v1/./a", "/v1/a"},
      {"/a/b/c/./../../g", "/a/g"},
      {"/mid/content=5/../6", "/mid/6"},
      {"/..", "/"},
      {"/../../x", "/x"},
      {"/a/..", "/"},
      {"/a/b/..", "/a/"},
      {"/a/b/.", "/a/b/"},
      {"/a/.b/..c", "/a/.b/..c"},
      // Repeated slashes collapse.
      {"//v1//a///b", "/v1/a/b"},
      {"/v1//", "/v1/"},
      {"//", "/"},
      // RFC 3986 §2.3: unreserved escapes decode, the others keep an upper-case escape.
      {"/%41%42c", "/ABc"},
      {"/%7euser", "/~user"},
      {"/%2e%2e/admin", "/admin"},
      {"/v1/%2E%2E/admin", "/admin"},
      {"/v1/%2e/a", "/v1/a"},
      {"/a%20b", "/a%20b"},
      {"/a%3ab", "/a%3Ab"},
      {"/caf%c3%a9", "/caf%C3%A9"},
      {"/a%25b", "/a%25b"},
      {"/a%252Fb", "/a%252Fb"},
      // Refused: a server could read these differently from us.
      {"/a%2Fb", std::nullopt},
      {"/a%2fb", std::nullopt},
      {"/a%5Cb", std::nullopt},
      {"/a%5cb", std::nullopt},
      {"/a\\..\\admin", std::nullopt},
      {"/a%zz", std::nullopt},
      {"/a%4", std::nullopt},
      {"/a%", std::nullopt},
      {"/a\tb", std::nullopt},
      {std::string_view("/a\0b", 4), std::nullopt},
      {"/a\x7f", std::nullopt},
      {"/v1/..;/admin", std::nullopt},
      {"/v1/.;x/admin", std::nullopt},
      // ... and anything else a server may read as a dot-segment, or a NUL that ends it early.
      {"/a/.../admin", std::nullopt},
      {"/a/%2e%2e%2e/admin", std::nullopt},
      {"/a/..%20/admin", std::nullopt},
      {"/a/.%20/admin", std::nullopt},
      {"/a/.%3Bx/admin", std::nullopt},
      {"/a/..%3b/admin", std::nullopt},
      {"/a/..%00/admin", std::nullopt},
      {"/a%00", std::nullopt},
      {"", std::nullopt},
      {"v1/models", std::nullopt},
      {"*", std::nullopt},
      {"http://example.com/", std::nullopt},
      {"?x=1", std::nullopt},
  };
  for (const auto& r : rows) {
    CAPTURE(r.raw);
    CHECK(normalize_path(r.raw) == r.normalized);
  }
}

TEST_CASE("a normalized path cannot slip past a path rule") {
  for (std::string_view raw :
       {"/v1/../admin", "/v1/%2e%2e/admin", "/v1/./../admin", "//admin", "/v1/x/../../admin"}) {
    CAPTURE(raw);
    const auto path = normalize_path(raw);
    REQUIRE(path.has_value());
    CHECK(*path == "/admin");
    CHECK_FALSE(path_matches("/v1/**", *path));
    CHECK(path_matches("/admin", *path));
  }
}

TEST_CASE(
    "path_matches compares the match key: parameters, trailing dots and slashes hide nothing") {
  struct row {
    std::string_view pattern;
    std::string_view path;  // already normalized
    bool matches;
  };
  const row rows[] = {
      // ';' parameters, literal or encoded, cannot hide a segment.
      {"/admin/**", "/admin;jsessionid=1/x", true},
      {"/admin/**", "/admin;/x", true},
      {"/admin/**", "/admin;a;b=c/x/y", true},
      {"/admin/**", "/admin%3Bx/y", true},
      {"/admin/**", "/admin%3bx/y", true},
      {"/admin/**", "/;/admin/x", true},
      {"/admin/**", "/;x/admin", true},
      {"/admin/**", "/admin;", true},
      {"/admin/*", "/admin/x;y", true},
      {"/repos/*/issues", "/repos/sbx;v=1/issues;x", true},
      // Trailing dots and spaces are dropped from a segment.
      {"/admin/**", "/admin./x", true},
      {"/admin/**", "/admin../x", true},
      {"/admin/**", "/admin%20/x", true},
      {"/admin/**", "/admin.%20./x", true},
      {"/admin/**", "/admin;x./y", true},
      {"/admin/**", "/admin.;x/y", true},
      {"/v1/*.json", "/v1/data.json.", true},
      // A trailing '/' (or what normalizes to one) cannot escape an exact rule.
      {"/exact", "/exact", true},
      {"/exact", "/exact/", true},
      {"/exact", "/exact;x", true},
      {"/exact", "/exact/;x", true},
      {"/exact", "/exact.", true},
      {"/exact", "/exact%20", true},
      {"/exact", "/exact/x", false},
      {"/exact", "/exactly", false},
      {"/exact", "/exact.json", false},
      {"/exact", "/ex", false},
      // ... while a pattern ending in '/' or '*' still matches the trailing empty segment.
      {"/v1/", "/v1/", true},
      {"/v1/", "/v1;x/", true},
      {"/v1/", "/v1", false},
      {"/v1/*", "/v1/", true},
      {"/v1/*", "/v1;x/", true},
      {"/v1/*", "/v1/;x", true},
      {"/*", "/", true},
      {"/", "/;x", true},
      {"/", "/", true},
      {"/**", "/;x", true},
      // Segments that only look alike stay apart.
      {"/admin/**", "/administrator/x", false},
      {"/admin/**", "/admin-x/y", false},
      {"/admin/**", "/public/admin", false},
      {"/admin/**", "/adm;in/x", false},
      {"/admin/**", "/.admin/x", false},
      {"/admin/**", "/admin%2Ex", false},  // not normalized: %2E would have been decoded
      {"/admin/**", "/ADMIN/x", false},    // case-sensitive unless folded (deny rules)
  };
  for (const auto& r : rows) {
    CAPTURE(r.pattern);
    CAPTURE(r.path);
    CHECK(path_matches(r.pattern, r.path) == r.matches);
  }
}

TEST_CASE("path_matches with fold_case (deny rules) ignores ASCII case only") {
  CHECK(path_matches("/admin/**", "/ADMIN/x", true));
  CHECK(path_matches("/admin/**", "/Admin;x./y", true));
  CHECK(path_matches("/exact", "/EXACT/", true));
  CHECK(path_matches("/caf%C3%A9", "/CAF%C3%A9", true));
  CHECK_FALSE(path_matches("/admin/**", "/admín/x", true));
  CHECK_FALSE(path_matches("/admin/**", "/ADMIN/x", false));
}

TEST_CASE("request-path variants are denied by a deny rule and plain paths still allowed") {
  using sbx::policy::action;
  using sbx::policy::make_rule;
  using sbx::policy::rule_set;
  const rule_set rules({make_rule(1, "", action::allow, "allowed.test"),
                        make_rule(2, "", action::deny, "allowed.test", "", "/admin/**"),
                        make_rule(3, "", action::deny, "allowed.test", "", "/exact")});
  struct row {
    std::string_view raw;  // as the client sent it
    std::string_view normalized;
    std::int64_t rule_id;  // the deciding rule; 1 = allowed
  };
  const row rows[] = {
      {"/admin/x", "/admin/x", 2},
      {"/admin;jsessionid=1/x", "/admin;jsessionid=1/x", 2},
      {"/admin;/x", "/admin;/x", 2},
      {"/admin./x", "/admin./x", 2},
      {"/admin%2e/x", "/admin./x", 2},
      {"/admin%2E%2E/x", "/admin../x", 2},
      {"/admin%20/x", "/admin%20/x", 2},
      {"/admin%3b/x", "/admin%3B/x", 2},
      {"/ADMIN/x", "/ADMIN/x", 2},
      {"/Admin;x/y", "/Admin;x/y", 2},
      {"//admin/x", "/admin/x", 2},
      {"/.%2e/admin/x", "/admin/x", 2},
      {"/%2e/admin", "/admin", 2},
      {"/public/../admin", "/admin", 2},
      {"/public/%2e%2e/admin", "/admin", 2},
      {"/public;x/../admin/y", "/admin/y", 2},
      {"/;/admin/x", "/;/admin/x", 2},
      {"/admin?x=1", "/admin", 2},
      {"/exact", "/exact", 3},
      {"/exact/", "/exact/", 3},
      {"/exact;x", "/exact;x", 3},
      {"/exact/.", "/exact/", 3},
      {"/exact/./", "/exact/", 3},
      {"/exact//", "/exact/", 3},
      {"/exact.", "/exact.", 3},
      {"/exact%2e", "/exact.", 3},
      {"/EXACT", "/EXACT", 3},
      {"/x/../exact/", "/exact/", 3},
      // Normal traffic is still served.
      {"/", "/", 1},
      {"/public/x", "/public/x", 1},
      {"/administrator", "/administrator", 1},
      {"/exact/sub", "/exact/sub", 1},
      {"/exactly", "/exactly", 1},
      {"/public/admin", "/public/admin", 1},
  };
  for (const auto& r : rows) {
    CAPTURE(r.raw);
    const auto path = normalize_path(r.raw);
    REQUIRE(path.has_value());
    CHECK(*path == r.normalized);
    const auto d =
        rules.decide({.host = "allowed.test", .port = 80, .method = "GET", .path = *path});
    CHECK(d.rule_id == r.rule_id);
    CHECK(d.allowed() == (r.rule_id == 1));
  }
  // Forms a server may read as a dot-segment are refused outright (the proxy answers 400).
  for (std::string_view raw : {"/admin/..;/x", "/public/..;/admin", "/public/.;/admin",
                               "/public/.../admin", "/public/..%20/admin", "/public/.%3B/admin",
                               "/public/..%00/admin", "/admin%2Fx", "/admin%5cx", "/admin\\x"}) {
    CAPTURE(raw);
    CHECK_FALSE(normalize_path(raw).has_value());
  }
}
