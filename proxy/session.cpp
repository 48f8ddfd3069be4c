#include "proxy/detail/session.hpp"

#include <unordered_set>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include "policy/store/sandbox_token.hpp"
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

// Decodes standard base64 (RFC 4648 §4) as used by Basic authentication (RFC 7617).
std::optional<std::string> decode_base64(std::string_view in) {
  if (in.empty() || in.size() % 4 != 0 || in.size() > 4096) return std::nullopt;
  std::string out(in.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  if (n < 0) return std::nullopt;
  std::size_t padding = 0;
  if (in.ends_with("==")) {
    padding = 2;
  } else if (in.ends_with('=')) {
    padding = 1;
  }
  out.resize(static_cast<std::size_t>(n) - padding);
  return out;
}

const char* outcome_code(upstream_result::outcome o) {
  using outcome = upstream_result::outcome;
  switch (o) {
    case outcome::denied:
      return "blocked-by-policy";
    case outcome::blocked_address:
      return "blocked-address";
    case outcome::timeout:
      return "upstream-timeout";
    default:
      return "upstream-unreachable";
  }
}

int outcome_status(upstream_result::outcome o) {
  using outcome = upstream_result::outcome;
  switch (o) {
    case outcome::denied:
    case outcome::blocked_address:
      return 403;
    case outcome::timeout:
      return 504;
    default:
      return 502;
  }
}

std::string refusal_text(const upstream_result& r, std::string_view host, std::uint16_t port,
                         std::string_view sandbox) {
  using outcome = upstream_result::outcome;
  const auto scope = sandbox.empty() ? std::string{} : fmt::format(" --sandbox {}", sandbox);
  switch (r.result) {
    case outcome::denied:
      return fmt::format(
          "sbx-proxy: {}:{} is blocked by policy: {}.\nTo allow it: sbx policy allow network {}{}",
          host, port, r.decision.reason, host, scope);
    case outcome::blocked_address:
      return fmt::format(
          "sbx-proxy: {}:{} refused: {}.\nTo allow it: sbx policy allow network {}{}", host, port,
          r.decision.reason, host, scope);
    case outcome::timeout:
      return fmt::format("sbx-proxy: {}:{} did not answer in time: {}", host, port, r.detail);
    default:
      return fmt::format("sbx-proxy: cannot reach {}:{}: {}", host, port, r.detail);
  }
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

void row_builder::deny(const policy::decision& d) {
  set_decision(d);
}

void row_builder::finish(int status) {
  if (done_) return;
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
  if (st_.log) st_.log->record(std::move(row));
}

// ---------------------------------------------------------------------------------------------
// client_session

client_session::client_session(tcp::socket socket, proxy_state& st)
    : client_(std::move(socket)), st_(st) {
  client_addr_ = endpoint_text(client_.socket());
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

char* client_session::chunk() {
  if (!chunk_) chunk_.emplace();
  return chunk_->get();
}

asio::awaitable<void> client_session::run() {
  error_code ec;
  client_.socket().set_option(tcp::no_delay(true), ec);
  while (!draining_) {
    if (!co_await serve_one()) break;
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

client_session::auth_result client_session::authenticate(std::string_view value,
                                                         std::string& sandbox) const {
  static constexpr std::string_view scheme = "basic ";
  if (value.size() <= scheme.size() || !beast::iequals(value.substr(0, scheme.size()), scheme)) {
    return auth_result::bad;
  }
  auto credentials = value.substr(scheme.size());
  while (!credentials.empty() && credentials.front() == ' ')
    credentials.remove_prefix(1);
  auto decoded = decode_base64(credentials);
  if (!decoded) return auth_result::bad;
  const auto colon = decoded->find(':');
  if (colon == std::string::npos) return auth_result::bad;
  const std::string name = decoded->substr(0, colon);
  const std::string_view token = std::string_view(*decoded).substr(colon + 1);
  auto dir = st_.sandboxes.load();
  const std::string* hash = nullptr;
  if (dir) {
    if (auto it = dir->token_hashes.find(name); it != dir->token_hashes.end()) hash = &it->second;
  }
  // Compare against a fixed hash when the name is unknown, so timing does not reveal which
  // sandbox names exist.
  static const std::string unknown_hash(64, '0');
  const bool ok = store::sandbox_token_matches(token, hash ? *hash : unknown_hash) && hash;
  if (!ok) return auth_result::bad;
  sandbox = name;
  return auth_result::sandbox;
}

bool client_session::claim_identity(const std::string& sandbox) {
  if (identity_) return *identity_ == sandbox;
  identity_ = sandbox;
  holds_slot_ = st_.per_sandbox.try_acquire(sandbox, cfg_->lim.max_connections_per_sandbox);
  return holds_slot_;
}

asio::awaitable<void> client_session::reply_error(unsigned version, int status,
                                                  std::string_view code, std::string_view text,
                                                  bool keep_alive, row_builder& row) {
  auto res = make_proxy_error(version, status, code, text, keep_alive && !draining_);
  client_.expires_after(cfg_->lim.idle_timeout);
  auto [ec, n] = co_await http::async_write(client_, res, use_nothrow);
  row.row.bytes_down += static_cast<std::int64_t>(n);
  if (row.row.reason.empty()) row.row.reason = std::string(text.substr(0, text.find('\n')));
  row.finish(status);
  if (ec || !keep_alive) co_await lingering_close();
}

asio::awaitable<bool> client_session::serve_one() {
  cfg_ = st_.settings.load();
  const auto& lim = cfg_->lim;
  std::size_t head_len = 0;
  const auto hr = co_await read_request_head(client_, buf_, lim, idle_, draining_, head_len);
  if (hr == head_result::closed) co_return false;

  row_builder row(st_, client_addr_, identity_.value_or(std::string{}));
  row.row.route = "forward";
  if (hr != head_result::ok) {
    metrics::add(st_.counters.bad_requests);
    if (hr == head_result::too_large) {
      co_await reply_error(11, 431, "bad-request",
                           fmt::format("sbx-proxy: request header section larger than {} bytes",
                                       lim.max_header_bytes),
                           false, row);
    } else {
      co_await reply_error(11, 408, "bad-request", "sbx-proxy: request header not received in time",
                           false, row);
    }
    co_return false;
  }

  std::string_view head(static_cast<const char*>(buf_.data().data()), head_len);
  if (auto sp = head.find(' '); sp != std::string_view::npos && sp < 32) {
    row.row.method = std::string(head.substr(0, sp));
  }
  request_parser p;
  if (auto why = parse_request_head(buf_, head_len, lim.max_header_bytes, p); !why.empty()) {
    metrics::add(st_.counters.bad_requests);
    co_await reply_error(11, 400, "bad-request", "sbx-proxy: bad request: " + why, false, row);
    co_return false;
  }
  auto& req = p.get();
  row.row.method = std::string(sv(req.method_string()));

  metrics::add(st_.counters.requests_total);

  // Identity: a valid Proxy-Authorization names the sandbox; without one, the request belongs to
  // no sandbox (refused when the listener requires tokens).
  std::string sandbox;
  auto auth_value = sv(req[http::field::proxy_authorization]);
  auth_result auth =
      auth_value.empty() ? auth_result::anonymous : authenticate(auth_value, sandbox);
  if (auth == auth_result::bad || (auth == auth_result::anonymous && st_.require_auth)) {
    metrics::add(st_.counters.auth_failures);
    row.row.reason =
        auth == auth_result::bad ? "invalid sandbox credentials" : "sandbox credentials required";
    co_await reply_error(req.version(), 407, "proxy-auth-required",
                         auth == auth_result::bad
                             ? "sbx-proxy: unknown sandbox or wrong token in Proxy-Authorization. "
                               "Use the proxy URL printed by `sbx sandbox env NAME`."
                             : "sbx-proxy: this proxy requires sandbox credentials "
                               "(http://NAME:TOKEN@host:port); see `sbx sandbox add`.",
                         false, row);
    co_return false;
  }
  row.row.sandbox = sandbox;
  if (!claim_identity(sandbox)) {
    metrics::add(st_.counters.connection_limit_rejections);
    const bool changed = identity_ && *identity_ != sandbox;
    // Built before the co_await: GCC 12 destroys a conditional's temporary inside a co_await
    // expression twice (double free).
    const std::string text =
        changed ? std::string("sbx-proxy: one connection cannot change sandbox identity")
                : fmt::format("sbx-proxy: more than {} connections for this sandbox",
                              lim.max_connections_per_sandbox);
    co_await reply_error(req.version(), changed ? 407 : 429,
                         changed ? "proxy-auth-required" : "connection-limit", text, false, row);
    co_return false;
  }

  if (req.method() == http::verb::connect) co_return co_await handle_connect(p, row);
  co_return co_await handle_forward(p, row);
}

asio::awaitable<bool> client_session::handle_connect(request_parser& p, row_builder& row) {
  auto& req = p.get();
  row.row.route = "tunnel";
  auto where = parse_authority(sv(req.target()));
  if (!where) {
    metrics::add(st_.counters.bad_requests);
    co_await reply_error(req.version(), 400, "bad-request",
                         fmt::format("sbx-proxy: bad request: CONNECT needs host:port, got \"{}\"",
                                     sv(req.target())),
                         false, row);
    co_return false;
  }
  row.row.host = where->host;
  row.row.port = where->port;
  row.row.scheme = where->port == 80 ? "http" : "https";
  if (!p.is_done()) {
    metrics::add(st_.counters.bad_requests);
    co_await reply_error(req.version(), 400, "bad-request",
                         "sbx-proxy: bad request: a CONNECT request has no body", false, row);
    co_return false;
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
      row.row.reason = fmt::format("{}; {}", up.decision.reason, up.detail);
    }
    co_await reply_error(req.version(), outcome_status(up.result), outcome_code(up.result),
                         refusal_text(up, where->host, where->port, row.row.sandbox),
                         req.keep_alive(), row);
    co_return req.keep_alive() && !draining_;
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
    row.finish(0);
    co_return false;
  }
  std::string initial(static_cast<const char*>(buf_.data().data()), buf_.size());
  buf_.consume(buf_.size());
  // A tunnel may stay open for hours: it needs neither the request-head buffer nor the body
  // chunk, so give their memory back (it matters with thousands of idle tunnels).
  buf_.shrink_to_fit();
  chunk_.reset();
  upstream_.reset();
  st_.counters.active_tunnels.fetch_add(1, std::memory_order_relaxed);
  auto totals = co_await run_tunnel(client_.socket(), up.stream.socket(), initial,
                                    cfg_->lim.tunnel_idle_timeout);
  st_.counters.active_tunnels.fetch_sub(1, std::memory_order_relaxed);
  row.row.bytes_up = static_cast<std::int64_t>(totals.up);
  row.row.bytes_down = static_cast<std::int64_t>(totals.down);
  if (totals.idle_timeout) row.row.reason += "; closed after idle timeout";
  row.finish(200);
  co_return false;
}

asio::awaitable<bool> client_session::handle_forward(request_parser& p, row_builder& row) {
  auto& req = p.get();
  const auto target = sv(req.target());
  auto bad_request = [&](std::string why) -> asio::awaitable<bool> {
    metrics::add(st_.counters.bad_requests);
    co_await reply_error(req.version(), 400, "bad-request", "sbx-proxy: bad request: " + why, false,
                         row);
    co_return false;
  };
  auto tgt = parse_absolute_target(target);
  if (!tgt) {
    co_return co_await bad_request(
        target.starts_with('/')
            ? "this is a proxy: send absolute-form requests (GET http://host/path) or CONNECT "
              "host:port"
            : "malformed request target");
  }
  row.row.scheme = tgt->scheme;
  row.row.host = tgt->where.host;
  row.row.port = tgt->where.port;
  row.row.path = tgt->path;
  if (tgt->scheme != "http") {
    co_return co_await bad_request(
        "https:// URLs go through CONNECT: point HTTPS_PROXY at this proxy");
  }
  const auto host_field = sv(req[http::field::host]);
  if (host_field.empty()) {
    if (req.version() == 11) co_return co_await bad_request("missing Host header");
    req.set(http::field::host,
            tgt->where.ipv6 ? fmt::format("[{}]", tgt->where.host) : tgt->where.host);
  } else {
    auto h = parse_authority(host_field, 80);
    if (!h || h->host != tgt->where.host || h->port != tgt->where.port) {
      co_return co_await bad_request(
          fmt::format("Host header \"{}\" does not match the request target \"{}\"", host_field,
                      target.substr(0, target.find('?'))));  // the query string is never logged
    }
  }
  auto path = policy::normalize_path(tgt->path);
  if (!path) co_return co_await bad_request("malformed request path");
  row.row.path = *path;

  auto rules = st_.rules.load();
  policy::facts f{.sandbox = row.row.sandbox,
                  .host = tgt->where.host,
                  .port = tgt->where.port,
                  .method = sv(req.method_string()),
                  .path = *path};
  const bool has_body = !p.is_done();
  bool reused = false;
  if (upstream_ && upstream_->host == tgt->where.host && upstream_->port == tgt->where.port &&
      upstream_->stream.socket().is_open()) {
    f.address = upstream_->address;
    auto d = rules->decide(f);
    row.set_decision(d);
    if (!d.allowed()) {
      upstream_result refusal(client_.get_executor());
      refusal.result = d.blocked_address ? upstream_result::outcome::blocked_address
                                         : upstream_result::outcome::denied;
      refusal.decision = d;
      co_await reply_error(req.version(), 403, outcome_code(refusal.result),
                           refusal_text(refusal, tgt->where.host, tgt->where.port, row.row.sandbox),
                           req.keep_alive() && !has_body, row);
      co_return req.keep_alive() && !has_body && !draining_;
    }
    reused = true;
  } else {
    upstream_.reset();
    auto up = co_await open_upstream(*rules, *cfg_, f);
    row.set_decision(up.decision);
    if (!up.ok()) {
      if (up.result != upstream_result::outcome::denied &&
          up.result != upstream_result::outcome::blocked_address) {
        metrics::add(st_.counters.upstream_errors);
        row.row.reason = fmt::format("{}; {}", up.decision.reason, up.detail);
      }
      co_await reply_error(req.version(), outcome_status(up.result), outcome_code(up.result),
                           refusal_text(up, tgt->where.host, tgt->where.port, row.row.sandbox),
                           req.keep_alive() && !has_body, row);
      co_return req.keep_alive() && !has_body && !draining_;
    }
    upstream_.emplace(
        upstream_link{std::move(up.stream), {}, tgt->where.host, tgt->where.port, up.address});
  }
  metrics::add(st_.counters.routes_forward);

  const auto shape = prepare_upstream_request(req, tgt->origin_form);
  exchange_limits xl{.client_read = cfg_->lim.idle_timeout,
                     .upstream_read = cfg_->lim.upstream_timeout,
                     .write = cfg_->lim.idle_timeout,
                     .tunnel_idle = cfg_->lim.tunnel_idle_timeout,
                     .header_limit = static_cast<std::uint32_t>(cfg_->lim.max_header_bytes)};
  auto r = co_await relay_exchange(client_, buf_, p, shape, upstream_->stream, upstream_->buf,
                                   chunk(), xl);
  using failure = exchange_result::failure;
  // A kept-alive upstream connection may have been closed by the server while idle; retry once
  // on a fresh connection when nothing of the request body or response has moved yet.
  if (reused && !has_body && !r.response_started &&
      (r.fail == failure::upstream_write || r.fail == failure::upstream_read)) {
    upstream_.reset();
    f.address.reset();
    auto up = co_await open_upstream(*rules, *cfg_, f);
    row.set_decision(up.decision);
    if (!up.ok()) {
      co_await reply_error(req.version(), outcome_status(up.result), outcome_code(up.result),
                           refusal_text(up, tgt->where.host, tgt->where.port, row.row.sandbox),
                           false, row);
      co_return false;
    }
    upstream_.emplace(
        upstream_link{std::move(up.stream), {}, tgt->where.host, tgt->where.port, up.address});
    r = co_await relay_exchange(client_, buf_, p, shape, upstream_->stream, upstream_->buf, chunk(),
                                xl);
  }
  row.row.bytes_up = static_cast<std::int64_t>(r.bytes_up);
  row.row.bytes_down = static_cast<std::int64_t>(r.bytes_down);
  if (r.fail != failure::none) {
    upstream_.reset();
    const bool upstream_side = r.fail == failure::upstream_read ||
                               r.fail == failure::upstream_write ||
                               r.fail == failure::upstream_timeout;
    if (upstream_side) metrics::add(st_.counters.upstream_errors);
    if (upstream_side && !r.response_started) {
      const bool timeout = r.fail == failure::upstream_timeout;
      row.row.reason +=
          timeout ? "; upstream did not respond in time" : "; upstream closed the connection";
      co_await reply_error(req.version(), timeout ? 504 : 502,
                           timeout ? "upstream-timeout" : "upstream-unreachable",
                           fmt::format("sbx-proxy: {} {}", tgt->where.text(),
                                       timeout ? "did not respond in time"
                                               : "closed the connection before responding"),
                           false, row);
      co_return false;
    }
    row.finish(r.status);
    co_return false;
  }
  row.finish(r.status);
  if (!r.upstream_reusable || r.upgraded) upstream_.reset();
  chunk_.reset();
  release_if_empty(buf_);
  if (upstream_) release_if_empty(upstream_->buf);
  co_return r.client_keep_alive && !r.upgraded && !draining_;
}

// ---------------------------------------------------------------------------------------------

void spawn_session(tcp::socket socket, proxy_state& st) {
  auto ex = socket.get_executor();
  asio::co_spawn(
      ex,
      [](tcp::socket s, proxy_state& state) -> asio::awaitable<void> {
        client_session session(std::move(s), state);
        co_await session.run();
      }(std::move(socket), st),
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
