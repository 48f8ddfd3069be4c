#include "proxy/detail/session.hpp"

#include <unordered_set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "proxy/detail/intercept.hpp"
#include "proxy/detail/request_head.hpp"
#include "proxy/detail/upstream.hpp"

namespace sbx::proxy::detail {
namespace {

using clock = std::chrono::steady_clock;

// After an error response: how long a client may keep sending before the socket is closed.
constexpr auto lingering_close_limit = std::chrono::seconds(2);

// Sessions of this thread's io_context (one thread per io_context), for drain and force-close.
thread_local std::unordered_set<client_session*> live_sessions;

std::string_view sv(beast::string_view s) {
  return {s.data(), s.size()};
}

std::string endpoint_text(const tcp::socket& s) {
  error_code ec;
  auto ep = s.remote_endpoint(ec);
  if (ec) return "unknown";
  return ep.address().is_v6() ? fmt::format("[{}]:{}", ep.address().to_string(), ep.port())
                              : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// client_session

client_session::client_session(tcp::socket socket, proxy_state& st, limiter_slot client_slot)
    : client_(std::move(socket)), st_(st), client_slot_(std::move(client_slot)) {
  client_addr_ = endpoint_text(client_.socket());
  // A socket already gone has no owner to find: same-user then refuses it, as it should.
  peer_ = make_peer_info(client_.socket()).value_or(peer_info{});
  live_sessions.insert(this);
  st_.counters.active_connections.fetch_add(1, std::memory_order_relaxed);
  metrics::add(st_.counters.connections_total);
}

client_session::~client_session() {
  live_sessions.erase(this);
  if (holds_slot_ && identity_) st_.per_sandbox.release(*identity_);
  st_.counters.active_connections.fetch_sub(1, std::memory_order_relaxed);
}

void client_session::drain() {
  draining_ = true;
  if (idle_) {
    error_code ignored;
    client_.socket().cancel(ignored);
  }
}

void client_session::force_close() {
  draining_ = true;
  error_code ignored;
  client_.socket().close(ignored);
  if (upstream_) upstream_->stream.socket().close(ignored);
}

asio::awaitable<void> client_session::run() {
  error_code ec;
  client_.socket().set_option(tcp::no_delay(true), ec);
  // The first request head must be complete within first_byte_timeout of the accept: a client
  // cannot hold slots with connections that say nothing (issue 8). Later requests on a kept-alive
  // connection wait for the idle timeout as usual.
  std::optional<clock::time_point> head_not_after =
      accepted_ + st_.settings.load()->lim.first_byte_timeout;
  while (!draining_) {
    if (!co_await serve_request(
            *this, pipeline_env{st_, client_addr_, idle_, draining_, head_not_after})) {
      break;
    }
    head_not_after.reset();
  }
  client_.socket().shutdown(tcp::socket::shutdown_send, ec);
  client_.socket().close(ec);
}

asio::awaitable<void> client_session::lingering_close() {
  // Closing with unread request bytes in the kernel buffer sends RST, which can destroy the error
  // response before the client reads it. Half-close, then drain briefly (bounded in time and
  // bytes).
  error_code ec;
  client_.socket().shutdown(tcp::socket::shutdown_send, ec);
  std::array<char, 4096> sink{};
  std::size_t drained = 0;
  const auto deadline = clock::now() + lingering_close_limit;
  while (!ec && drained < 256 * 1024) {
    client_.expires_at(deadline);
    auto [rec, n] = co_await client_.async_read_some(asio::buffer(sink), use_nothrow);
    drained += n;
    ec = rec;
  }
  client_.socket().close(ec);
  draining_ = true;
}

bool client_session::claim_identity(const std::string& sandbox) {
  if (identity_) return *identity_ == sandbox;
  identity_ = sandbox;
  holds_slot_ = st_.per_sandbox.try_acquire(sandbox, cfg_->lim.max_connections_per_sandbox);
  return holds_slot_;
}

std::shared_ptr<const config::settings> client_session::settings() {
  cfg_ = st_.settings.load();
  return cfg_;
}

void client_session::init_row(row_builder& row) {
  row.row.route = "forward";
}

asio::awaitable<void> client_session::on_close(bool keep_alive) {
  if (!keep_alive) co_await lingering_close();
}

asio::awaitable<bool> client_session::refuse(unsigned version, const refusal& r, row_builder& row) {
  if (r.code == "bad-request") metrics::add(st_.counters.bad_requests);
  const bool go_on = co_await send_refusal(client_, cfg_->lim, draining_, version, r, row);
  if (!go_on) co_await lingering_close();
  co_return go_on;
}

std::optional<refusal> client_session::identify(const http::request<http::buffer_body>& req,
                                                row_builder& row) {
  // Identity (identity.hpp): the source address, else a valid token, else anonymous as the
  // `anonymous` mode allows; anything else is a 407.
  auto id = resolve_identity(st_, peer_, sv(req[http::field::proxy_authorization]));
  if (!id.ok()) {
    metrics::add(st_.counters.auth_failures);
    row.row.sandbox = id.sandbox;  // a bound address is still that sandbox in the log
    return refusal{.status = id.refusal->status,
                   .code = std::string(id.refusal->code),
                   .text = std::move(id.refusal->text),
                   .reason = std::move(id.refusal->reason)};
  }
  const std::string& sandbox = id.sandbox;
  row.row.sandbox = sandbox;
  if (!claim_identity(sandbox)) {
    metrics::add(st_.counters.connection_limit_rejections);
    if (identity_ && *identity_ != sandbox) {
      return refusal{.status = 407,
                     .code = "proxy-auth-required",
                     .text = "sbx-proxy: one connection cannot change sandbox identity"};
    }
    return refusal{.status = 429,
                   .code = "connection-limit",
                   .text = fmt::format("sbx-proxy: more than {} connections for this sandbox",
                                       cfg_->lim.max_connections_per_sandbox)};
  }
  return std::nullopt;
}

std::optional<refusal> client_session::target(http::request<http::buffer_body>& req,
                                              request_target& t) {
  const auto raw = sv(req.target());
  // A fragment is the client's business (RFC 9110 §7.1): a request carrying one is malformed, and
  // servers disagree about whether it ends the path.
  if (raw.find('#') != std::string_view::npos) {
    return bad_request("request target contains a fragment ('#')");
  }
  auto tgt = parse_absolute_target(raw);
  if (!tgt) {
    return bad_request(raw.starts_with('/')
                           ? "this is a proxy: send absolute-form requests (GET http://host/path) "
                             "or CONNECT host:port"
                           : "malformed request target");
  }
  t.scheme = tgt->scheme;
  t.host = tgt->where.host;
  t.port = tgt->where.port;
  t.raw_path = tgt->path;
  t.query = tgt->origin_form.substr(tgt->path.size());
  if (tgt->scheme != "http") {
    return bad_request("https:// URLs go through CONNECT: point HTTPS_PROXY at this proxy");
  }
  const auto host_field = sv(req[http::field::host]);
  if (host_field.empty()) {
    if (req.version() == 11) return bad_request("missing Host header");
    req.set(http::field::host,
            tgt->where.ipv6 ? fmt::format("[{}]", tgt->where.host) : tgt->where.host);
  } else {
    auto h = parse_authority(host_field, 80);
    if (!h || h->host != tgt->where.host || h->port != tgt->where.port) {
      // The query string is never logged.
      // Neither quoted past a '?', '/' or '#': a query string is never logged.
      return bad_request(fmt::format("Host header \"{}\" does not match the request target \"{}\"",
                                     host_field.substr(0, host_field.find_first_of("?/#")),
                                     raw.substr(0, raw.find('?'))));
    }
  }
  return std::nullopt;
}

asio::awaitable<std::optional<refusal>> client_session::open(policy::facts& f, row_builder& row,
                                                             bool& kept_alive) {
  if (upstream_ && upstream_->host == f.host && upstream_->port == f.port &&
      upstream_->stream.socket().is_open()) {
    // The kept connection's address was checked when it was opened; the request is decided again
    // with it (its method and path may be denied).
    f.address = upstream_->address;
    auto d = st_.rules.load()->decide(f);
    row.set_decision(d);
    if (!d.allowed()) {
      co_return policy_refusal(d, f.host, f.port, f.method, f.path, row.row.sandbox);
    }
    kept_alive = true;
    metrics::add(st_.counters.routes_forward);
    co_return std::nullopt;
  }
  upstream_.reset();
  auto up = co_await open_upstream(*st_.rules.load(), *cfg_, f);
  row.set_decision(up.decision);
  if (!up.ok()) {
    if (up.result != upstream_result::outcome::denied &&
        up.result != upstream_result::outcome::blocked_address) {
      metrics::add(st_.counters.upstream_errors);
    }
    if (up.result == upstream_result::outcome::denied ||
        up.result == upstream_result::outcome::blocked_address) {
      co_return policy_refusal(up.decision, f.host, f.port, f.method, f.path, row.row.sandbox);
    }
    co_return upstream_refusal(up, f.host, f.port, row.row.sandbox);
  }
  upstream_.emplace(
      upstream_link{std::move(up.stream), {}, std::string(f.host), f.port, up.address});
  kept_alive = false;
  metrics::add(st_.counters.routes_forward);
  co_return std::nullopt;
}

asio::awaitable<exchange_result> client_session::relay(request_parser& p,
                                                       const request_shape& shape, char* chunk,
                                                       const exchange_limits& xl) {
  co_return co_await relay_exchange(client_, buf_, p, shape, upstream_->stream, upstream_->buf,
                                    chunk, xl);
}

void client_session::after_exchange(const exchange_result& x) {
  if (!x.upstream_reusable || x.upgraded) upstream_.reset();
  release_if_empty(buf_);
  if (upstream_) release_if_empty(upstream_->buf);
}

asio::awaitable<bool> client_session::on_connect(request_parser& p, row_builder& row) {
  auto& req = p.get();
  row.row.route = "tunnel";
  const auto raw = sv(req.target());
  auto where = parse_authority(raw);
  if (!where) {
    // Only up to a '?', '/' or '#': the rest of a malformed target is not the row's business.
    const auto shown = raw.substr(0, raw.find_first_of("?/#"));
    co_return co_await refuse(
        req.version(),
        bad_request(fmt::format("CONNECT needs host:port, got \"{}\"", shown.substr(0, 255))), row);
  }
  row.row.host = where->host;
  row.row.port = where->port;
  row.row.scheme = where->port == 80 ? "http" : "https";
  if (!p.is_done()) {
    co_return co_await refuse(req.version(), bad_request("a CONNECT request has no body"), row);
  }

  auto rules = st_.rules.load();
  policy::facts f{.sandbox = row.row.sandbox, .host = where->host, .port = where->port};
  // Interception (credential injection, per-request rules) when it applies; else a blind tunnel.
  intercept_plan plan;
  if (st_.intercept) {
    plan = st_.intercept->plan(*rules, *cfg_, row.row.sandbox, where->host, where->port);
  }
  auto choice = co_await choose_upstream(*rules, *cfg_, f);
  upstream_result up(client_.get_executor());
  std::shared_ptr<pooled_upstream> pooled;
  if (plan.intercept && choice.ok()) {
    pooled =
        st_.intercept->take_pooled(client_.get_executor(), row.row.sandbox, *where, choice, up);
  }
  if (!pooled) co_await connect_upstream(choice, *cfg_, f, up);
  row.set_decision(up.decision);
  if (!up.ok()) {
    if (up.result != upstream_result::outcome::denied &&
        up.result != upstream_result::outcome::blocked_address) {
      metrics::add(st_.counters.upstream_errors);
    }
    auto r = upstream_refusal(up, where->host, where->port, row.row.sandbox);
    r.keep_alive = req.keep_alive();
    co_return co_await refuse(req.version(), r, row);
  }

  if (plan.intercept) {
    // A named local passed by reference: GCC 12 destroys a by-value coroutine parameter built
    // from a temporary aggregate twice.
    intercept_request request{st_,           cfg_,   client_,   buf_,
                              std::move(up), *where, row,       std::move(plan),
                              client_addr_,  idle_,  draining_, std::move(pooled)};
    co_await st_.intercept->run(request);
    co_return false;
  }
  if (plan.service) {
    row.row.reason +=
        fmt::format("; no {} secret stored, tunnelled without injection", plan.service->name);
  }

  metrics::add(st_.counters.routes_tunnel);
  static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
  client_.expires_after(cfg_->lim.idle_timeout);
  auto [ec, n] = co_await asio::async_write(client_, asio::buffer(established), use_nothrow);
  client_.expires_never();
  if (ec) {
    co_await row.finish(0);
    co_return false;
  }
  std::string initial(static_cast<const char*>(buf_.data().data()), buf_.size());
  buf_.consume(buf_.size());
  // A tunnel may stay open for hours: it needs neither the request-head buffer nor the upstream
  // link of earlier forwarded requests, so give their memory back (it matters with thousands of
  // idle tunnels).
  buf_.shrink_to_fit();
  upstream_.reset();
  // Domain fronting: the ClientHello's SNI, when it names another host than the CONNECT, must be
  // allowed too (a named local: run_tunnel takes the check by reference).
  const auto sni_check =
      sni_policy_check(std::move(rules), row.row.sandbox, where->host, where->port);
  st_.counters.active_tunnels.fetch_add(1, std::memory_order_relaxed);
  auto totals =
      co_await run_tunnel(client_.socket(), up.stream.socket(), initial,
                          cfg_->lim.tunnel_idle_timeout, sni_check, cfg_->lim.header_timeout);
  st_.counters.active_tunnels.fetch_sub(1, std::memory_order_relaxed);
  row.row.bytes_up = static_cast<std::int64_t>(totals.up);
  row.row.bytes_down = static_cast<std::int64_t>(totals.down);
  if (totals.refused) row.set_decision(*totals.refused);
  if (totals.idle_timeout) row.row.reason += "; closed after idle timeout";
  co_await row.finish(200);
  co_return false;
}

// ---------------------------------------------------------------------------------------------

void spawn_session(tcp::socket socket, proxy_state& st, limiter_slot client_slot) {
  auto ex = socket.get_executor();
  asio::co_spawn(
      ex,
      [](tcp::socket s, proxy_state& state, limiter_slot slot) -> asio::awaitable<void> {
        client_session session(std::move(s), state, std::move(slot));
        co_await session.run();
      }(std::move(socket), st, std::move(client_slot)),
      [](std::exception_ptr e) {
        if (!e) return;
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          spdlog::error("session ended by an unexpected error: {}", ex.what());
        }
      });
}

void drain_sessions_on_this_thread() {
  for (auto* s : std::vector<client_session*>(live_sessions.begin(), live_sessions.end())) {
    s->drain();
  }
}

void force_close_sessions_on_this_thread() {
  for (auto* s : std::vector<client_session*>(live_sessions.begin(), live_sessions.end())) {
    s->force_close();
  }
}

}  // namespace sbx::proxy::detail
