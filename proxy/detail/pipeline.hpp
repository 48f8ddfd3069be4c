// The one request pipeline. Every request the proxy relays — an absolute-form request on a plain
// client connection, an origin-form request inside an intercepted TLS session (and, later, an
// HTTP/2 stream) — goes through the same steps, written once here:
//
//   head (deadline, size limit) → framing checks → identity → target, Host, fragment → path
//   normal form → TRACE / Max-Forwards → decide + upstream → credential → relay → one retry rule
//   (idempotent methods only) → one refusal type → one row
//
// A route supplies only what differs between transports (Beast's run_session<Stream> idea, one
// level up): its streams, how it names the target and the sandbox, how it gets an upstream that
// policy allowed, and whether a credential goes in. A failing step returns a `refusal`, which one
// function turns into the response and the row.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "policy/store/state_db.hpp"
#include "proxy/detail/exchange.hpp"
#include "proxy/detail/net.hpp"
#include "proxy/detail/request_head.hpp"
#include "proxy/detail/state.hpp"
#include "proxy/detail/upstream.hpp"

namespace sbx::proxy::detail {

// Accumulates one decision-log row and records it when the exchange is over.
class row_builder {
 public:
  row_builder(proxy_state& st, const std::string& client, const std::string& sandbox);
  store::decision_row row;
  void set_decision(const policy::decision& d);
  // Counts and records the row (once; later calls do nothing). When the decision log's queue is
  // full this waits for room without blocking the thread (record_row): forgetting the co_await
  // would lose the row, hence [[nodiscard]].
  [[nodiscard]] asio::awaitable<void> finish(int status);

