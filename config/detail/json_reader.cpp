#include "config/detail/json_reader.hpp"

#include <set>

#include <fmt/format.h>

#include "config/config.hpp"

namespace sbx::config::detail {
namespace {

std::string describe_type(const json& value) {
  switch (value.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::boolean:
      return "a boolean";
    case json::value_t::string:
      return "a string";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
      return "an integer";
    case json::value_t::number_float:
      return "a fractional number";
    case json::value_t::object:
      return "an object";
    case json::value_t::array:
      return "an array";
    default:
      return "an unexpected value";
  }
}

std::string join_keys(std::span<const std::string_view> keys) {
  std::string out;
  for (auto key : keys) {
    if (!out.empty()) out += ", ";
    out += key;
  }
  return out;
}

}  // namespace

std::string join_path(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return fmt::format("{}.{}", parent, key);
}

void json_reader::fail(std::string_view message) const {
  throw config_error(fmt::format("{}: {}", origin_, message));
}

void json_reader::wrong_type(const json& value, std::string_view path,
                             std::string_view expected) const {
  fail(fmt::format("{} must be {}, not {}", path, expected, describe_type(value)));
}

json json_reader::parse(std::string_view text) const {
  struct level {
    bool is_object = false;
    std::set<std::string> keys;
    std::string current_key;
  };
  std::vector<level> levels;
  auto path_to = [&levels](std::string_view key) {
    std::string path;
    for (std::size_t i = 0; i + 1 < levels.size(); ++i) {
      if (levels[i].is_object) path = join_path(path, levels[i].current_key);
    }
    return join_path(path, key);
  };
  json::parser_callback_t on_event = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        levels.push_back({.is_object = true});
        break;
      case json::parse_event_t::array_start:
        levels.push_back({.is_object = false});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        levels.pop_back();
        break;
      case json::parse_event_t::key: {
        auto key = parsed.get<std::string>();
        auto& top = levels.back();
        if (!top.keys.insert(key).second) fail(fmt::format("duplicate key \"{}\"", path_to(key)));
        top.current_key = std::move(key);
        break;
      }
      case json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), on_event);
  } catch (const json::parse_error& e) {
    // nlohmann prefixes "[json.exception.parse_error.101] ", which means nothing to a user.
    std::string_view what = e.what();
    if (auto end = what.find("] "); what.starts_with("[json.exception") && end != what.npos) {
      what.remove_prefix(end + 2);
    }
    fail(fmt::format("invalid JSON: {}", what));
  }
}

const json& json_reader::object(const json& value, std::string_view path) const {
  if (!value.is_object()) wrong_type(value, path, "an object");
  return value;
}

const json& json_reader::array(const json& value, std::string_view path) const {
  if (!value.is_array()) wrong_type(value, path, "an array");
  return value;
}

std::string json_reader::string(const json& value, std::string_view path) const {
  if (!value.is_string()) wrong_type(value, path, "a string");
  return value.get<std::string>();
}

bool json_reader::boolean(const json& value, std::string_view path) const {
  if (!value.is_boolean()) wrong_type(value, path, "true or false");
  return value.get<bool>();
}

std::int64_t json_reader::integer(const json& value, std::string_view path, std::int64_t min,
                                  std::int64_t max) const {
  if (!value.is_number_integer()) wrong_type(value, path, "an integer");
  // Unsigned values above INT64_MAX cannot be in range; compare before converting.
  bool in_range = value.is_number_unsigned()
                      ? value.get<std::uint64_t>() <= static_cast<std::uint64_t>(max) &&
                            static_cast<std::int64_t>(value.get<std::uint64_t>()) >= min
                      : value.get<std::int64_t>() >= min && value.get<std::int64_t>() <= max;
  if (!in_range) {
    fail(fmt::format("{} must be between {} and {} (got {})", path, min, max, value.dump()));
  }
  return value.get<std::int64_t>();
}

std::vector<std::string> json_reader::strings(const json& value, std::string_view path) const {
  array(value, path);
  std::vector<std::string> out;
  for (std::size_t i = 0; i < value.size(); ++i) {
    out.push_back(string(value[i], fmt::format("{}[{}]", path, i)));
  }
  return out;
}

void json_reader::only_known_keys(const json& object, std::string_view path,
                                  std::span<const std::string_view> known) const {
  for (const auto& [key, value] : object.items()) {
    bool is_known = false;
    for (auto k : known)
      is_known = is_known || k == key;
    if (!is_known) {
      fail(fmt::format("unknown key \"{}\" (known: {})", join_path(path, key), join_keys(known)));
    }
  }
}

void json_reader::all_keys_present(const json& object, std::string_view path,
                                   std::span<const std::string_view> required) const {
  for (auto key : required) {
    if (!object.contains(key)) fail(fmt::format("missing key \"{}\"", join_path(path, key)));
  }
}

}  // namespace sbx::config::detail
