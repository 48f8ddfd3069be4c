#include "config/config.hpp"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <variant>

#include <fmt/format.h>

#include "config/detail/embedded_data.hpp"
#include "config/detail/json_reader.hpp"

namespace sbx::config {
namespace {

namespace fs = std::filesystem;
using detail::join_path;
using detail::json;
using detail::json_reader;

// Ranges a config may set. Timeouts down to 10 ms let tests provoke them quickly; beyond a day a
// stuck peer would in practice hold its connection slot for ever.
constexpr std::int64_t min_timeout_ms = 10;
constexpr std::int64_t max_timeout_ms = 24LL * 60 * 60 * 1000;
constexpr std::int64_t max_shutdown_grace_ms = 10LL * 60 * 1000;
constexpr std::int64_t min_header_bytes = 1024;
constexpr std::int64_t max_header_bytes = 1024 * 1024;
constexpr std::int64_t max_connection_cap = 1'000'000;
constexpr std::int64_t max_retention_days = 100 * 365;
constexpr std::int64_t min_queue_capacity = 16;
constexpr std::int64_t max_queue_capacity = 16 * 1024 * 1024;
constexpr std::size_t max_service_name_length = 64;
constexpr std::size_t max_host_length = 253;  // RFC 1035 §2.3.4, without the trailing dot
constexpr std::size_t max_label_length = 63;

constexpr std::string_view top_level_keys[] = {
    "listen", "resolve", "upstream_ca_file", "intercept_all", "services", "limits", "log"};
constexpr std::string_view limits_keys[] = {
    "header_timeout_ms",   "idle_timeout_ms",        "connect_timeout_ms",
    "upstream_timeout_ms", "tunnel_idle_timeout_ms", "shutdown_grace_ms",
    "max_header_bytes",    "max_connections",        "max_connections_per_sandbox"};
constexpr std::string_view log_keys[] = {"retention_days", "queue_capacity"};
constexpr std::string_view service_keys[] = {"hosts", "header", "headers", "env"};
constexpr std::string_view catalogue_keys[] = {"services", "presets"};

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

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

std::string to_lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), ascii_lower);
  return out;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return ascii_lower(x) == ascii_lower(y);
         });
}