 private:
  proxy_state& st_;
  std::chrono::steady_clock::time_point start_;
  bool done_ = false;
};

// Why the proxy answers a request itself: what the client reads and what the row says.
struct refusal {
  int status = 400;
  std::string code = "bad-request";  // X-Proxy-Error
  std::string text;                  // body for the client: what happened, what to do
  std::string reason;                // for the row; the first line of `text` when empty
  bool keep_alive = false;           // the connection may serve another request afterwards
};

// 400 bad-request: "sbx-proxy: bad request: <why>". `why` must never carry a query string.
[[nodiscard]] refusal bad_request(std::string why);
// 403 for a policy refusal of the request (blocked-address when an address range decided it).
[[nodiscard]] refusal policy_refusal(const policy::decision& d, std::string_view host,
                                     std::uint16_t port, std::string_view method,
                                     std::string_view path, std::string_view sandbox);
// The refusal for an upstream that could not be chosen or connected (denied, DNS, connect).
[[nodiscard]] refusal upstream_refusal(const upstream_result& up, std::string_view host,
                                       std::uint16_t port, std::string_view sandbox);
// The refusal for an exchange that failed before any response byte reached the client; nullopt
// when the connection can only be closed (the response had started, or the client went away).
[[nodiscard]] std::optional<refusal> exchange_refusal(const exchange_result& x,
                                                      std::string_view where);

// Idempotent methods (RFC 9110 §9.2.2): safe to send again when a kept-alive connection turns out
// to have been closed by the upstream before any response byte came back.
[[nodiscard]] bool idempotent(http::verb m);

// Where a request goes, as the route read it from the target (and Host).
struct request_target {
  std::string host;
  std::uint16_t port = 0;
  std::string scheme;    // "http" | "https"
  std::string raw_path;  // the path as sent, without query
  std::string query;     // "?a=b" or empty
};

// Max-Forwards (RFC 9110 §7.6.2) on TRACE and OPTIONS: 0 means the proxy is the final recipient.
// Returns the response to send, or nullopt to forward (with the field decremented in `req`).
[[nodiscard]] std::optional<http::response<http::string_body>> answer_max_forwards(
    http::request<http::buffer_body>& req);

// Writes a refusal as the response, finishes the row; returns whether the connection goes on.
template <class Stream>
asio::awaitable<bool> send_refusal(Stream& client, const config::limits& lim, bool draining,
                                   unsigned version, const refusal& r, row_builder& row) {
  auto res = make_proxy_error(version, r.status, r.code, r.text, r.keep_alive && !draining);
  beast::get_lowest_layer(client).expires_after(lim.idle_timeout);
  auto [ec, n] = co_await http::async_write(client, res, use_nothrow);
  row.row.bytes_down += static_cast<std::int64_t>(n);
  // Refused by the proxy (4xx): not allowed, whatever policy said. 5xx: allowed, upstream failed.
  if (r.status >= 400 && r.status < 500) row.row.decision = "deny";
  if (!r.reason.empty()) {
    if (row.row.reason.empty() || r.status != 403) {
      row.row.reason = row.row.reason.empty() ? r.reason : row.row.reason + "; " + r.reason;
    }
  } else if (row.row.reason.empty()) {
    row.row.reason = r.text.substr(0, r.text.find('\n'));
  }
  co_await row.finish(r.status);
  co_return !ec && r.keep_alive && !draining;
}

// What the pipeline needs from the connection it serves, besides the route.
struct pipeline_env {
  proxy_state& st;
  const std::string& client_addr;
  bool& idle;
  const bool& draining;
  // The whole head must be in by then (a connection's first request: first_byte_timeout).
  std::optional<std::chrono::steady_clock::time_point> head_not_after = std::nullopt;
};

// Serves one request on `route`. Returns true when the connection may carry another request.
//
// Route hooks (all members of Route):
//   client(), client_buf()                      the client stream and its read buffer
//   settings()                                  the config snapshot for this request
//   sandbox()                                   the connection's sandbox so far ("" = none)
//   init_row(row)                               route, scheme, host defaults for the row
//   identify(req, row) -> optional<refusal>     who sent it (sets row.sandbox)
//   on_connect(parser, row) -> awaitable<bool>  a CONNECT request
//   target(req) -> variant-like: optional<refusal> + request_target&
//   open(facts, row, kept_alive&) -> awaitable<optional<refusal>>   decide + an upstream
//   will_inject(req) -> bool                    a credential would go into this request
//   inject(req, row)                            put it in
//   relay(parser, shape, chunk, limits) -> awaitable<exchange_result>
//   drop_upstream()                             the upstream connection is not used again
//   after_exchange(x)                           keep or drop the upstream after a whole exchange
//   on_close(keep_alive) -> awaitable<void>     after a refusal that ends the connection
template <class Route>
asio::awaitable<bool> serve_request(Route& route, pipeline_env env) {
  auto& st = env.st;
  const auto cfg = route.settings();
  const auto& lim = cfg->lim;
  std::size_t head_len = 0;
  const auto hr = co_await read_request_head(route.client(), route.client_buf(), lim, env.idle,
                                             env.draining, head_len, env.head_not_after);
  if (hr == head_result::closed) co_return false;

  row_builder row(st, env.client_addr, route.sandbox());
  route.init_row(row);
  auto refuse = [&](unsigned version, const refusal& r) -> asio::awaitable<bool> {
    if (r.code == "bad-request") metrics::add(st.counters.bad_requests);
    const bool go_on = co_await send_refusal(route.client(), lim, env.draining, version, r, row);
    if (!go_on) co_await route.on_close(r.keep_alive);
    co_return go_on;
  };

  if (hr != head_result::ok) {
    refusal r;
    if (hr == head_result::too_large) {
      r.status = 431;
      r.text = fmt::format("sbx-proxy: request header section larger than {} bytes",
                           lim.max_header_bytes);
    } else {
      r.status = 408;
      r.text = "sbx-proxy: request header not received in time";
    }
    co_return co_await refuse(11, r);
  }

  {
    std::string_view head(static_cast<const char*>(route.client_buf().data().data()), head_len);
    // Up to any whitespace: a malformed line ("GET\t/x?q") must not put its target in the row.
    if (auto sp = head.find_first_of(" \t\r\n"); sp != std::string_view::npos && sp < 32) {
      row.row.method = std::string(head.substr(0, sp));
    }
  }
  request_parser p;
  if (auto why = parse_request_head(route.client_buf(), head_len, lim.max_header_bytes, p);
      !why.empty()) {
    co_return co_await refuse(11, bad_request(std::move(why)));
  }
  auto& req = p.get();
  const unsigned version = req.version();
  row.row.method = std::string(req.method_string().data(), req.method_string().size());
  metrics::add(st.counters.requests_total);

  if (auto r = route.identify(req, row)) co_return co_await refuse(version, *r);
  if (req.method() == http::verb::connect) co_return co_await route.on_connect(p, row);

  const bool has_body = !p.is_done();
  // A refused request whose body is still unread cannot keep the connection: its bytes would be
  // read as the next request.
  auto keep_unless_body = [&](refusal r) {
    r.keep_alive = req.keep_alive() && !has_body;
    return r;
  };

  request_target t;
  if (auto r = route.target(req, t)) co_return co_await refuse(version, *r);
  row.row.scheme = t.scheme;
  row.row.host = t.host;
  row.row.port = t.port;
  row.row.path = t.raw_path;
  auto path = policy::normalize_path(t.raw_path);
  if (!path) co_return co_await refuse(version, bad_request("malformed request path"));
  row.row.path = *path;

  auto rules = st.rules.load();
  policy::facts f{.sandbox = row.row.sandbox,
                  .host = t.host,
                  .port = t.port,
                  .method = row.row.method,
                  .path = *path};

  // TRACE and OPTIONS with Max-Forwards: 0 are answered here (RFC 9110 §7.6.2), once policy allows
  // the destination by name; nothing is sent upstream.
  if (req.method() == http::verb::trace || req.method() == http::verb::options) {
    auto by_name = rules->decide(f);
    if (!by_name.allowed()) {
      row.set_decision(by_name);
      co_return co_await refuse(
          version, keep_unless_body(policy_refusal(by_name, t.host, t.port, row.row.method, *path,
                                                   row.row.sandbox)));
    }
    if (auto res = answer_max_forwards(req)) {
      row.set_decision(by_name);
      row.row.reason += "; Max-Forwards: 0, answered by the proxy";
      res->keep_alive(req.keep_alive() && !has_body && !env.draining);
      beast::get_lowest_layer(route.client()).expires_after(lim.idle_timeout);
      auto [ec, n] = co_await http::async_write(route.client(), *res, use_nothrow);
      row.row.bytes_down += static_cast<std::int64_t>(n);
      co_await row.finish(200);
      const bool go_on = !ec && res->keep_alive();
      if (!go_on) co_await route.on_close(false);
      co_return go_on;
    }
  }
  // TRACE echoes the request back (RFC 9110 §9.3.8): it never carries a credential.
  if (req.method() == http::verb::trace && route.will_inject(req)) {
    refusal r{.status = 405,
              .code = "method-not-allowed",
              .text = fmt::format("sbx-proxy: TRACE to {} is refused: the proxy injects a "
                                  "credential for this host and TRACE would echo it back.",
                                  t.host),
              .reason = "TRACE on a credential-injected host"};
    co_return co_await refuse(version, keep_unless_body(std::move(r)));
  }

  bool kept_alive = false;
  if (auto r = co_await route.open(f, row, kept_alive)) {
    if (r->status == 403) r = keep_unless_body(std::move(*r));
    co_return co_await refuse(version, *r);
  }
  route.inject(req, row);

  // What goes upstream is the path policy decided on (normal form) and the query as sent, so the
  // upstream cannot read a different path than the one allowed.
  std::string origin_form = *path + t.query;
  const auto shape = prepare_upstream_request(req, origin_form);
  const exchange_limits xl{.client_read = lim.idle_timeout,
                           .upstream_read = lim.upstream_timeout,
                           .write = lim.idle_timeout,
                           .tunnel_idle = lim.tunnel_idle_timeout,
                           .header_limit = static_cast<std::uint32_t>(lim.max_header_bytes)};
  borrowed_buffer chunk;  // held for this exchange only
  exchange_result x;
  for (int attempt = 0;; ++attempt) {
    x = co_await route.relay(p, shape, chunk.get(), xl);
    using failure = exchange_result::failure;
    // The one retry rule: a kept-alive upstream connection that the upstream closed while it sat
    // idle, nothing of the request body or response moved, and the method is idempotent. (Not a
    // response refused for what it said: x.detail.)
    const bool stale = kept_alive && attempt == 0 && !has_body && idempotent(req.method()) &&
                       !x.response_started && !x.request_body_started && x.detail.empty() &&
                       (x.fail == failure::upstream_write || x.fail == failure::upstream_read);
    if (!stale) break;
    route.drop_upstream();
    kept_alive = false;
    f.address.reset();
    if (auto r = co_await route.open(f, row, kept_alive)) {
      r->keep_alive = false;
      co_return co_await refuse(version, *r);
    }
  }
  row.row.bytes_up += static_cast<std::int64_t>(x.bytes_up);
  row.row.bytes_down += static_cast<std::int64_t>(x.bytes_down);
  if (x.fail != exchange_result::failure::none) {
    route.drop_upstream();
    const bool upstream_side = x.fail == exchange_result::failure::upstream_read ||
                               x.fail == exchange_result::failure::upstream_write ||
                               x.fail == exchange_result::failure::upstream_timeout;
    if (upstream_side) metrics::add(st.counters.upstream_errors);
    if (!x.response_started) {
      if (auto r = exchange_refusal(x, fmt::format("{}:{}", t.host, t.port))) {
        co_return co_await refuse(version, *r);
      }
    }
    co_await row.finish(x.status);
    co_await route.on_close(false);
    co_return false;
  }
  co_await row.finish(x.status);
  route.after_exchange(x);
  co_return x.client_keep_alive && !x.upgraded && !env.draining;
}

}  // namespace sbx::proxy::detail
