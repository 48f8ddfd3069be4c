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

}  // namespace

interception::interception(std::shared_ptr<certs::server_tls_context> server,
                           std::shared_ptr<certs::upstream_tls_context> upstream,
                           std::shared_ptr<credential_cache> credentials)
    : server_(std::move(server)),
      upstream_(std::move(upstream)),
      credentials_(std::move(credentials)),
      // asio::ssl::context frees the handle it is given: hand it a reference of its own.
      server_asio_(server_->new_reference()),
      upstream_asio_(upstream_->new_reference()) {}

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
  std::optional<upstream_tls> upstream;
  upstream.emplace(std::move(r.upstream.stream), upstream_asio_);
  const bool upstream_prepared =
      certs::prepare_upstream_ssl(upstream->native_handle(), r.where.host, r.where.port);

  auto client_handshake = [&]() -> asio::awaitable<error_code> {
    r.client.expires_after(lim.header_timeout);
    auto [ec, n] = co_await client.async_handshake(asio::ssl::stream_base::server,
                                                   r.client_buf.data(), use_nothrow);
    r.client_buf.consume(n);
    r.client.expires_never();
    co_return ec;
  };
  auto upstream_handshake = [&]() -> asio::awaitable<error_code> {
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
  auto chunk = std::make_unique<char[]>(body_chunk_size);
  bool upstream_alive = !upstream_ec;
  const auto sandbox = connect_row.row.sandbox;
  const exchange_limits xl{.client_read = lim.idle_timeout,
                           .upstream_read = lim.upstream_timeout,
                           .write = lim.idle_timeout,
                           .tunnel_idle = lim.tunnel_idle_timeout,
                           .header_limit = static_cast<std::uint32_t>(lim.max_header_bytes)};

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

    if (!upstream_alive) {
      // The upstream closed its side after the previous response: reconnect to the same checked
      // address, verified again.
      beast::tcp_stream tcp(client.get_executor());
      tcp.expires_after(lim.connect_timeout);
      const auto addr = r.upstream.address;
      asio::ip::address ip =
          addr.v6 ? asio::ip::address(asio::ip::address_v6(addr.bytes))
                  : asio::ip::address(asio::ip::address_v4(
                        {addr.bytes[0], addr.bytes[1], addr.bytes[2], addr.bytes[3]}));
      auto [cec] = co_await tcp.async_connect(tcp::endpoint(ip, r.where.port), use_nothrow);
      error_code hec = cec;
      if (!cec) {
        error_code ignored;
        tcp.socket().set_option(tcp::no_delay(true), ignored);
        upstream.emplace(std::move(tcp), upstream_asio_);
        upstream_buf.consume(upstream_buf.size());
        if (!certs::prepare_upstream_ssl(upstream->native_handle(), r.where.host, r.where.port)) {
          hec = asio::error::invalid_argument;
        } else {
          beast::get_lowest_layer(*upstream).expires_after(lim.connect_timeout);
          auto [ec] =
              co_await upstream->async_handshake(asio::ssl::stream_base::client, use_nothrow);
          beast::get_lowest_layer(*upstream).expires_never();
          hec = ec;
        }
      }
      if (hec) {
        metrics::add(st.counters.upstream_errors);
        const bool invalid =
            upstream && SSL_get_verify_result(upstream->native_handle()) != X509_V_OK;
        co_await reply(
            row, req.version(), 502, invalid ? "upstream-tls-invalid" : "upstream-unreachable",
            fmt::format("sbx-proxy: cannot reach {}: {}", r.where.text(), hec.message()), false);
        break;
      }
      upstream_alive = true;
    }

    metrics::add(st.counters.routes_intercept);
    const auto shape = prepare_upstream_request(req, origin_form);
    auto x = co_await relay_exchange(client, r.client_buf, p, shape, *upstream, upstream_buf,
                                     chunk.get(), xl);
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
    if (x.upgraded || !x.client_keep_alive || r.draining) break;
    if (!x.upstream_reusable) {
      upstream_alive = false;
      error_code ignored;
      beast::get_lowest_layer(*upstream).socket().shutdown(tcp::socket::shutdown_both, ignored);
      beast::get_lowest_layer(*upstream).close();
    }
  }

  // Best-effort close_notify to the client, bounded: a peer that has gone away must not hold us.
  r.client.expires_after(std::chrono::seconds(1));
  co_await client.async_shutdown(use_nothrow);
  connect_row.finish(200);
}

}  // namespace sbx::proxy::detail
