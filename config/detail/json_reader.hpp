// Reading config JSON with errors a user can act on: every message starts with the origin (a file
// path or "embedded defaults") and names the key path ("limits.max_header_bytes") and what was
// expected.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace sbx::config::detail {

// Ordered, so that services and preset categories keep the order they are written in.
using json = nlohmann::ordered_json;

// "limits" + "max_header_bytes" -> "limits.max_header_bytes"; "" + "listen" -> "listen".
[[nodiscard]] std::string join_path(std::string_view parent, std::string_view key);

class json_reader {
 public:
  explicit json_reader(std::string_view origin) : origin_(origin) {}

  [[nodiscard]] std::string_view origin() const { return origin_; }
  [[noreturn]] void fail(std::string_view message) const;

  // Parses a whole document. Duplicate keys are an error: JSON parsers silently keep the last one,
  // which hides a mistaken second "listen".
  [[nodiscard]] json parse(std::string_view text) const;

  // The type checks return the value; `path` names it in the error.
  const json& object(const json& value, std::string_view path) const;
  const json& array(const json& value, std::string_view path) const;
  [[nodiscard]] std::string string(const json& value, std::string_view path) const;
  [[nodiscard]] bool boolean(const json& value, std::string_view path) const;
  [[nodiscard]] std::int64_t integer(const json& value, std::string_view path, std::int64_t min,
                                     std::int64_t max) const;
  [[nodiscard]] std::vector<std::string> strings(const json& value, std::string_view path) const;

  // Fails on a key of `object` that is not in `known`, listing the known ones.
  void only_known_keys(const json& object, std::string_view path,
                       std::span<const std::string_view> known) const;
  // Fails when a key in `required` is missing.
  void all_keys_present(const json& object, std::string_view path,
                        std::span<const std::string_view> required) const;

 private:
  [[noreturn]] void wrong_type(const json& value, std::string_view path,
                               std::string_view expected) const;

  std::string origin_;
};

}  // namespace sbx::config::detail
