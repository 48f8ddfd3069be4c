#include "proxy/detail/intercept.hpp"

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "proxy/detail/exchange.hpp"
#include "proxy/detail/pipeline.hpp"
#include "proxy/detail/request_head.hpp"
#include "proxy/detail/upstream_pool.hpp"

namespace sbx::proxy::detail {
namespace {

using namespace asio::experimental::awaitable_operators;
using client_tls = beast::ssl_stream<beast::tcp_stream&>;

std::string_view sv(beast::string_view s) {
  return {s.data(), s.size()};
}

std::string ssl_error_text(const error_code& ec) {
  // ERR strings name the failing step ("certificate verify failed", "tlsv1 alert unknown ca");
  // they never contain key material.
  return ec.message();
}

std::atomic<std::uint64_t> next_generation{1};

// The pipeline's route for requests inside an intercepted TLS session: origin-form targets on the
// CONNECT's authority, the CONNECT's sandbox, one verified upstream TLS connection (reconnected
// to the same checked address when the upstream closes it), and credential injection.
class intercept_route {
 public:
  intercept_route(intercept_request& r, client_tls& client, std::unique_ptr<upstream_tls> up,
                  asio::ssl::context& upstream_ctx, credential_cache& credentials)
      : upstream(std::move(up)),
        r_(r),
        client_(client),
        upstream_ctx_(upstream_ctx),
        credentials_(credentials),
        sandbox_(r.connect_row.row.sandbox) {}

  std::unique_ptr<upstream_tls> upstream;
  beast::flat_buffer upstream_buf;
  bool upstream_alive = false;
  bool upstream_fresh = true;      // no exchange on it yet
  bool upstream_reusable = false;  // between exchanges, the last response complete
  std::string failure;             // the upstream could not be verified: nothing goes there
  std::string failure_code;

  client_tls& client() { return client_; }
  beast::flat_buffer& client_buf() { return r_.client_buf; }
  std::shared_ptr<const config::settings> settings() const { return r_.cfg; }
  [[nodiscard]] const std::string& sandbox() const { return sandbox_; }

  void init_row(row_builder& row) const {
    row.row.route = "intercept";
    row.row.scheme = "https";
    row.row.host = r_.where.host;
    row.row.port = r_.where.port;
  }

  // The sandbox was named by the CONNECT; Proxy-Authorization inside the tunnel means nothing.
  std::optional<refusal> identify(const http::request<http::buffer_body>&, row_builder&) const {
    return std::nullopt;
  }

  asio::awaitable<bool> on_connect(request_parser& p, row_builder& row) {
    metrics::add(r_.st.counters.bad_requests);
    co_await send_refusal(client_, r_.cfg->lim, r_.draining, p.get().version(),
                          bad_request("CONNECT inside an intercepted connection"), row);
    co_return false;
  }

  std::optional<refusal> target(http::request<http::buffer_body>& req, request_target& t) const {
    const auto raw = sv(req.target());
    if (raw.find('#') != std::string_view::npos) {
      return bad_request("request target contains a fragment ('#')");
    }
    // Inside the tunnel the target is origin-form; absolute-form must name the same authority.
    std::string origin_form;
    if (raw.starts_with('/')) {
      origin_form = std::string(raw);
    } else if (auto abs = parse_absolute_target(raw);
               abs && abs->where.host == r_.where.host && abs->where.port == r_.where.port) {
      origin_form = abs->origin_form;
    } else {
      return bad_request(
          fmt::format("target \"{}\" is not on {}", raw.substr(0, raw.find('?')), r_.where.text()));
    }
    const auto q = origin_form.find('?');
    t.scheme = "https";
    t.host = r_.where.host;
    t.port = r_.where.port;
    t.raw_path = origin_form.substr(0, q);
    t.query = q == std::string::npos ? std::string{} : origin_form.substr(q);
    const auto host_field = sv(req[http::field::host]);
    auto host = parse_authority(host_field, 443);
    if (!host || host->host != r_.where.host || host->port != r_.where.port) {
      // Not quoted past a '?', '/' or '#': a query string is never logged.
      return bad_request(fmt::format("Host \"{}\" does not match the CONNECT target {}",
                                     host_field.substr(0, host_field.find_first_of("?/#")),
                                     r_.where.text()));
    }
    return std::nullopt;
  }

