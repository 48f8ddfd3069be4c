#include "proxy/detail/control_api.hpp"

#include <sys/resource.h>

#include <cctype>
#include <chrono>
#include <map>

#include <fmt/format.h>

namespace sbx::proxy::detail {
namespace {

using clock = std::chrono::steady_clock;

std::string url_decode(std::string_view s) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '+') {
      out.push_back(' ');
    } else if (s[i] == '%' && i + 2 < s.size() &&
               std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
               std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::map<std::string, std::string> query_params(std::string_view target) {
  std::map<std::string, std::string> out;
  const auto q = target.find('?');
  if (q == std::string_view::npos) return out;
  auto rest = target.substr(q + 1);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    auto part = rest.substr(0, amp);
    auto eq = part.find('=');
    out[url_decode(part.substr(0, eq))] =
        eq == std::string_view::npos ? "" : url_decode(part.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest = rest.substr(amp + 1);
  }
  return out;
}

}  // namespace

std::int64_t peak_rss_kib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

store::decision_filter decision_filter_from_query(std::string_view target) {
  auto q = query_params(target);
  store::decision_filter f;
  if (q.contains("sandbox")) f.sandbox = q["sandbox"];
  if (q.contains("since") && !q["since"].empty()) f.since = store::parse_since(q["since"]);
  if (q.contains("host") && !q["host"].empty()) f.host_pattern = q["host"];
  if (q.contains("decision") && !q["decision"].empty()) f.decision = q["decision"];
  if (q.contains("blocked")) f.decision = "deny";
  if (q.contains("allowed")) f.decision = "allow";
  if (q.contains("after_id")) f.after_id = std::stoll(q["after_id"]);
  f.limit = q.contains("limit") ? std::stoll(q["limit"]) : 100;
  return f;
}

std::string prometheus_text(const proxy_state& state, const store::decision_log& log) {
  const auto& c = state.counters;
  std::string out;
  auto metric = [&](std::string_view name, std::string_view type, std::string_view help,
                    std::initializer_list<std::pair<std::string_view, double>> samples) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
    for (auto& [labels, v] : samples) {
      out += labels.empty() ? fmt::format("{} {}\n", name, v)
                            : fmt::format("{}{{{}}} {}\n", name, labels, v);
    }
  };
  auto d = [](const auto& a) { return static_cast<double>(a.load(std::memory_order_relaxed)); };
  metric("sbx_requests_total", "counter", "Requests received, CONNECT included.",
         {{"", d(c.requests_total)}});
  metric(
      "sbx_decisions_total", "counter", "Policy decisions by outcome.",
      {{"decision=\"allow\"", d(c.decisions_allow)}, {"decision=\"deny\"", d(c.decisions_deny)}});
  metric("sbx_routes_total", "counter", "Allowed requests by route.",
         {{"route=\"forward\"", d(c.routes_forward)},
          {"route=\"tunnel\"", d(c.routes_tunnel)},
          {"route=\"intercept\"", d(c.routes_intercept)}});
  metric("sbx_connections_total", "counter", "Client connections accepted.",
         {{"", d(c.connections_total)}});
  metric("sbx_active_connections", "gauge", "Client connections open now.",
         {{"", d(c.active_connections)}});
  metric("sbx_active_tunnels", "gauge", "CONNECT tunnels open now.", {{"", d(c.active_tunnels)}});
  metric("sbx_bytes_total", "counter", "Bytes relayed.",
         {{"direction=\"up\"", d(c.bytes_up)}, {"direction=\"down\"", d(c.bytes_down)}});
  metric("sbx_errors_total", "counter", "Requests refused or failed, by kind.",
         {{"kind=\"bad_request\"", d(c.bad_requests)},
          {"kind=\"auth\"", d(c.auth_failures)},
          {"kind=\"upstream\"", d(c.upstream_errors)},
          {"kind=\"connection_limit\"", d(c.connection_limit_rejections)},
          {"kind=\"client_connection_limit\"", d(c.client_limit_rejections)}});
  metric("sbx_credentials_total", "counter", "Credential injections, by outcome.",
         {{"outcome=\"injected\"", d(c.credentials_injected)},
          {"outcome=\"missing\"", d(c.credentials_missing)}});
  metric("sbx_upstream_tls_total", "counter",
         "Upstream TLS connections of intercepted CONNECTs: new handshakes, idle ones reused.",
         {{"kind=\"handshake\"", d(c.upstream_tls_handshakes)},
          {"kind=\"reused\"", d(c.upstream_tls_reused)}});
  metric("sbx_log_queue_depth", "gauge", "Decision rows waiting to be written.",
         {{"", static_cast<double>(log.queue_depth())}});
  metric("sbx_log_rows_written_total", "counter", "Decision rows committed to policy.db.",
         {{"", static_cast<double>(log.rows_written())}});
  metric("sbx_decision_log_waits_total", "counter",
         "Times a session found the decision-log queue full and waited for room.",
         {{"", d(c.log_waits)}});
  metric("sbx_log_write_errors_total", "counter", "Failed decision-log transactions (retried).",
         {{"", static_cast<double>(log.write_errors())}});
  metric("sbx_uptime_seconds", "gauge", "Seconds since start.",
         {{"", std::chrono::duration<double>(clock::now() - state.started).count()}});
  metric("sbx_peak_rss_bytes", "gauge", "Peak resident memory.",
         {{"", static_cast<double>(peak_rss_kib()) * 1024}});
  return out;
}

}  // namespace sbx::proxy::detail
