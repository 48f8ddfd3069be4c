// Timestamps of policy.db: RFC 3339 UTC with milliseconds, and the --since forms.
#include <algorithm>
#include <chrono>
#include <optional>

#include <fmt/format.h>

#include "policy/store/detail/sqlite.hpp"
#include "policy/store/state_db.hpp"

namespace sbx::store {
namespace {

using namespace std::chrono;

using ms_time = time_point<system_clock, milliseconds>;

std::string format_rfc3339(ms_time t) {
  // Fixed width keeps string order equal to time order, which the ts index and filters rely on.
  constexpr auto earliest = sys_days{year{0} / January / 1};
  constexpr auto latest = sys_days{year{9999} / December / 31} + days{1} - milliseconds{1};
  t = std::clamp<ms_time>(t, earliest, latest);
  auto day = floor<days>(t);
  year_month_day ymd{day};
  hh_mm_ss<milliseconds> hms{t - day};
  // Written by hand rather than with fmt: this runs once for every decision row.
  std::string out = "0000-00-00T00:00:00.000Z";
  auto put = [&out](std::size_t pos, unsigned value, int width) {
    for (int i = width - 1; i >= 0; --i, value /= 10)
      out[pos + i] = static_cast<char>('0' + value % 10);
  };
  put(0, static_cast<unsigned>(static_cast<int>(ymd.year())), 4);
  put(5, static_cast<unsigned>(ymd.month()), 2);
  put(8, static_cast<unsigned>(ymd.day()), 2);
  put(11, static_cast<unsigned>(hms.hours().count()), 2);
  put(14, static_cast<unsigned>(hms.minutes().count()), 2);
  put(17, static_cast<unsigned>(hms.seconds().count()), 2);
  put(20, static_cast<unsigned>(hms.subseconds().count()), 3);
  return out;
}

// Reads exactly `width` digits at `pos`.
std::optional<int> read_digits(std::string_view text, std::size_t& pos, std::size_t width) {
  if (pos + width > text.size()) return std::nullopt;
  int value = 0;
  for (std::size_t i = 0; i < width; ++i) {
    char c = text[pos + i];
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  pos += width;
  return value;
}

bool read_char(std::string_view text, std::size_t& pos, std::string_view accepted) {
  if (pos >= text.size() || accepted.find(text[pos]) == std::string_view::npos) return false;
  ++pos;
  return true;
}

// RFC 3339 section 5.6 date-time: 2026-11-22T06:00:00[.123](Z|+02:00). The T may be lower-case or
// a space (section 5.6, note), fractions beyond milliseconds are truncated.
std::optional<ms_time> parse_rfc3339(std::string_view text) {
  std::size_t pos = 0;
  auto y = read_digits(text, pos, 4);
  if (!y || !read_char(text, pos, "-")) return std::nullopt;
  auto mo = read_digits(text, pos, 2);
  if (!mo || !read_char(text, pos, "-")) return std::nullopt;
  auto d = read_digits(text, pos, 2);
  if (!d || !read_char(text, pos, "Tt ")) return std::nullopt;
  auto h = read_digits(text, pos, 2);
  if (!h || !read_char(text, pos, ":")) return std::nullopt;
  auto mi = read_digits(text, pos, 2);
  if (!mi || !read_char(text, pos, ":")) return std::nullopt;
  auto s = read_digits(text, pos, 2);
  if (!s) return std::nullopt;
  int millis = 0;
  if (read_char(text, pos, ".")) {
    std::size_t digits = 0;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (digits < 3) millis = millis * 10 + (text[pos] - '0');
      ++digits;
      ++pos;
    }
    if (digits == 0) return std::nullopt;
    for (; digits < 3; ++digits)
      millis *= 10;
  }
  minutes offset{0};
  if (!read_char(text, pos, "Zz")) {
    if (pos >= text.size()) return std::nullopt;
    int sign = text[pos] == '+' ? 1 : text[pos] == '-' ? -1 : 0;
    if (sign == 0) return std::nullopt;
    ++pos;
    auto oh = read_digits(text, pos, 2);
    if (!oh || !read_char(text, pos, ":")) return std::nullopt;
    auto om = read_digits(text, pos, 2);
    if (!om || *oh > 23 || *om > 59) return std::nullopt;
    offset = minutes{sign * (*oh * 60 + *om)};
  }
  if (pos != text.size()) return std::nullopt;

  year_month_day ymd{year{*y}, month{static_cast<unsigned>(*mo)}, day{static_cast<unsigned>(*d)}};
  // Second 60 is a leap second (section 5.7); it lands on the next minute's first second.
  if (!ymd.ok() || *h > 23 || *mi > 59 || *s > 60) return std::nullopt;
  return ms_time{sys_days{ymd}} + hours{*h} + minutes{*mi} + seconds{*s} + milliseconds{millis} -
         offset;
}

// "30s", "10m", "2h", "7d": a count of units ago.
std::optional<milliseconds> parse_age(std::string_view text) {
  // Ten digits of days is still far from overflowing milliseconds in 64 bits.
  if (text.size() < 2 || text.size() > 11) return std::nullopt;
  std::int64_t count = 0;
  for (char c : text.substr(0, text.size() - 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    count = count * 10 + (c - '0');
  }
  switch (text.back()) {
    case 's':
      return seconds{count};
    case 'm':
      return minutes{count};
    case 'h':
      return hours{count};
    case 'd':
      return days{count};
    default:
      return std::nullopt;
  }
}

}  // namespace

std::string now_rfc3339() {
  return format_rfc3339(floor<milliseconds>(system_clock::now()));
}

std::string parse_since(std::string_view text) {
  if (auto age = parse_age(text)) {
    auto now = floor<milliseconds>(system_clock::now());
    // Ages reaching before year 0 are clamped by format_rfc3339.
    return format_rfc3339(now - *age);
  }
  if (auto t = parse_rfc3339(text)) return format_rfc3339(*t);
  throw store_error(
      fmt::format("{} is not a time: use an age such as 30s, 10m, 2h or 7d, or an RFC 3339 time "
                  "such as 2026-11-22T06:00:00Z or 2026-11-22T08:00:00.000+02:00",
                  detail::quoted_input(text)));
}
}  // namespace sbx::store
