#include "proxy/detail/intercept.hpp"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "proxy/detail/exchange.hpp"
#include "proxy/detail/request_head.hpp"

namespace sbx::proxy::detail {
namespace {

using namespace asio::experimental::awaitable_operators;
using client_tls = beast::ssl_stream<beast::tcp_stream&>;
using upstream_tls = beast::ssl_stream<beast::tcp_stream>;

std::string_view sv(beast::string_view s) {
  return {s.data(), s.size()};
}

std::string ssl_error_text(const error_code& ec) {
  // ERR strings name the failing step ("certificate verify failed", "tlsv1 alert unknown ca");
  // they never contain key material.
  return ec.message();
}

std::atomic<std::uint64_t> next_generation{1};

// Idle connections older than this are closed rather than used: well inside the keep-alive
// timeouts servers commonly use (nginx 75 s, most APIs 60 s or more).
constexpr std::chrono::seconds pool_idle_lifetime{30};
constexpr std::chrono::seconds pool_sweep_interval{5};
constexpr std::size_t pool_max_per_key = 16;
constexpr std::size_t pool_max_total = 128;

// Idempotent methods (RFC 9110 §9.2.2): safe to send again when a kept-alive connection turns out
// to have been closed by the upstream before any response byte came back.
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

}  // namespace

struct pooled_upstream {
  std::unique_ptr<upstream_tls> stream;
  std::string key;
  tcp::endpoint endpoint;
  std::chrono::steady_clock::time_point idle_since;