std::string_view without_trailing_dot(std::string_view host) {
  if (host.ends_with('.')) host.remove_suffix(1);
  return host;
}

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_lower_alnum(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z');
}
bool is_alnum(char c) {
  return is_lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

// RFC 9110 §5.6.2: field names are tokens.
bool is_token_char(char c) {
  return is_alnum(c) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool is_ipv4_literal(std::string_view text) {
  in_addr out{};
  return inet_pton(AF_INET, std::string(text).c_str(), &out) == 1;
}

bool is_ipv6_literal(std::string_view text) {
  in6_addr out{};
  return inet_pton(AF_INET6, std::string(text).c_str(), &out) == 1;
}

// 1 to 5 digits, at most 65535.
std::optional<std::uint16_t> parse_port(std::string_view text) {
  if (text.empty() || text.size() > 5) return std::nullopt;
  std::uint32_t value = 0;
  for (char c : text) {
    if (!is_digit(c)) return std::nullopt;
    value = value * 10 + static_cast<std::uint32_t>(c - '0');
  }
  if (value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

struct split_host_port {
  std::string_view host;  // without brackets
  std::string_view port;
  bool bracketed = false;
};

// Splits "host:port" / "[v6]:port"; the reason when it cannot.
std::variant<split_host_port, std::string> split(std::string_view text) {
  if (text.starts_with('[')) {
    auto close = text.find(']');
    if (close == text.npos) return std::string("missing ']' after the IPv6 address");
    auto rest = text.substr(close + 1);
    if (!rest.starts_with(':')) return std::string("missing \":PORT\" after the address");
    return split_host_port{text.substr(1, close - 1), rest.substr(1), true};
  }
  auto colon = text.rfind(':');
  if (colon == text.npos) return std::string("missing \":PORT\"");
  auto host = text.substr(0, colon);
  if (host.find(':') != host.npos) {
    return std::string("IPv6 addresses go in brackets, as in [::1]:3128");
  }
  return split_host_port{host, text.substr(colon + 1), false};
}

// The reason `text` is not an "ip:port" endpoint, or empty when it is one (then `out` is set).
std::string endpoint_problem(std::string_view text, endpoint& out) {
  auto parts = split(text);
  if (auto* why = std::get_if<std::string>(&parts)) return std::move(*why);
  auto& p = std::get<split_host_port>(parts);
  if (p.bracketed ? !is_ipv6_literal(p.host) : !is_ipv4_literal(p.host)) {
    return fmt::format(
        "\"{}\" is not an IP address (expected IP:PORT such as 127.0.0.1:3128 or "
        "[::1]:3128; host names are not accepted here)",
        p.host);
  }
  auto port = parse_port(p.port);
  if (!port) return fmt::format("port \"{}\" is not a number from 0 to 65535", p.port);
  out = endpoint{std::string(p.host), *port};
  return {};
}

// The reason `host` (already lower-case, without a trailing dot) is not an exact host name, or
// empty. IPv4 literals pass: they are valid names for a credential to go to.
std::string host_name_problem(std::string_view host) {
  if (host.empty()) return "the host name is empty";
  if (host.find('*') != host.npos) {
    return "wildcards are not allowed: a credential goes only to hosts named in full";
  }
  if (host.find("://") != host.npos || host.find('/') != host.npos) {
    return "expected a host name, not a URL";
  }
  if (host.find(':') != host.npos) return "expected a host name without a port";
  if (host.size() > max_host_length) return "the host name is longer than 253 characters";
  std::size_t label_start = 0;
  while (label_start <= host.size()) {
    auto dot = host.find('.', label_start);
    auto label = host.substr(label_start, dot == host.npos ? host.npos : dot - label_start);
    if (label.empty()) return "the host name has an empty label";
    if (label.size() > max_label_length) return "a label is longer than 63 characters";
    // '_' is not valid in host names, but it appears in real ones (and DNS allows it).
    for (char c : label) {
      if (!is_lower_alnum(c) && c != '-' && c != '_') {
        return fmt::format("'{}' is not allowed in a host name", c);
      }
    }
    if (dot == host.npos) break;
    label_start = dot + 1;
  }
  return {};
}

std::string normalized_host(std::string_view host) {
  return to_lower(without_trailing_dot(host));
}

std::string resolve_key(std::string_view host, std::uint16_t port) {
  auto h = normalized_host(host);
  if (h.find(':') != h.npos && !h.starts_with('[')) h = fmt::format("[{}]", h);
  return fmt::format("{}:{}", h, port);
}

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

// One host carries at most one credential: the proxy picks the service by host.
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

void apply_limits(const json_reader& r, const json& value, limits& lim, bool complete) {
  r.object(value, "limits");
  r.only_known_keys(value, "limits", limits_keys);
  if (complete) r.all_keys_present(value, "limits", limits_keys);
  auto read_ms = [&](std::string_view key, std::chrono::milliseconds& out, std::int64_t min,
                     std::int64_t max) {
    if (value.contains(key)) {
      out = std::chrono::milliseconds(r.integer(value.at(key), join_path("limits", key), min, max));
    }
  };
  auto read_count = [&](std::string_view key, std::size_t& out, std::int64_t min,
                        std::int64_t max) {
    if (value.contains(key)) {
      out = static_cast<std::size_t>(r.integer(value.at(key), join_path("limits", key), min, max));
    }
  };
  read_ms("header_timeout_ms", lim.header_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("idle_timeout_ms", lim.idle_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("connect_timeout_ms", lim.connect_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("upstream_timeout_ms", lim.upstream_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("tunnel_idle_timeout_ms", lim.tunnel_idle_timeout, min_timeout_ms, max_timeout_ms);
  read_ms("shutdown_grace_ms", lim.shutdown_grace, 0, max_shutdown_grace_ms);
  read_count("max_header_bytes", lim.max_header_bytes, min_header_bytes, max_header_bytes);
  read_count("max_connections", lim.max_connections, 1, max_connection_cap);
  read_count("max_connections_per_sandbox", lim.max_connections_per_sandbox, 1, max_connection_cap);
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
