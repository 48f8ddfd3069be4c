#include "config/config.hpp"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "config/detail/embedded_data.hpp"
#include "config/detail/json_reader.hpp"
#include "config/detail/sections.hpp"
#include "config/detail/text.hpp"

namespace sbx::config {
namespace {

namespace fs = std::filesystem;
using namespace detail;

constexpr std::int64_t max_retention_days = 100 * 365;
constexpr std::int64_t min_queue_capacity = 16;
constexpr std::int64_t max_queue_capacity = 16 * 1024 * 1024;

constexpr std::string_view top_level_keys[] = {"listen",        "resolve",   "upstream_ca_file",
                                               "intercept_all", "anonymous", "services",
                                               "limits",        "log"};
constexpr std::string_view log_keys[] = {"retention_days", "queue_capacity"};
constexpr std::string_view catalogue_keys[] = {"services", "presets"};

anonymous_access read_anonymous(const json_reader& r, const json& value) {
  auto text = r.string(value, "anonymous");
  if (text == "same-user") return anonymous_access::same_user;
  if (text == "none") return anonymous_access::none;
  if (text == "any") return anonymous_access::any;
  r.fail(fmt::format(
      "anonymous: \"{}\" is not one of \"same-user\" (clients of this user over loopback), "
      "\"none\" (every client needs a sandbox token or --source address) or \"any\"",
      text));
}

void apply_resolve(const json_reader& r, const json& value, settings& s) {
  r.object(value, "resolve");
  for (const auto& [key, target] : value.items()) {
    auto path = fmt::format("resolve[\"{}\"]", key);
    auto parts = split(key);
    if (auto* why = std::get_if<std::string>(&parts)) {
      r.fail(fmt::format("{}: the key must be HOST:PORT: {}", path, *why));
    }
    auto& p = std::get<split_host_port>(parts);
    auto host = normalized_host(p.host);
    if (p.bracketed ? !is_ipv6_literal(host) : !host_name_problem(host).empty()) {
      r.fail(fmt::format("{}: \"{}\" is not a host name", path, p.host));
    }
    auto port = parse_port(p.port);
    if (!port || *port == 0) {
      r.fail(fmt::format("{}: port \"{}\" is not a number from 1 to 65535", path, p.port));
    }
    endpoint e;
    if (auto why = endpoint_problem(r.string(target, path), e); !why.empty()) {
      r.fail(fmt::format("{}: {}", path, why));
    }
    if (e.port == 0) r.fail(fmt::format("{}: the port must be from 1 to 65535", path));
    s.resolve[resolve_key(host, *port)] = e.to_string();
  }
}

void apply_log(const json_reader& r, const json& value, settings& s, bool complete) {
  r.object(value, "log");
  r.only_known_keys(value, "log", log_keys);
  if (complete) r.all_keys_present(value, "log", log_keys);
  if (value.contains("retention_days")) {
    s.log_retention_days = static_cast<int>(
        r.integer(value.at("retention_days"), "log.retention_days", 1, max_retention_days));
  }
  if (value.contains("queue_capacity")) {
    s.log_queue_capacity = static_cast<std::size_t>(r.integer(
        value.at("queue_capacity"), "log.queue_capacity", min_queue_capacity, max_queue_capacity));
  }
}

// Applies one config document on top of `s`. `complete` demands every key: the embedded defaults
// must show them all, since they double as the reference for users.
void apply(const json_reader& r, const json& doc, settings& s,
           const std::optional<fs::path>& base_dir, bool complete) {
  r.object(doc, "the configuration");
  r.only_known_keys(doc, "", top_level_keys);
  if (complete) r.all_keys_present(doc, "", top_level_keys);

  if (doc.contains("listen")) {
    auto listen = r.string(doc.at("listen"), "listen");
    endpoint e;
    if (auto why = endpoint_problem(listen, e); !why.empty()) {
      r.fail(fmt::format("listen: {}", why));
    }
    s.listen = std::move(listen);
  }
  if (doc.contains("resolve")) apply_resolve(r, doc.at("resolve"), s);
  if (doc.contains("upstream_ca_file")) {
    auto file = r.string(doc.at("upstream_ca_file"), "upstream_ca_file");
    if (!file.empty()) {
      fs::path path(file);
      if (path.is_relative() && base_dir) path = *base_dir / path;
      std::error_code ec;
      if (!fs::is_regular_file(path, ec)) {
        r.fail(fmt::format("upstream_ca_file: \"{}\" is not an existing file{}", path.string(),
                           ec ? fmt::format(" ({})", ec.message()) : ""));
      }
      file = path.string();
    }
    s.upstream_ca_file = std::move(file);
  }
  if (doc.contains("intercept_all")) {
    s.intercept_all = r.boolean(doc.at("intercept_all"), "intercept_all");
  }
  if (doc.contains("anonymous")) s.anonymous = read_anonymous(r, doc.at("anonymous"));
  if (doc.contains("services")) apply_services(r, doc.at("services"), s.services);
  if (doc.contains("limits")) apply_limits(r, doc.at("limits"), s.lim, complete);
  if (doc.contains("log")) apply_log(r, doc.at("log"), s, complete);
}

std::vector<service> catalogue_services() {
  json_reader r(detail::catalogue_origin);
  auto doc = r.parse(detail::embedded_catalogue_json());
  r.object(doc, "the catalogue");
  r.only_known_keys(doc, "", catalogue_keys);
  r.all_keys_present(doc, "", catalogue_keys);
  std::vector<service> services;
  apply_services(r, doc.at("services"), services);
  check_hosts_unique(r, services);
  return services;
}

settings embedded_settings() {
  settings s;
  s.services = catalogue_services();
  json_reader r(detail::defaults_origin);
  apply(r, r.parse(detail::embedded_defaults_json()), s, std::nullopt, true);
  check_hosts_unique(r, s.services);
  return s;
}

settings load_text(std::string_view text, std::string_view origin,
                   const std::optional<fs::path>& base_dir) {
  settings s = embedded_settings();
  json_reader r(origin);
  apply(r, r.parse(text), s, base_dir, false);
  check_hosts_unique(r, s.services);
  return s;
}

std::string read_config_file(const fs::path& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    throw config_error(fmt::format("{}: is a directory, not a config file", path.string()));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw config_error(
        fmt::format("{}: cannot read the config file: {}", path.string(), std::strerror(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    throw config_error(fmt::format("{}: cannot read the config file", path.string()));
  }
  return std::move(text).str();
}

}  // namespace

std::string_view to_string(anonymous_access a) {
  switch (a) {
    case anonymous_access::same_user:
      return "same-user";
    case anonymous_access::none:
      return "none";
    case anonymous_access::any:
      return "any";
  }
  return "none";
}

std::string endpoint::to_string() const {
  if (ip.find(':') != ip.npos) return fmt::format("[{}]:{}", ip, port);
  return fmt::format("{}:{}", ip, port);
}

endpoint parse_endpoint(std::string_view text) {
  endpoint e;
  if (auto why = endpoint_problem(text, e); !why.empty()) {
    throw config_error(fmt::format("\"{}\": {}", text, why));
  }
  return e;
}

const service* settings::find_service(std::string_view name) const {
  for (const auto& svc : services) {
    if (iequals(svc.name, name)) return &svc;
  }
  return nullptr;
}

const service* settings::service_for_host(std::string_view host) const {
  host = without_trailing_dot(host);
  for (const auto& svc : services) {
    for (const auto& h : svc.hosts) {
      if (iequals(h, host)) return &svc;
    }
  }
  return nullptr;
}

std::optional<endpoint> settings::resolve_override(std::string_view host,
                                                   std::uint16_t port) const {
  auto it = resolve.find(resolve_key(host, port));
  if (it == resolve.end()) return std::nullopt;
  return parse_endpoint(it->second);
}

settings load(const std::optional<std::filesystem::path>& file) {
  std::optional<fs::path> chosen = file;
  if (!chosen) {
    if (const char* env = std::getenv("SBX_CONFIG"); env != nullptr && *env != '\0') chosen = env;
  }
  if (!chosen) return load_text("{}", detail::defaults_origin, std::nullopt);

  auto text = read_config_file(*chosen);
  std::optional<fs::path> base_dir;
  if (chosen->has_parent_path()) base_dir = chosen->parent_path();
  auto s = load_text(text, chosen->string(), base_dir);
  std::error_code ec;
  auto absolute = fs::absolute(*chosen, ec);
  s.source_file = ec ? *chosen : absolute;
  return s;
}

settings load_from_string(std::string_view json_text, std::string_view origin) {
  return load_text(json_text, origin, std::nullopt);
}

std::string_view defaults_json() {
  return detail::embedded_defaults_json();
}

}  // namespace sbx::config