  // An idle connection must have nothing to read: data is a close_notify, an alert or a response
  // nobody asked for, and end-of-stream means the upstream closed it.
  [[nodiscard]] bool looks_alive() const {
    auto& sock = beast::get_lowest_layer(*stream).socket();
    if (!sock.is_open() || SSL_pending(stream->native_handle()) > 0) return false;
    char c = 0;
    const auto n = ::recv(sock.native_handle(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
  }
};

namespace {

// One per io_context (an Asio service), so a pooled socket is only ever used by the thread that
// owns it, without locks; destroyed with its io_context.
class upstream_pool : public asio::execution_context::service {
 public:
  static inline asio::execution_context::id id;
  explicit upstream_pool(asio::execution_context& ctx) : service(ctx) {}

  static upstream_pool& of(const asio::any_io_executor& ex) {
    return asio::use_service<upstream_pool>(asio::query(ex, asio::execution::context));
  }

  std::unique_ptr<pooled_upstream> take(std::string_view key,
                                        const std::vector<tcp::endpoint>& allowed) {
    const auto now = std::chrono::steady_clock::now();
    // Most recently used first: the likeliest to be alive.
    for (auto i = idle_.size(); i-- > 0;) {
      auto& c = idle_[i];
      if (c->key != key || std::find(allowed.begin(), allowed.end(), c->endpoint) == allowed.end())
        continue;
      auto taken = std::move(c);
      idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(i));
      if (now - taken->idle_since < pool_idle_lifetime && taken->looks_alive()) return taken;
    }
    return nullptr;
  }

  void put(std::unique_ptr<pooled_upstream> c, const asio::any_io_executor& ex) {
    const auto same_key =
        std::count_if(idle_.begin(), idle_.end(), [&](const auto& e) { return e->key == c->key; });
    if (static_cast<std::size_t>(same_key) >= pool_max_per_key) return;  // closes it
    if (idle_.size() >= pool_max_total) idle_.erase(idle_.begin());      // the oldest goes
    c->idle_since = std::chrono::steady_clock::now();
    idle_.push_back(std::move(c));
    if (!sweeping_) {
      sweeping_ = true;
      asio::co_spawn(ex, sweep(), asio::detached);
    }
  }

  void shutdown() override { idle_.clear(); }

 private:
  // Closes what expired or what the upstream closed, so idle sockets do not linger; ends when
  // the pool is empty (put() starts it again).
  asio::awaitable<void> sweep() {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    while (!idle_.empty()) {
      timer.expires_after(pool_sweep_interval);
      auto [ec] = co_await timer.async_wait(use_nothrow);
      if (ec) break;
      const auto now = std::chrono::steady_clock::now();
      std::erase_if(idle_, [&](const auto& c) {
        return now - c->idle_since >= pool_idle_lifetime || !c->looks_alive();
      });
    }
    sweeping_ = false;
  }

  std::vector<std::unique_ptr<pooled_upstream>> idle_;
  bool sweeping_ = false;
};

std::string pool_key(std::uint64_t generation, std::string_view sandbox, const authority& where) {
  return fmt::format("{}\n{}\n{}:{}", generation, sandbox, where.host, where.port);
}

}  // namespace

interception::interception(std::shared_ptr<certs::server_tls_context> server,
                           std::shared_ptr<certs::upstream_tls_context> upstream,
                           std::shared_ptr<credential_cache> credentials)
    : server_(std::move(server)),
      upstream_(std::move(upstream)),
      credentials_(std::move(credentials)),
      // asio::ssl::context frees the handle it is given: hand it a reference of its own.
      server_asio_(server_->new_reference()),
      upstream_asio_(upstream_->new_reference()),
      generation_(next_generation.fetch_add(1)) {}

std::shared_ptr<pooled_upstream> interception::take_pooled(const asio::any_io_executor& ex,
                                                           std::string_view sandbox,
                                                           const authority& where,
                                                           upstream_choice& choice,
                                                           upstream_result& up) {
  auto c = upstream_pool::of(ex).take(pool_key(generation_, sandbox, where), choice.allowed);
  if (!c) return nullptr;
  const auto at = std::find(choice.allowed.begin(), choice.allowed.end(), c->endpoint);
  up.decision = std::move(choice.decisions[static_cast<std::size_t>(at - choice.allowed.begin())]);
  up.address = to_policy_address(c->endpoint.address());
  up.endpoint = c->endpoint;
  up.result = upstream_result::outcome::connected;
  return std::shared_ptr<pooled_upstream>(std::move(c));
}

intercept_plan interception::plan(const policy::rule_set& rules, const config::settings& cfg,
                                  std::string_view sandbox, std::string_view host,
                                  std::uint16_t port) const {
  intercept_plan p;
  p.service = cfg.service_for_host(host);
  if (p.service && credentials_->find(sandbox, p.service->name)) {
    p.intercept = true;
    p.why = fmt::format("credential {}", p.service->name);
  } else if (rules.needs_interception(sandbox, host, port)) {
    p.intercept = true;
    p.why = "method/path rules";
  } else if (cfg.intercept_all) {
    p.intercept = true;
    p.why = "intercept_all";
  }
  return p;
}

asio::awaitable<void> interception::run(intercept_request& r) {
  auto& st = r.st;
  const auto& cfg = *r.cfg;
  const auto& lim = cfg.lim;
  auto& connect_row = r.connect_row;
  connect_row.row.route = "intercept";
  connect_row.row.scheme = "https";

  static constexpr std::string_view established = "HTTP/1.1 200 Connection established\r\n\r\n";
  r.client.expires_after(lim.idle_timeout);
  auto [wec, wn] = co_await asio::async_write(r.client, asio::buffer(established), use_nothrow);
  connect_row.row.bytes_down += static_cast<std::int64_t>(wn);
  if (wec) {
    connect_row.finish(0);
    co_return;
  }

  // Both handshakes at once: the client's with our minted leaf, the upstream's verified against
  // the real host name. Whatever the client sent behind the CONNECT starts its handshake.
  client_tls client(r.client, server_asio_);
  certs::set_intercept_host(client.native_handle(), &r.where.host);
  // A pooled connection was verified for this host when it was made and has served complete
  // exchanges since; a new one is verified now.
  std::unique_ptr<upstream_tls> upstream;
  const bool pooled = r.pooled != nullptr;
  bool upstream_prepared = true;
  if (pooled) {
    upstream = std::move(r.pooled->stream);
    r.pooled.reset();
    metrics::add(st.counters.upstream_tls_reused);
  } else {
    upstream = std::make_unique<upstream_tls>(std::move(r.upstream.stream), upstream_asio_);
    upstream_prepared =
        certs::prepare_upstream_ssl(upstream->native_handle(), r.where.host, r.where.port);
    metrics::add(st.counters.upstream_tls_handshakes);
  }

  auto client_handshake = [&]() -> asio::awaitable<error_code> {
    r.client.expires_after(lim.header_timeout);
    auto [ec, n] = co_await client.async_handshake(asio::ssl::stream_base::server,
                                                   r.client_buf.data(), use_nothrow);
    r.client_buf.consume(n);
    r.client.expires_never();
    co_return ec;
  };
  auto upstream_handshake = [&]() -> asio::awaitable<error_code> {
    if (pooled) co_return error_code{};
    if (!upstream_prepared) co_return asio::error::invalid_argument;
    beast::get_lowest_layer(*upstream).expires_after(lim.connect_timeout);
    auto [ec] = co_await upstream->async_handshake(asio::ssl::stream_base::client, use_nothrow);
    beast::get_lowest_layer(*upstream).expires_never();
    co_return ec;
  };
  auto [client_ec, upstream_ec] = co_await (client_handshake() && upstream_handshake());

  if (client_ec) {
    const auto why = certs::intercept_error(client.native_handle());
    connect_row.row.reason += fmt::format(
        "; client TLS handshake failed ({}{}{}): does the sandbox trust the sbx CA (sbx ca cert)?",
        ssl_error_text(client_ec), why.empty() ? "" : ": ", why);
    spdlog::info("intercept {}:{}: client TLS handshake failed: {}", r.where.host, r.where.port,
                 ssl_error_text(client_ec));
    connect_row.finish(200);
    co_return;
  }

  // The upstream's certificate did not verify: no request goes there. Every request the client
  // sends on this connection is answered 502 upstream-tls-invalid.
  std::string upstream_failure;
  std::string upstream_failure_code = "upstream-tls-invalid";
  if (upstream_ec) {
    const auto verify = SSL_get_verify_result(upstream->native_handle());
    if (verify != X509_V_OK) {
      upstream_failure = fmt::format("upstream certificate for {} is not valid: {}", r.where.host,
                                     certs::verify_error_text(upstream->native_handle()));
    } else {
      upstream_failure_code = "upstream-unreachable";
      upstream_failure = fmt::format("TLS handshake with {} failed: {}", r.where.host,
                                     ssl_error_text(upstream_ec));
    }
    spdlog::warn("intercept {}:{}: {}", r.where.host, r.where.port, upstream_failure);
    metrics::add(st.counters.upstream_errors);
  }

  beast::flat_buffer upstream_buf;
  bool upstream_alive = !upstream_ec;
  // No exchange on this connection yet: a failure is not a stale kept-alive connection.
  bool upstream_fresh = !pooled;
  // Between exchanges, the last response complete: the connection can serve another CONNECT.
  bool upstream_reusable = upstream_alive;
  const auto sandbox = connect_row.row.sandbox;
  const exchange_limits xl{.client_read = lim.idle_timeout,
                           .upstream_read = lim.upstream_timeout,
                           .write = lim.idle_timeout,
                           .tunnel_idle = lim.tunnel_idle_timeout,
                           .header_limit = static_cast<std::uint32_t>(lim.max_header_bytes)};

  // The upstream closed its side after an earlier response: a new connection to the same checked
  // address and port (where a `resolve` override sent the first one), verified again.
  auto reconnect = [&]() -> asio::awaitable<error_code> {
    beast::tcp_stream tcp(client.get_executor());
    tcp.expires_after(lim.connect_timeout);
    const auto endpoint = r.upstream.endpoint;
    auto [cec] = co_await tcp.async_connect(endpoint, use_nothrow);
    if (cec) co_return cec;
    error_code ignored;
    tcp.socket().set_option(tcp::no_delay(true), ignored);
    upstream = std::make_unique<upstream_tls>(std::move(tcp), upstream_asio_);
    upstream_buf.consume(upstream_buf.size());
    metrics::add(st.counters.upstream_tls_handshakes);
    if (!certs::prepare_upstream_ssl(upstream->native_handle(), r.where.host, r.where.port)) {
      co_return asio::error::invalid_argument;
    }
    beast::get_lowest_layer(*upstream).expires_after(lim.connect_timeout);
    auto [ec] = co_await upstream->async_handshake(asio::ssl::stream_base::client, use_nothrow);
    beast::get_lowest_layer(*upstream).expires_never();
    co_return ec;
  };

  auto reply = [&](row_builder& row, unsigned version, int status, std::string_view code,
                   std::string_view text, bool keep_alive) -> asio::awaitable<bool> {
    auto res = make_proxy_error(version, status, code, text, keep_alive && !r.draining);
    r.client.expires_after(lim.idle_timeout);
    auto [ec, n] = co_await http::async_write(client, res, use_nothrow);
    row.row.bytes_down += static_cast<std::int64_t>(n);
    if (row.row.reason.empty()) row.row.reason = std::string(text.substr(0, text.find('\n')));
    row.finish(status);
    co_return !ec && keep_alive && !r.draining;
  };

  for (;;) {
    std::size_t head_len = 0;
    const auto hr =
        co_await read_request_head(client, r.client_buf, lim, r.idle, r.draining, head_len);
    if (hr == head_result::closed) break;
    metrics::add(st.counters.requests_total);
    row_builder row(st, r.client_addr, sandbox);
    row.row.route = "intercept";
    row.row.scheme = "https";
    row.row.host = r.where.host;
    row.row.port = r.where.port;
    if (hr != head_result::ok) {
      metrics::add(st.counters.bad_requests);
      // A named string, not a conditional temporary inside co_await (GCC 12 double free).
      const std::string text =
          hr == head_result::too_large
              ? fmt::format("sbx-proxy: request header section larger than {} bytes",
                            lim.max_header_bytes)
              : std::string("sbx-proxy: request header not received in time");
      co_await reply(row, 11, hr == head_result::too_large ? 431 : 408, "bad-request", text, false);
      break;
    }
    request_parser p;
    if (auto why = parse_request_head(r.client_buf, head_len, lim.max_header_bytes, p);
        !why.empty()) {
      metrics::add(st.counters.bad_requests);
      co_await reply(row, 11, 400, "bad-request", "sbx-proxy: bad request: " + why, false);
      break;
    }
    auto& req = p.get();
    row.row.method = std::string(sv(req.method_string()));
    const bool has_body = !p.is_done();

    // Inside the tunnel the target is origin-form; absolute-form must name the same authority.
    std::string origin_form;
    const auto target = sv(req.target());
    if (target.starts_with('/')) {
      origin_form = std::string(target);
    } else if (auto abs = parse_absolute_target(target);
               abs && abs->where.host == r.where.host && abs->where.port == r.where.port) {
      origin_form = abs->origin_form;
    } else {
      metrics::add(st.counters.bad_requests);
      co_await reply(row, req.version(), 400, "bad-request",
                     fmt::format("sbx-proxy: bad request: target \"{}\" is not on {}",
                                 target.substr(0, target.find('?')), r.where.text()),
                     false);
      break;
    }
    const auto raw_path = std::string_view(origin_form).substr(0, origin_form.find('?'));
    row.row.path = std::string(raw_path);
    const auto host_field = sv(req[http::field::host]);
    auto host = parse_authority(host_field, 443);
    if (!host || host->host != r.where.host || host->port != r.where.port) {
      metrics::add(st.counters.bad_requests);
      co_await reply(row, req.version(), 400, "bad-request",
                     fmt::format("sbx-proxy: bad request: Host \"{}\" does not match the CONNECT "
                                 "target {}",
                                 host_field, r.where.text()),
                     false);
      break;
    }
    auto path = policy::normalize_path(raw_path);
    if (!path) {
      metrics::add(st.counters.bad_requests);
      co_await reply(row, req.version(), 400, "bad-request",
                     "sbx-proxy: bad request: malformed request path", false);
      break;
    }
    row.row.path = *path;

    auto rules = st.rules.load();
    const policy::facts f{.sandbox = sandbox,
                          .host = r.where.host,
                          .port = r.where.port,
                          .address = r.upstream.address,
                          .method = sv(req.method_string()),
                          .path = *path};
    auto d = rules->decide(f);
    row.set_decision(d);
    if (!d.allowed()) {
      const auto scope = sandbox.empty() ? std::string{} : fmt::format(" --sandbox {}", sandbox);
      if (!co_await reply(row, req.version(), 403,
                          d.blocked_address ? "blocked-address" : "blocked-by-policy",
                          fmt::format("sbx-proxy: {} {} on {} is blocked by policy: {}.\nTo allow "
                                      "it: sbx policy allow network {} --method {} --path {}{}",
                                      row.row.method, *path, r.where.host, d.reason, r.where.host,
                                      row.row.method, *path, scope),
                          !has_body)) {
        break;
      }
      continue;
    }
    if (!upstream_failure.empty()) {
      row.row.reason += "; " + upstream_failure;
      co_await reply(row, req.version(), 502, upstream_failure_code,
                     "sbx-proxy: " + upstream_failure +
                         ". Nothing was sent. If this host uses a private CA, add it with "
                         "upstream_ca_file in the config.",
                     false);
      break;
    }

    // Injection happens only here: after the upstream proved, over TLS we verified, that it is
    // the service's host, and the request's Host is that same host.
    if (const auto* svc = cfg.service_for_host(r.where.host)) {
      if (auto secret = credentials_->find(sandbox, svc->name)) {
        inject_credential(req.base(), *svc, *secret);
        row.row.credential = svc->name;
        metrics::add(st.counters.credentials_injected);
      } else {
        metrics::add(st.counters.credentials_missing);
        row.row.reason +=
            fmt::format("; no {} secret stored, sent unchanged (sbx secret set{} {})", svc->name,
                        sandbox.empty() ? " -g" : " " + sandbox, svc->name);
      }
    }

    metrics::add(st.counters.routes_intercept);
    const auto shape = prepare_upstream_request(req, origin_form);
    exchange_result x;
    bool unreachable = false;
    borrowed_buffer chunk;  // held for this exchange only
    for (int attempt = 0;; ++attempt) {
      if (!upstream_alive) {
        if (auto hec = co_await reconnect(); hec) {
          metrics::add(st.counters.upstream_errors);
          const bool invalid =
              upstream && SSL_get_verify_result(upstream->native_handle()) != X509_V_OK;
          co_await reply(
              row, req.version(), 502, invalid ? "upstream-tls-invalid" : "upstream-unreachable",
              fmt::format("sbx-proxy: cannot reach {}: {}", r.where.text(), hec.message()), false);
          unreachable = true;
          break;
        }
        upstream_alive = true;
        upstream_fresh = true;
      }
      upstream_reusable = false;
      const bool kept_alive = !upstream_fresh;
      upstream_fresh = false;
      x = co_await relay_exchange(client, r.client_buf, p, shape, *upstream, upstream_buf,
                                  chunk.get(), xl);
      // A kept-alive connection the upstream closed while it sat idle: nothing came back, so
      // an idempotent request without a body goes once more, on a new connection.
      const bool stale = kept_alive && attempt == 0 && !has_body && idempotent(req.method()) &&
                         !x.response_started &&
                         (x.fail == exchange_result::failure::upstream_read ||
                          x.fail == exchange_result::failure::upstream_write);
      if (!stale) break;
      spdlog::debug("intercept {}: kept-alive upstream connection was closed, retrying",
                    r.where.text());
      upstream_alive = false;
      error_code ignored;
      beast::get_lowest_layer(*upstream).socket().close(ignored);
      upstream_buf.consume(upstream_buf.size());
    }
    if (unreachable) break;
    row.row.bytes_up = static_cast<std::int64_t>(x.bytes_up);
    row.row.bytes_down = static_cast<std::int64_t>(x.bytes_down);
    connect_row.row.bytes_up += row.row.bytes_up;
    connect_row.row.bytes_down += row.row.bytes_down;
    using failure = exchange_result::failure;
    if (x.fail != failure::none) {
      const bool upstream_side = x.fail == failure::upstream_read ||
                                 x.fail == failure::upstream_write ||
                                 x.fail == failure::upstream_timeout;
      if (upstream_side) metrics::add(st.counters.upstream_errors);
      if (upstream_side && !x.response_started) {
        const bool timeout = x.fail == failure::upstream_timeout;
        row.row.reason +=
            timeout ? "; upstream did not respond in time" : "; upstream closed the connection";
        co_await reply(row, req.version(), timeout ? 504 : 502,
                       timeout ? "upstream-timeout" : "upstream-unreachable",
                       fmt::format("sbx-proxy: {} {}", r.where.text(),
                                   timeout ? "did not respond in time"
                                           : "closed the connection before responding"),
                       false);
      } else {
        row.finish(x.status);
      }
      break;
    }
    row.finish(x.status);
    upstream_reusable = x.upstream_reusable && !x.upgraded;
    release_if_empty(r.client_buf);
    release_if_empty(upstream_buf);
    if (x.upgraded || !x.client_keep_alive || r.draining) break;
    if (!x.upstream_reusable) {
      upstream_alive = false;
      error_code ignored;
      beast::get_lowest_layer(*upstream).socket().shutdown(tcp::socket::shutdown_both, ignored);
      beast::get_lowest_layer(*upstream).close();
    }
  }

  // The upstream connection outlives this CONNECT when it is idle and clean: the next intercepted
  // CONNECT of this sandbox to this host skips the TCP and TLS handshakes.
  if (upstream && upstream_alive && upstream_reusable && upstream_failure.empty() && !r.draining &&
      upstream_buf.size() == 0) {
    error_code ec;
    auto endpoint = beast::get_lowest_layer(*upstream).socket().remote_endpoint(ec);
    if (!ec) {
      auto c = std::make_unique<pooled_upstream>();
      c->stream = std::move(upstream);
      c->key = pool_key(generation_, sandbox, r.where);
      c->endpoint = endpoint;
      beast::get_lowest_layer(*c->stream).expires_never();
      upstream_pool::of(r.client.get_executor()).put(std::move(c), r.client.get_executor());
    }
  }

  // Best-effort close_notify to the client, bounded: a peer that has gone away must not hold us.
  r.client.expires_after(std::chrono::seconds(1));
  co_await client.async_shutdown(use_nothrow);
  connect_row.finish(200);
}

}  // namespace sbx::proxy::detail
