#include <array>

#include <fmt/format.h>

#include "config/config.hpp"
#include "config/detail/embedded_data.hpp"
#include "config/detail/json_reader.hpp"

namespace sbx::config {
namespace {

using detail::join_path;
using detail::json;
using detail::json_reader;

constexpr std::string_view preset_keys[] = {"description", "allow", "deny"};

json catalogue_presets(const json_reader& r) {
  auto doc = r.parse(detail::embedded_catalogue_json());
  r.object(doc, "the catalogue");
  r.all_keys_present(doc, "", std::array<std::string_view, 1>{"presets"});
  return r.object(doc.at("presets"), "presets");
}

// The preset's JSON, or config_error listing the known names.
json find_preset(const json_reader& r, const json& presets, std::string_view name) {
  for (const auto& [key, value] : presets.items()) {
    if (key == name) return r.object(value, join_path("presets", key));
  }
  std::string known;
  for (const auto& [key, value] : presets.items()) {
    known += known.empty() ? key : ", " + key;
  }
  throw config_error(fmt::format("unknown preset \"{}\" (known: {})", name, known));
}

// Rules are grouped by category ({"ai-providers": [...], ...}) only so that the list reads well.
void add_rules(const json_reader& r, const json& groups, std::string_view path, policy::action act,
               std::vector<policy::rule>& out) {
  r.object(groups, path);
  for (const auto& [category, resources] : groups.items()) {
    auto category_path = join_path(path, category);
    auto texts = r.strings(resources, category_path);
    for (std::size_t i = 0; i < texts.size(); ++i) {
      try {
        out.push_back(policy::make_rule(0, "", act, texts[i], {}, {}, policy::rule_source::preset));
      } catch (const policy::rule_error& e) {
        r.fail(fmt::format("{}[{}]: \"{}\": {}", category_path, i, texts[i], e.what()));
      }
    }
  }
}

}  // namespace

std::vector<std::string> preset_names() {
  json_reader r(detail::catalogue_origin);
  std::vector<std::string> names;
  auto presets = catalogue_presets(r);
  for (const auto& [key, value] : presets.items())
    names.push_back(key);
  return names;
}

std::vector<policy::rule> preset_rules(std::string_view name) {
  json_reader r(detail::catalogue_origin);
  auto preset = find_preset(r, catalogue_presets(r), name);
  auto path = join_path("presets", name);
  r.only_known_keys(preset, path, preset_keys);
  std::vector<policy::rule> rules;
  if (preset.contains("allow")) {
    add_rules(r, preset.at("allow"), join_path(path, "allow"), policy::action::allow, rules);
  }
  if (preset.contains("deny")) {
    add_rules(r, preset.at("deny"), join_path(path, "deny"), policy::action::deny, rules);
  }
  return rules;
}

std::string preset_description(std::string_view name) {
  json_reader r(detail::catalogue_origin);
  auto preset = find_preset(r, catalogue_presets(r), name);
  auto path = join_path("presets", name);
  r.all_keys_present(preset, path, std::array<std::string_view, 1>{"description"});
  return r.string(preset.at("description"), join_path(path, "description"));
}

}  // namespace sbx::config
