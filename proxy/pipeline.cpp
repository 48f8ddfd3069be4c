#include "proxy/detail/pipeline.hpp"

#include <charconv>
#include <sstream>

#include <spdlog/spdlog.h>

#include "proxy/detail/log_writer.hpp"

namespace sbx::proxy::detail {
namespace {

using clock = std::chrono::steady_clock;

std::string scope_flag(std::string_view sandbox) {
  return sandbox.empty() ? std::string{} : fmt::format(" --sandbox {}", sandbox);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// row_builder

row_builder::row_builder(proxy_state& st, const std::string& client, const std::string& sandbox)
    : st_(st), start_(clock::now()) {
  row.ts = store::now_rfc3339();
  row.client = client;
  row.sandbox = sandbox;
  row.decision = "deny";
  row.rule = "default";
}

void row_builder::set_decision(const policy::decision& d) {
  row.decision = d.allowed() ? "allow" : "deny";
  row.rule = d.rule_label();
  row.reason = d.reason;
}

asio::awaitable<void> row_builder::finish(int status) {
  if (done_) co_return;
  done_ = true;
  row.status = status;
  row.duration_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(clock::now() - start_).count();
  auto& c = st_.counters;
  metrics::add(row.decision == "allow" ? c.decisions_allow : c.decisions_deny);
  metrics::add(c.bytes_up, static_cast<std::uint64_t>(row.bytes_up));
  metrics::add(c.bytes_down, static_cast<std::uint64_t>(row.bytes_down));
  if (row.decision == "deny") {
    spdlog::info("deny {} {}:{}{} sandbox={} client={} rule={} status={}: {}", row.method, row.host,
                 row.port, row.path, row.sandbox.empty() ? "-" : row.sandbox, row.client, row.rule,
                 status, row.reason);
  } else {
    spdlog::debug("allow {} {} {}:{}{} status={} up={} down={} {}ms", row.route, row.method,
                  row.host, row.port, row.path, status, row.bytes_up, row.bytes_down,
                  row.duration_ms);
  }
  co_await record_row(st_, std::move(row));
}

// ---------------------------------------------------------------------------------------------
// refusals

refusal bad_request(std::string why) {
  return refusal{.status = 400,
                 .code = "bad-request",
                 .text = "sbx-proxy: bad request: " + why,
                 .reason = {},
                 .keep_alive = false};
}

refusal policy_refusal(const policy::decision& d, std::string_view host, std::uint16_t port,
                       std::string_view method, std::string_view path, std::string_view sandbox) {
  refusal r{.status = 403, .code = d.blocked_address ? "blocked-address" : "blocked-by-policy"};
  const auto what = path.empty() ? fmt::format("{}:{}", host, port)
                                 : fmt::format("{} {}:{}{}", method, host, port, path);
  if (d.rule_id != 0) {
    // A deny rule decided: allowing again would not help (deny wins); say which rule to remove.
    r.text = fmt::format(
        "sbx-proxy: {} is blocked by policy: {}.\nTo change it: sbx policy ls, then sbx policy rm "
        "--id {}",
        what, d.reason, d.rule_id);
  } else if (path.empty()) {
    r.text = fmt::format(
        "sbx-proxy: {} is blocked by policy: {}.\nTo allow it: sbx policy allow network {}{}", what,
        d.reason, host, scope_flag(sandbox));
  } else {
    r.text = fmt::format(
        "sbx-proxy: {} is blocked by policy: {}.\nTo allow it: sbx policy allow network {} "
        "--method {} --path {}{}",
        what, d.reason, host, method, path, scope_flag(sandbox));
  }
  r.reason = d.reason;
  return r;
}

refusal upstream_refusal(const upstream_result& up, std::string_view host, std::uint16_t port,
                         std::string_view sandbox) {
  using outcome = upstream_result::outcome;
  switch (up.result) {
    case outcome::denied:
    case outcome::blocked_address:
      return policy_refusal(up.decision, host, port, {}, {}, sandbox);
    case outcome::timeout:
      return refusal{
          .status = 504,
          .code = "upstream-timeout",
          .text = fmt::format("sbx-proxy: {}:{} did not answer in time: {}", host, port, up.detail),
          .reason = up.detail};
    default:
      return refusal{
          .status = 502,
          .code = "upstream-unreachable",
          .text = fmt::format("sbx-proxy: cannot reach {}:{}: {}", host, port, up.detail),
          .reason = up.detail};
  }
}

std::optional<refusal> exchange_refusal(const exchange_result& x, std::string_view where) {
  using failure = exchange_result::failure;
  switch (x.fail) {
    case failure::upstream_timeout:
      return refusal{.status = 504,
                     .code = "upstream-timeout",
                     .text = fmt::format("sbx-proxy: {} did not respond in time", where),
                     .reason = "upstream did not respond in time"};
    case failure::upstream_read:
    case failure::upstream_write:
      return refusal{
          .status = 502,
          .code = "upstream-unreachable",
          .text = fmt::format("sbx-proxy: {} closed the connection before responding", where),
          .reason = "upstream closed the connection"};
    default:
      return std::nullopt;  // the client went away: nobody to answer
  }
}

bool idempotent(http::verb m) {
  switch (m) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::options:
    case http::verb::trace:
    case http::verb::put:
    case http::verb::delete_:
      return true;
    default:
      return false;
  }
}

std::optional<http::response<http::string_body>> answer_max_forwards(
    http::request<http::buffer_body>& req) {
  const auto it = req.find(http::field::max_forwards);
  if (it == req.end()) return std::nullopt;
  const std::string_view text(it->value().data(), it->value().size());
  unsigned long long value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) {
    // Not a number (RFC 9110 §7.6.2 makes it 1*DIGIT): forward it as it is, like an unknown field.
    return std::nullopt;
  }
  if (value > 0) {
    req.set(http::field::max_forwards, std::to_string(value - 1));
    return std::nullopt;
  }
  http::response<http::string_body> res{http::status::ok, 11};
  res.set(http::field::server, "sbx-proxy");
  if (req.method() == http::verb::trace) {
    // The final recipient of a TRACE reflects the request it received (RFC 9110 §9.3.8), less the
    // proxy's own credential.
    http::request_header<> echo = req.base();
    echo.erase(http::field::proxy_authorization);
    std::ostringstream os;
    os << echo;
    res.set(http::field::content_type, "message/http");
    res.body() = os.str();
  } else {
    res.set(http::field::allow, "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE");
  }
  res.prepare_payload();
  return res;
}

}  // namespace sbx::proxy::detail
