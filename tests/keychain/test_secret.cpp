#include <ostream>
#include <sstream>
#include <type_traits>
#include <utility>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "keychain/secret.hpp"

namespace sbx::keychain {
namespace {

template <class Stream, class T, class = void>
struct is_streamable : std::false_type {};
template <class Stream, class T>
struct is_streamable<Stream, T,
                     std::void_t<decltype(std::declval<Stream&>() << std::declval<const T&>())>>
    : std::true_type {};

// The detector itself must work, or the assertion below would pass vacuously.
static_assert(is_streamable<std::ostream, std::string>::value);
static_assert(!is_streamable<std::ostream, secret>::value, "a secret must not be streamable");
static_assert(!is_streamable<std::ostringstream, secret>::value, "a secret must not be streamable");

TEST_CASE("secret: fmt prints **** whatever the value") {
  const secret key{"sk-proj-abcdefghijklmnopqrstuvwxyz"};
  CHECK(fmt::format("{}", key) == "****");
  CHECK(fmt::format("[{:>6}]", key) == "[  ****]");
  CHECK(fmt::format("{}", secret{}) == "****");
  CHECK(fmt::format("key={}", key).find("abc") == std::string::npos);
}

TEST_CASE("secret: masked shows at most the first and last 4 characters") {
  CHECK(secret{"sk-proj-abcdefghij9xQz"}.masked() == "sk-p****...****9xQz");
  // 13 characters: the shortest value that shows its ends; 5 stay hidden.
  CHECK(secret{"abcd12345wxyz"}.masked() == "abcd****...****wxyz");
  CHECK(secret{"abcd1234wxyz"}.masked() == "****");
  CHECK(secret{"short"}.masked() == "****");
  CHECK(secret{"x"}.masked() == "****");
  CHECK(secret{}.masked() == "****");
  const std::string long_value = "ghp_" + std::string(40, 'Q') + "tail";
  const std::string masked = secret{long_value}.masked();
  CHECK(masked == "ghp_****...****tail");
  CHECK(masked.find("QQ") == std::string::npos);
}

TEST_CASE("secret: reveal, size, empty and equality") {
  const secret key{"sk-abc"};
  CHECK(key.reveal() == "sk-abc");
  CHECK(key.size() == 6);
  CHECK_FALSE(key.empty());
  CHECK(secret{}.empty());
  CHECK(key == secret{"sk-abc"});
  CHECK_FALSE(key == secret{"sk-abd"});
  CHECK_FALSE(key == secret{"sk-ab"});
  CHECK_FALSE(key == secret{});
}

TEST_CASE("secret: moving leaves the source empty") {
  // Short values live in the small-string buffer, long ones on the heap: both paths.
  for (const std::string& value : {std::string("sk-short"), "sk-" + std::string(100, 'L')}) {
    CAPTURE(value.size());
    secret source{value};
    secret constructed{std::move(source)};
    CHECK(source.empty());  // NOLINT(bugprone-use-after-move): the point of the test
    CHECK(constructed.reveal() == value);

    secret assigned{"sk-previous-value-that-is-long-enough-for-the-heap-000000000"};
    assigned = std::move(constructed);
    CHECK(constructed.empty());  // NOLINT(bugprone-use-after-move)
    CHECK(assigned.reveal() == value);
  }
}

// The bytes of a short secret's small-string buffer, which lives inside the object itself
// (libstdc++ keeps up to 15 characters there). Empty when the value is on the heap.
std::string_view inline_buffer(const secret& s) {
  constexpr std::size_t kInlineCapacity = 15;
  const char* data = s.reveal().data();
  const auto* object = reinterpret_cast<const char*>(&s);
  if (data < object || data + kInlineCapacity > object + sizeof(secret)) return {};
  return {data, kInlineCapacity};
}

bool all_zero(std::string_view bytes) {
  return bytes.find_first_not_of('\0') == std::string_view::npos;
}

TEST_CASE("secret: moved-from and overwritten values leave no bytes behind") {
  secret source{"sk-short"};
  REQUIRE_FALSE(inline_buffer(source).empty());
  const secret moved{std::move(source)};
  CHECK(all_zero(inline_buffer(source)));  // NOLINT(bugprone-use-after-move)

  secret assigned{"sk-other"};
  secret donor{"sk-donor-value"};
  assigned = std::move(donor);
  CHECK(all_zero(inline_buffer(donor)));  // NOLINT(bugprone-use-after-move)
  CHECK(assigned.reveal() == "sk-donor-value");

  // Assigning a shorter value must not leave the old one's tail after the terminator.
  secret target{"sk-0123456789ab"};
  target = secret{"sk-new"};
  CHECK(all_zero(inline_buffer(target).substr(target.size())));
  target = secret{"sk-0123456789ab"};
  const secret shorter{"sk-x"};
  target = shorter;
  CHECK(all_zero(inline_buffer(target).substr(target.size())));
}

TEST_CASE("secret: copy assignment replaces the old value completely") {
  secret target{"sk-a-rather-long-previous-value-0123456789"};
  const secret shorter{"sk-new"};
  target = shorter;
  CHECK(target.reveal() == "sk-new");
  CHECK(target.size() == 6);
  CHECK(shorter.reveal() == "sk-new");
  secret copy{target};
  CHECK(copy == target);
  auto& self = target;
  target = self;
  CHECK(target.reveal() == "sk-new");
}

TEST_CASE("check_secret_value refuses what could break a header") {
  CHECK(check_secret_value("sk-proj-abc_DEF-123.456~+/=") == "");
  CHECK(check_secret_value("sk with inner spaces") == "");

  struct refused_case {
    std::string value;
    std::string reason_mentions;
  };
  const refused_case cases[] = {
      {"", "empty"},
      {"sk-abc\n", "line break"},
      {"sk-abc\r\nX-Evil: 1", "line break"},
      {"sk-\rabc", "line break"},
      {std::string("sk-\0abc", 7), "0x00"},
      {"sk-\tabc", "0x09"},
      {"sk-\x1b[31m", "0x1b"},
      {"sk-\x7f", "0x7f"},
      {" sk-abc", "space"},
      {"sk-abc ", "space"},
      {"sk-\xc2\xa0"
       "abc",
       "non-ASCII"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.reason_mentions);
    const std::string reason = check_secret_value(c.value);
    CHECK_FALSE(reason.empty());
    CHECK(reason.find(c.reason_mentions) != std::string::npos);
    // The reason is shown to the user and logged: it must not echo the value.
    if (c.value.size() > 3) CHECK(reason.find(c.value.substr(3, 3)) == std::string::npos);
  }
}

}  // namespace
}  // namespace sbx::keychain