  asio::awaitable<std::optional<refusal>> open(policy::facts& f, row_builder& row,
                                               bool& kept_alive) {
    f.address = r_.upstream.address;  // the address the CONNECT was decided and connected for
    auto d = r_.st.rules.load()->decide(f);
    row.set_decision(d);
    if (!d.allowed()) {
      co_return policy_refusal(d, f.host, f.port, f.method, f.path, sandbox_);
    }
    if (!failure.empty()) {
      co_return refusal{.status = 502,
                        .code = failure_code,
                        .text = "sbx-proxy: " + failure +
                                ". Nothing was sent. If this host uses a private CA, add it with "
                                "upstream_ca_file in the config.",
                        .reason = failure};
    }
    if (!upstream_alive) {
      if (auto ec = co_await reconnect(); ec) {
        metrics::add(r_.st.counters.upstream_errors);
        const bool invalid =
            upstream && SSL_get_verify_result(upstream->native_handle()) != X509_V_OK;
        co_return refusal{
            .status = 502,
            .code = invalid ? "upstream-tls-invalid" : "upstream-unreachable",
            .text = fmt::format("sbx-proxy: cannot reach {}: {}", r_.where.text(), ec.message()),
            .reason = ec.message()};
      }
      upstream_alive = true;
      upstream_fresh = true;
    }
    kept_alive = !upstream_fresh;
    upstream_fresh = false;
    upstream_reusable = false;
    metrics::add(r_.st.counters.routes_intercept);
    co_return std::nullopt;
  }

  [[nodiscard]] bool will_inject(const http::request<http::buffer_body>&) const {
    const auto* svc = r_.cfg->service_for_host(r_.where.host);
    return svc && credentials_.find(sandbox_, svc->name);
  }

  // Injection happens only here: after the upstream proved, over TLS we verified, that it is the
  // service's host, and the request's Host is that same host.
  void inject(http::request<http::buffer_body>& req, row_builder& row) {
    const auto* svc = r_.cfg->service_for_host(r_.where.host);
    if (!svc) return;
    if (auto secret = credentials_.find(sandbox_, svc->name)) {
      inject_credential(req.base(), *svc, *secret);
      row.row.credential = svc->name;
      metrics::add(r_.st.counters.credentials_injected);
    } else {
      metrics::add(r_.st.counters.credentials_missing);
      row.row.reason +=
          fmt::format("; no {} secret stored, sent unchanged (sbx secret set{} {})", svc->name,
                      sandbox_.empty() ? " -g" : " " + sandbox_, svc->name);
    }
  }

  asio::awaitable<exchange_result> relay(request_parser& p, const request_shape& shape, char* chunk,
                                         const exchange_limits& xl) {
    auto x = co_await relay_exchange(client_, r_.client_buf, p, shape, *upstream, upstream_buf,
                                     chunk, xl);
    r_.connect_row.row.bytes_up += static_cast<std::int64_t>(x.bytes_up);
    r_.connect_row.row.bytes_down += static_cast<std::int64_t>(x.bytes_down);
    co_return x;
  }

  void drop_upstream() {
    upstream_alive = false;
    upstream_reusable = false;
    if (!upstream) return;
    error_code ignored;
    beast::get_lowest_layer(*upstream).socket().close(ignored);
    upstream_buf.consume(upstream_buf.size());
  }

