// The `services` section: named credentials, the hosts they may go to and their header forms.
#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

#include "config/detail/sections.hpp"
#include "config/detail/text.hpp"

namespace sbx::config::detail {
namespace {

constexpr std::size_t max_service_name_length = 64;
constexpr std::string_view service_keys[] = {"hosts", "header", "headers", "env"};

// Headers that frame the message or speak to the proxy: a credential there would corrupt the
// request or go to the wrong party, so no service may inject one.
constexpr std::string_view forbidden_header_names[] = {"host",
                                                       "content-length",
                                                       "transfer-encoding",
                                                       "connection",
                                                       "keep-alive",
                                                       "proxy-connection",
                                                       "proxy-authorization",
                                                       "proxy-authenticate",
                                                       "te",
                                                       "trailer",
                                                       "upgrade"};

constexpr std::string_view secret_placeholder = "{secret}";

// Checks a "Name: value with {secret}" template and returns it as "Name: value".
std::string normalized_header(const json_reader& r, std::string_view text, std::string_view path) {
  auto colon = text.find(':');
  if (colon == text.npos) {
    r.fail(fmt::format("{}: \"{}\" must have the form \"Name: value with {}\"", path, text,
                       secret_placeholder));
  }
  auto name = text.substr(0, colon);
  if (name.empty() || !std::all_of(name.begin(), name.end(), is_token_char)) {
    r.fail(fmt::format("{}: \"{}\" is not a valid header name", path, name));
  }
  for (auto forbidden : forbidden_header_names) {
    if (iequals(name, forbidden)) {
      r.fail(fmt::format("{}: a credential cannot go in the {} header", path, name));
    }
  }
  auto value = text.substr(colon + 1);
  auto first = value.find_first_not_of(" \t");
  value = first == value.npos ? std::string_view() : value.substr(first);
  value = value.substr(0, value.find_last_not_of(" \t") + 1);
  // CR or LF would let a template split the request (header injection).
  for (char c : value) {
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) {
      r.fail(fmt::format("{}: the header value contains a control character", path));
    }
  }
  if (value.find(secret_placeholder) == value.npos) {
    r.fail(fmt::format("{}: \"{}\" has no {} placeholder in its value", path, text,
                       secret_placeholder));
  }
  return fmt::format("{}: {}", name, value);
}

std::string header_name(std::string_view normalized) {
  return std::string(normalized.substr(0, normalized.find(':')));
}

bool is_env_name(std::string_view name) {
  return !name.empty() && !is_digit(name.front()) &&
         std::all_of(name.begin(), name.end(), [](char c) { return is_alnum(c) || c == '_'; });
}

service read_service(const json_reader& r, std::string name, const json& value,
                     std::string_view path) {
  r.object(value, path);
  r.only_known_keys(value, path, service_keys);
  service svc;
  svc.name = std::move(name);

  auto hosts_path = join_path(path, "hosts");
  if (!value.contains("hosts")) {
    r.fail(fmt::format("{} is missing: a service needs the hosts its credential may go to",
                       hosts_path));
  }
  auto hosts = r.strings(value.at("hosts"), hosts_path);
  if (hosts.empty()) r.fail(fmt::format("{} must list at least one host", hosts_path));
  for (std::size_t i = 0; i < hosts.size(); ++i) {
    auto host = normalized_host(hosts[i]);
    if (auto why = host_name_problem(host); !why.empty()) {
      r.fail(fmt::format("{}[{}]: \"{}\": {}", hosts_path, i, hosts[i], why));
    }
    if (std::find(svc.hosts.begin(), svc.hosts.end(), host) != svc.hosts.end()) {
      r.fail(fmt::format("{}[{}]: \"{}\" is listed twice", hosts_path, i, host));
    }
    svc.hosts.push_back(std::move(host));
  }

  bool has_header = value.contains("header");
  bool has_headers = value.contains("headers");
  if (has_header && has_headers) {
    r.fail(fmt::format("{}: give either \"header\" or \"headers\", not both", path));
  }
  if (!has_header && !has_headers) {
    r.fail(fmt::format("{}: \"header\" is missing (for example \"Authorization: Bearer {}\")", path,
                       secret_placeholder));
  }
  if (has_header) {
    auto header_path = join_path(path, "header");
    svc.headers.push_back(
        normalized_header(r, r.string(value.at("header"), header_path), header_path));
  } else {
    auto headers_path = join_path(path, "headers");
    auto headers = r.strings(value.at("headers"), headers_path);
    if (headers.empty()) r.fail(fmt::format("{} must list at least one header form", headers_path));
    for (std::size_t i = 0; i < headers.size(); ++i) {
      auto form_path = fmt::format("{}[{}]", headers_path, i);
      auto form = normalized_header(r, headers[i], form_path);
      // The proxy rewrites a header the client sent by its name; two forms with one name would
      // leave it guessing which value shape to produce.
      for (const auto& earlier : svc.headers) {
        if (iequals(header_name(earlier), header_name(form))) {
          r.fail(fmt::format("{}: two header forms use the header name {}", form_path,
                             header_name(form)));
        }
      }
      svc.headers.push_back(std::move(form));
    }
  }

  if (value.contains("env")) {
    auto env_path = join_path(path, "env");
    svc.env = r.strings(value.at("env"), env_path);
    for (std::size_t i = 0; i < svc.env.size(); ++i) {
      if (!is_env_name(svc.env[i])) {
        r.fail(fmt::format("{}[{}]: \"{}\" is not an environment variable name", env_path, i,
                           svc.env[i]));
      }
    }
  }
  return svc;
}

}  // namespace

void apply_services(const json_reader& r, const json& value, std::vector<service>& services) {
  r.object(value, "services");
  std::set<std::string> seen;
  for (const auto& [key, service_value] : value.items()) {
    auto path = join_path("services", key);
    auto name = to_lower(key);
    if (name.empty() || name.size() > max_service_name_length || !is_lower_alnum(name.front()) ||
        !std::all_of(name.begin(), name.end(),
                     [](char c) { return is_lower_alnum(c) || c == '-' || c == '_'; })) {
      r.fail(
          fmt::format("{}: a service name is 1 to {} letters, digits, '-' or '_', starting with "
                      "a letter or digit",
                      path, max_service_name_length));
    }
    if (!seen.insert(name).second) {
      r.fail(fmt::format("{}: service \"{}\" is defined twice (names ignore case)", path, name));
    }
    auto svc = read_service(r, name, service_value, path);
    auto existing = std::find_if(services.begin(), services.end(),
                                 [&](const service& s) { return s.name == svc.name; });
    if (existing != services.end()) {
      *existing = std::move(svc);
    } else {
      services.push_back(std::move(svc));
    }
  }
}

void check_hosts_unique(const json_reader& r, const std::vector<service>& services) {
  std::map<std::string_view, std::string_view> owner;
  for (const auto& svc : services) {
    for (const auto& host : svc.hosts) {
      auto [it, inserted] = owner.emplace(host, svc.name);
      if (!inserted) {
        r.fail(fmt::format(
            "host \"{}\" is listed by both services \"{}\" and \"{}\"; a host can carry only one "
            "credential (override \"{}\" without it to move the host)",
            host, it->second, svc.name, it->second));
      }
    }
  }
}

}  // namespace sbx::config::detail