  void after_exchange(const exchange_result& x) {
    upstream_reusable = x.upstream_reusable && !x.upgraded;
    release_if_empty(r_.client_buf);
    release_if_empty(upstream_buf);
    if (!x.upstream_reusable) {
      upstream_alive = false;
      error_code ignored;
      beast::get_lowest_layer(*upstream).socket().shutdown(tcp::socket::shutdown_both, ignored);
      beast::get_lowest_layer(*upstream).close();
    }
  }

  asio::awaitable<void> on_close(bool) { co_return; }

 private:
  // The upstream closed its side after an earlier response: a new connection to the same checked
  // address and port (where a `resolve` override sent the first one), verified again.
  asio::awaitable<error_code> reconnect() {
    const auto& lim = r_.cfg->lim;
    beast::tcp_stream tcp(client_.get_executor());
    tcp.expires_after(lim.connect_timeout);
    auto [cec] = co_await tcp.async_connect(r_.upstream.endpoint, use_nothrow);
    if (cec) co_return cec;
    error_code ignored;
    tcp.socket().set_option(tcp::no_delay(true), ignored);
    upstream = std::make_unique<upstream_tls>(std::move(tcp), upstream_ctx_);
    upstream_buf.consume(upstream_buf.size());
    metrics::add(r_.st.counters.upstream_tls_handshakes);
    if (!certs::prepare_upstream_ssl(upstream->native_handle(), r_.where.host, r_.where.port)) {
      co_return asio::error::invalid_argument;
    }
    beast::get_lowest_layer(*upstream).expires_after(lim.connect_timeout);
    auto [ec] = co_await upstream->async_handshake(asio::ssl::stream_base::client, use_nothrow);
    beast::get_lowest_layer(*upstream).expires_never();
    co_return ec;
  }

  intercept_request& r_;
  client_tls& client_;
  asio::ssl::context& upstream_ctx_;
  credential_cache& credentials_;
  std::string sandbox_;
};

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
    co_await connect_row.finish(0);
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
    co_await connect_row.finish(200);
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

  intercept_route route{r, client, std::move(upstream), upstream_asio_, *credentials_};
  route.upstream_alive = !upstream_ec;
  // No exchange on this connection yet: a failure is not a stale kept-alive connection.
  route.upstream_fresh = !pooled;
  route.upstream_reusable = route.upstream_alive;
  route.failure = std::move(upstream_failure);
  route.failure_code = std::move(upstream_failure_code);
  // Like a new connection, a new TLS session must bring its first request head within
  // first_byte_timeout, so that handshaken but silent connections cannot hold slots for the idle
  // timeout; later requests wait as kept-alive ones do.
  std::optional<std::chrono::steady_clock::time_point> head_not_after =
      std::chrono::steady_clock::now() + st.settings.load()->lim.first_byte_timeout;
  while (co_await serve_request(
      route, pipeline_env{st, r.client_addr, r.idle, r.draining, head_not_after})) {
    head_not_after.reset();
  }

  // The upstream connection outlives this CONNECT when it is idle and clean: the next intercepted
  // CONNECT of this sandbox to this host skips the TCP and TLS handshakes.
  if (route.upstream && route.upstream_alive && route.upstream_reusable && route.failure.empty() &&
      !r.draining && route.upstream_buf.size() == 0) {
    error_code ec;
    auto endpoint = beast::get_lowest_layer(*route.upstream).socket().remote_endpoint(ec);
    if (!ec) {
      auto c = std::make_unique<pooled_upstream>();
      c->stream = std::move(route.upstream);
      c->key = pool_key(generation_, route.sandbox(), r.where);
      c->endpoint = endpoint;
      beast::get_lowest_layer(*c->stream).expires_never();
      upstream_pool::of(r.client.get_executor()).put(std::move(c), r.client.get_executor());
    }
  }

  // Best-effort close_notify to the client, bounded: a peer that has gone away must not hold us.
  r.client.expires_after(std::chrono::seconds(1));
  co_await client.async_shutdown(use_nothrow);
  co_await connect_row.finish(200);
}

}  // namespace sbx::proxy::detail
