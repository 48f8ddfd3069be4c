// sbx_loadgen: a closed-loop HTTP(S) load generator for the sbx-proxy benchmarks (bench/run).
//
// Each client keeps exactly one request in flight (closed loop), so req/s and latency describe the
// same load. One io_context per thread; a client never leaves its thread. Results go to stdout as
// one JSON line, diagnostics to stderr.
//
//   sbx_loadgen --mode direct --target https://127.0.0.1:8443/json --host bench.test
//               --cacert ca.pem
//   sbx_loadgen --mode connect --target https://127.0.0.1:8443/json --host bench.test:443
//               --proxy 127.0.0.1:3128 --cacert ca.pem
//   sbx_loadgen --mode intercept --target https://127.0.0.1:8443/json --host api.openai.com:443
//               --proxy 127.0.0.1:3128 --cacert $SBX_HOME/ca.pem --sample-pid $(pidof sbx)
//
// Modes: direct (straight to the target, TLS or plain by its scheme), forward (absolute-form
// HTTP through the proxy), connect/intercept (CONNECT, then TLS and keep-alive requests; the two
// differ only in which CA the client trusts), newconn (a new connection, CONNECT and handshake per
// request), bulk (keep-alive downloads of a large body), sse (one long event stream per client;
// latency = arrival time - the upstream's send time in each event), idle (open N tunnels, make one
// request on each, then hold them while the proxy's memory is read).
//
// --sample-pid PID (repeatable) reads that process's CPU time (utime+stime, /proc/PID/stat) at the
// start and end of the measured window and its peak RSS over the window (VmHWM, reset through
// /proc/PID/clear_refs when permitted), so CPU per request counts exactly the measured requests.
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include "proxy/detail/net.hpp"

namespace sbx::bench {
namespace {

using namespace sbx::proxy::detail;  // asio, beast, http, tcp, error_code, use_nothrow
using clock = std::chrono::steady_clock;
using tls_stream = beast::ssl_stream<beast::tcp_stream>;

// Bodies larger than this are an upstream misconfiguration, not a benchmark.
constexpr std::uint64_t body_limit = 1ull << 30;
// After a failed connection a client waits this long, so a refusing proxy is not hammered in a
// tight loop that would only measure the failure path.
constexpr auto error_backoff = std::chrono::milliseconds(10);
// How many idle tunnels each thread opens at once: bounded so that the open phase does not look
// like a connection flood to the proxy (its accept backlog) or to the upstream.
constexpr std::size_t idle_open_parallelism = 64;

// ---------------------------------------------------------------------------------------------
// Latency histogram: HdrHistogram-like log buckets with 32 linear sub-buckets per power of two
// (about 3% precision), over nanoseconds. Fixed size whatever the run length.
class histogram {
 public:
  static constexpr int sub_bits = 6;  // values below 2^6 are exact
  static constexpr int half = 1 << (sub_bits - 1);
  static constexpr std::size_t bucket_count = 64 * half + (1 << sub_bits);

  void record(std::uint64_t ns) {
    ++counts_[index_of(ns)];
    ++total_;
    max_ = std::max(max_, ns);
  }
  void merge(const histogram& other) {
    for (std::size_t i = 0; i < bucket_count; ++i)
      counts_[i] += other.counts_[i];
    total_ += other.total_;
    max_ = std::max(max_, other.max_);
  }
  [[nodiscard]] std::uint64_t total() const { return total_; }
  [[nodiscard]] std::uint64_t max() const { return max_; }
  // The value at quantile q (0..1): the middle of the bucket that holds it.
  [[nodiscard]] std::uint64_t quantile(double q) const {
    if (total_ == 0) return 0;
    const auto rank = static_cast<std::uint64_t>(q * static_cast<double>(total_ - 1)) + 1;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(middle_of(i), max_);
    }
    return max_;
  }

 private:
  static std::size_t index_of(std::uint64_t v) {
    const int width = std::bit_width(v);
    const int shift = std::max(0, width - sub_bits);
    return static_cast<std::size_t>(shift) * half + static_cast<std::size_t>(v >> shift);
  }
  static std::uint64_t middle_of(std::size_t index) {
    if (index < (1u << sub_bits)) return index;
    const auto shift = index / half - 1;
    const auto mantissa = index - shift * half;
    return (mantissa << shift) + ((1ull << shift) >> 1);
  }

  std::array<std::uint64_t, bucket_count> counts_{};
  std::uint64_t total_ = 0;
  std::uint64_t max_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Options

enum class mode { direct, forward, connect, intercept, newconn, bulk, sse, idle };

struct options {
  std::string mode_text = "direct";
  mode m = mode::direct;
  std::string target;      // scheme://host:port/path: where the requests go
  std::string proxy;       // host:port
  std::string proxy_auth;  // user:token -> Proxy-Authorization: Basic
  std::string host;        // NAME[:PORT] for CONNECT, SNI, Host and certificate checks
  std::string path;        // overrides the target's path
  std::string cacert;
  std::string label;
  std::vector<std::string> headers;  // extra request header lines
  std::vector<int> sample_pids;
  std::size_t connections = 32;
  unsigned threads = 1;
  double duration_s = 5;
  double warmup_s = 0.5;
  double timeout_s = 10;  // one connect/handshake/read; also the grace after the deadline
  int sse_interval_ms = 10;
  bool idle_request = true;
};

struct endpoint_text {
  std::string host;
  std::uint16_t port = 0;
};

std::optional<endpoint_text> split_host_port(std::string_view text, std::uint16_t default_port) {
  endpoint_text out;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    out.host = std::string(text.substr(1, close - 1));
    text.remove_prefix(close + 1);
  } else {
    const auto colon = text.rfind(':');
    out.host = std::string(text.substr(0, colon));
    text = colon == std::string_view::npos ? std::string_view{} : text.substr(colon);
  }
  out.port = default_port;
  if (text.starts_with(':')) {
    unsigned port = 0;
    const auto digits = text.substr(1);
    auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc{} || p != digits.data() + digits.size() || port == 0 || port > 65535) {
      return std::nullopt;
    }
    out.port = static_cast<std::uint16_t>(port);
  } else if (!text.empty()) {
    return std::nullopt;
  }
  if (out.host.empty()) return std::nullopt;
  return out;
}

// Everything derived from the options once, shared read-only by every thread.
struct plan {
  options opt;
  bool tls = true;
  tcp::endpoint target_ep;  // TCP destination without a proxy
  std::optional<tcp::endpoint> proxy_ep;
  endpoint_text name;  // CONNECT authority, SNI, Host
  std::string path;
  std::string request_text;  // the whole request, built once
  std::string connect_text;  // the CONNECT request, built once
  clock::time_point start, measure_from, deadline, hard_stop;
  std::chrono::milliseconds timeout{10'000};
};

bool is_ip_literal(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

std::string base64(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(in.data()),
                                static_cast<int>(in.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

tcp::endpoint resolve_one(asio::io_context& ctx, const endpoint_text& where) {
  tcp::resolver resolver(ctx);
  auto results = resolver.resolve(where.host, std::to_string(where.port));
  return results.begin()->endpoint();
}

plan make_plan(options opt) {
  plan p;
  static const std::pair<std::string_view, mode> names[] = {
      {"direct", mode::direct},   {"forward", mode::forward},
      {"connect", mode::connect}, {"intercept", mode::intercept},
      {"newconn", mode::newconn}, {"bulk", mode::bulk},
      {"sse", mode::sse},         {"idle", mode::idle}};
  const auto* found = std::find_if(std::begin(names), std::end(names),
                                   [&](const auto& n) { return n.first == opt.mode_text; });
  if (found == std::end(names)) throw std::runtime_error("unknown --mode " + opt.mode_text);
  opt.m = found->second;

  std::string_view url = opt.target;
  if (url.starts_with("https://")) {
    url.remove_prefix(8);
  } else if (url.starts_with("http://")) {
    url.remove_prefix(7);
    p.tls = false;
  } else {
    throw std::runtime_error("--target must be http://host:port/path or https://...");
  }
  const auto slash = url.find('/');
  const auto authority = url.substr(0, slash);
  p.path = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  if (!opt.path.empty()) p.path = opt.path;
  const auto target = split_host_port(authority, p.tls ? 443 : 80);
  if (!target) throw std::runtime_error("cannot read host:port in --target " + opt.target);

  if (opt.m == mode::forward) {
    if (p.tls) throw std::runtime_error("--mode forward needs an http:// target");
    if (opt.proxy.empty()) throw std::runtime_error("--mode forward needs --proxy");
  }
  if ((opt.m == mode::connect || opt.m == mode::intercept || opt.m == mode::idle) &&
      opt.proxy.empty()) {
    throw std::runtime_error("--mode " + opt.mode_text + " needs --proxy");
  }
  if (opt.m != mode::direct && opt.m != mode::forward && !p.tls) {
    throw std::runtime_error("--mode " + opt.mode_text + " needs an https:// target");
  }

  asio::io_context ctx;
  p.target_ep = resolve_one(ctx, *target);
  if (!opt.proxy.empty()) {
    const auto proxy = split_host_port(opt.proxy, 3128);
    if (!proxy) throw std::runtime_error("cannot read --proxy " + opt.proxy);
    p.proxy_ep = resolve_one(ctx, *proxy);
  }
  p.name = *target;
  if (!opt.host.empty()) {
    auto named = split_host_port(opt.host, target->port);
    if (!named) throw std::runtime_error("cannot read --host " + opt.host);
    p.name = *named;
  }
  const bool default_port = p.name.port == (p.tls ? 443 : 80);
  const bool v6 = p.name.host.find(':') != std::string::npos;
  const auto bracketed = v6 ? "[" + p.name.host + "]" : p.name.host;
  const auto host_header = default_port ? bracketed : fmt::format("{}:{}", bracketed, p.name.port);

  if (opt.m == mode::sse) {
    // Enough events for the whole run; the upstream stops sending when the client hangs up.
    const auto events = static_cast<long>((opt.duration_s + opt.warmup_s + opt.timeout_s) * 1000 /
                                          std::max(1, opt.sse_interval_ms)) +
                        10;
    p.path +=
        fmt::format("{}events={}&interval_ms={}", p.path.find('?') == std::string::npos ? "?" : "&",
                    events, opt.sse_interval_ms);
  }

  std::string auth_line;
  if (!opt.proxy_auth.empty()) {
    auth_line = "Proxy-Authorization: Basic " + base64(opt.proxy_auth) + "\r\n";
  }
  std::string extra;
  for (const auto& h : opt.headers)
    extra += h + "\r\n";
  const std::string request_target =
      opt.m == mode::forward ? fmt::format("http://{}{}", host_header, p.path) : p.path;
  p.request_text = fmt::format(
      "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sbx-loadgen/1\r\nAccept: */*\r\n{}{}\r\n",
      request_target, host_header, opt.m == mode::forward ? auth_line : std::string{}, extra);
  p.connect_text = fmt::format("CONNECT {0}:{1} HTTP/1.1\r\nHost: {0}:{1}\r\n{2}\r\n", bracketed,
                               p.name.port, auth_line);
  p.timeout = std::chrono::milliseconds(static_cast<long>(opt.timeout_s * 1000));
  p.opt = std::move(opt);
  return p;
}

// ---------------------------------------------------------------------------------------------
// A response body that is counted and thrown away: the generator must not pay for storing 10 MiB
// bodies it never looks at. Bytes count towards MB/s as they arrive, not when the response
// completes, so a 10 MiB body that straddles the end of the window counts for what arrived in it.
struct worker;
void count_body_bytes(worker& w, std::size_t n);

struct discard_body {
  struct value_type {
    std::uint64_t size = 0;
    worker* counter = nullptr;  // set before the read starts
  };
  static std::uint64_t size(const value_type& v) { return v.size; }

  class reader {
   public:
    template <bool is_request, class Fields>
    reader(http::header<is_request, Fields>&, value_type& body) : body_(body) {}
    void init(const boost::optional<std::uint64_t>&, error_code& ec) { ec = {}; }
    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, error_code& ec) {
      const auto n = asio::buffer_size(buffers);
      body_.size += n;
      if (body_.counter) count_body_bytes(*body_.counter, n);
      ec = {};
      return n;
    }
    void finish(error_code& ec) { ec = {}; }

   private:
    value_type& body_;
  };
};

// ---------------------------------------------------------------------------------------------
// Per-thread state: a client runs on one thread only, so none of this needs a lock.

struct worker {
  const plan& p;
  asio::io_context ctx{1};
  asio::ssl::context& tls;
  histogram latency;
  std::uint64_t requests = 0;
  std::uint64_t bytes = 0;
  std::uint64_t reconnects = 0;  // keep-alive connections the peer closed without saying so
  // Read by the main thread while the idle mode opens its tunnels, hence atomic.
  std::atomic<std::uint64_t> errors{0};
  std::atomic<std::uint64_t> opened{0};  // idle mode: tunnels open and answered
  std::string first_error;

  worker(const plan& plan, asio::ssl::context& tls_ctx) : p(plan), tls(tls_ctx) {}

  [[nodiscard]] bool running() const { return clock::now() < p.deadline; }
  [[nodiscard]] bool measuring(clock::time_point t) const {
    return t >= p.measure_from && t < p.deadline;
  }
  // A request counts when it completes inside the window (as wrk counts), whenever it began.
  void record(clock::time_point began, clock::time_point ended) {
    if (!measuring(ended)) return;
    ++requests;
    latency.record(static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(ended - began).count()));
  }
  // Errors after the deadline are the run ending (a read cut short by the hard stop), not
  // failures of the proxy.
  void fail(const error_code& ec, std::string_view where) {
    if (clock::now() >= p.deadline) return;
    ++errors;
    if (first_error.empty()) first_error = fmt::format("{}: {}", where, ec.message());
  }
  asio::awaitable<void> backoff() {
    asio::steady_timer t(ctx, error_backoff);
    co_await t.async_wait(use_nothrow);
  }
};

void count_body_bytes(worker& w, std::size_t n) {
  if (w.measuring(clock::now())) w.bytes += n;
}

// Sends CONNECT on an open TCP stream and reads the proxy's answer; success = 2xx.
asio::awaitable<error_code> send_connect(worker& w, beast::tcp_stream& s, beast::flat_buffer& buf) {
  s.expires_after(w.p.timeout);
  auto [wec, wn] = co_await asio::async_write(s, asio::buffer(w.p.connect_text), use_nothrow);
  if (wec) co_return wec;
  http::response_parser<http::empty_body> parser;
  parser.skip(true);  // a 2xx to CONNECT has no body (RFC 9110 section 9.3.6)
  auto [rec, rn] = co_await http::async_read_header(s, buf, parser, use_nothrow);
  if (rec) co_return rec;
  if (parser.get().result_int() / 100 != 2) co_return http::error::bad_target;
  co_return error_code{};
}

asio::awaitable<error_code> open_tcp(worker& w, beast::tcp_stream& s) {
  s.expires_after(w.p.timeout);
  auto [ec] = co_await s.async_connect(w.p.proxy_ep ? *w.p.proxy_ep : w.p.target_ep, use_nothrow);
  if (!ec) s.socket().set_option(tcp::no_delay(true), ec);
  co_return ec;
}

// TCP (to the proxy with CONNECT, or straight to the target), then the TLS handshake, verified for
// the --host name (or address).
asio::awaitable<error_code> open_tls(worker& w, tls_stream& s, beast::flat_buffer& buf,
                                     std::string_view& where) {
  auto& tcp_layer = beast::get_lowest_layer(s);
  where = "connect";
  if (auto ec = co_await open_tcp(w, tcp_layer)) co_return ec;
  if (w.p.proxy_ep) {
    where = "CONNECT";
    if (auto ec = co_await send_connect(w, tcp_layer, buf)) co_return ec;
  }
  where = "TLS handshake";
  SSL* ssl = s.native_handle();
  const auto& host = w.p.name.host;
  if (is_ip_literal(host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl, host.c_str());
    SSL_set1_host(ssl, host.c_str());
  }
  tcp_layer.expires_after(w.p.timeout);
  // A proxy answers CONNECT before the client speaks, so nothing can be left in buf here.
  auto [ec] = co_await s.async_handshake(asio::ssl::stream_base::client, use_nothrow);
  co_return ec;
}

// One request and its whole response; returns the body size. keep_alive says whether the
// connection may carry another request.
template <class Stream>
asio::awaitable<error_code> exchange(worker& w, Stream& s, beast::flat_buffer& buf,
                                     std::uint64_t& body, bool& keep_alive) {
  beast::get_lowest_layer(s).expires_after(w.p.timeout);
  auto [wec, wn] = co_await asio::async_write(s, asio::buffer(w.p.request_text), use_nothrow);
  if (wec) co_return wec == asio::error::broken_pipe ? asio::error::connection_aborted : wec;
  http::response_parser<discard_body> parser;
  parser.body_limit(body_limit);
  parser.header_limit(64 * 1024);
  parser.get().body().counter = &w;
  auto [rec, rn] = co_await http::async_read(s, buf, parser, use_nothrow);
  if (rec) {
    // Closed before a single byte of the answer: on a reused connection that is the peer ending
    // keep-alive without saying so (tinyproxy does, after every forwarded request).
    if (!parser.got_some() &&
        (rec == http::error::end_of_stream || rec == asio::error::eof ||
         rec == asio::error::connection_reset || rec == asio::ssl::error::stream_truncated)) {
      co_return asio::error::connection_aborted;
    }
    co_return rec;
  }
  if (parser.get().result_int() != 200) co_return http::error::bad_status;
  body = parser.get().body().size;
  keep_alive = parser.get().keep_alive();
  co_return error_code{};
}

// Requests until the deadline, an error (true) or a response that closes the connection.
template <class Stream>
asio::awaitable<bool> request_loop(worker& w, Stream& s, beast::flat_buffer& buf) {
  for (bool reused = false; w.running(); reused = true) {
    const auto began = clock::now();
    std::uint64_t body = 0;
    bool keep_alive = false;
    if (auto ec = co_await exchange(w, s, buf, body, keep_alive)) {
      // As curl does: a request that finds its reused connection dead is sent again on a new one.
      if (reused && ec == asio::error::connection_aborted) {
        ++w.reconnects;
        co_return false;
      }
      w.fail(ec, "request");
      co_return true;
    }
    w.record(began, clock::now());
    if (!keep_alive) co_return false;
  }
  co_return false;
}

// direct, forward, connect, intercept, bulk: keep-alive requests, reconnecting after a failure or a
// Connection: close.
asio::awaitable<void> keepalive_client(worker& w) {
  const bool plain = !w.p.tls;
  while (w.running()) {
    beast::flat_buffer buf;
    if (plain) {
      beast::tcp_stream s(w.ctx);
      if (auto ec = co_await open_tcp(w, s)) {
        w.fail(ec, "connect");
        co_await w.backoff();
        continue;
      }
      if (co_await request_loop(w, s, buf)) co_await w.backoff();
    } else {
      tls_stream s(w.ctx, w.tls);
      std::string_view where;
      if (auto ec = co_await open_tls(w, s, buf, where)) {
        w.fail(ec, where);
        co_await w.backoff();
        continue;
      }
      if (co_await request_loop(w, s, buf)) co_await w.backoff();
    }
  }
}

// newconn: connection (CONNECT) + handshake + one request, timed together, then close.
asio::awaitable<void> newconn_client(worker& w) {
  while (w.running()) {
    const auto began = clock::now();
    beast::flat_buffer buf;
    tls_stream s(w.ctx, w.tls);
    std::string_view where;
    if (auto ec = co_await open_tls(w, s, buf, where)) {
      w.fail(ec, where);
      co_await w.backoff();
      continue;
    }
    std::uint64_t body = 0;
    bool keep_alive = false;
    if (auto ec = co_await exchange(w, s, buf, body, keep_alive)) {
      w.fail(ec, "request");
      co_await w.backoff();
      continue;
    }
    w.record(began, clock::now());
    // close_notify, as a well-behaved client sends it; its answer is not awaited.
    SSL_shutdown(s.native_handle());
    error_code ignored;
    beast::get_lowest_layer(s).socket().shutdown(tcp::socket::shutdown_both, ignored);
  }
}

// Reads "data: t=<steady-clock ns>" events out of the chunked body as they arrive.
class sse_scanner {
 public:
  explicit sse_scanner(worker& w) : w_(w) {}
  void feed(std::string_view data) {
    const auto now = clock::now();
    pending_.append(data);
    std::size_t start = 0;
    for (;;) {
      const auto end = pending_.find("\n\n", start);
      if (end == std::string::npos) break;
      event(std::string_view(pending_).substr(start, end - start), now);
      start = end + 2;
    }
    pending_.erase(0, start);
  }

 private:
  void event(std::string_view e, clock::time_point now) {
    const auto at = e.find("t=");
    if (at == std::string_view::npos) return;
    std::int64_t sent_ns = 0;
    auto digits = e.substr(at + 2);
    std::from_chars(digits.data(), digits.data() + digits.size(), sent_ns);
    const auto sent = clock::time_point(std::chrono::nanoseconds(sent_ns));
    if (sent > now) return;  // cannot happen with one monotonic clock; ignore rather than wrap
    w_.record(sent, now);
    count_body_bytes(w_, e.size() + 2);
  }

  worker& w_;
  std::string pending_;
};

// sse: one stream per client for the whole run; every event is one sample.
asio::awaitable<void> sse_client(worker& w) {
  while (w.running()) {
    beast::flat_buffer buf;
    tls_stream s(w.ctx, w.tls);
    std::string_view where;
    if (auto ec = co_await open_tls(w, s, buf, where)) {
      w.fail(ec, where);
      co_await w.backoff();
      continue;
    }
    auto& tcp_layer = beast::get_lowest_layer(s);
    tcp_layer.expires_after(w.p.timeout);
    if (auto [ec, n] = co_await asio::async_write(s, asio::buffer(w.p.request_text), use_nothrow);
        ec) {
      w.fail(ec, "request");
      co_await w.backoff();
      continue;
    }
    http::response_parser<discard_body> parser;
    parser.body_limit(body_limit);
    sse_scanner scanner(w);
    auto on_chunk = [&](std::uint64_t, beast::string_view body, error_code& ec) -> std::size_t {
      ec = {};
      scanner.feed({body.data(), body.size()});
      return body.size();
    };
    parser.on_chunk_body(on_chunk);
    if (auto [ec, n] = co_await http::async_read_header(s, buf, parser, use_nothrow); ec) {
      w.fail(ec, "response head");
      co_await w.backoff();
      continue;
    }
    if (parser.get().result_int() != 200 || !parser.chunked()) {
      w.fail(http::error::bad_status, "response head (want 200, chunked)");
      co_await w.backoff();
      continue;
    }
    // The stream runs until the deadline; the timer then ends the read.
    tcp_layer.expires_at(w.p.deadline);
    while (!parser.is_done()) {
      auto [ec, n] = co_await http::async_read_some(s, buf, parser, use_nothrow);
      if (ec) {
        w.fail(ec, "event stream");
        break;
      }
    }
    if (w.running()) co_await w.backoff();
  }
}

// idle: opens its share of tunnels, one request on each, then holds them until the deadline.
asio::awaitable<void> idle_client(worker& w, std::size_t count) {
  std::vector<std::unique_ptr<tls_stream>> held;
  held.reserve(count);
  for (std::size_t i = 0; i < count && w.running(); ++i) {
    auto s = std::make_unique<tls_stream>(w.ctx, w.tls);
    beast::flat_buffer buf;
    std::string_view where;
    if (auto ec = co_await open_tls(w, *s, buf, where)) {
      w.fail(ec, where);
      continue;
    }
    if (w.p.opt.idle_request) {
      std::uint64_t body = 0;
      bool keep_alive = false;
      if (auto ec = co_await exchange(w, *s, buf, body, keep_alive)) {
        w.fail(ec, "request");
        continue;
      }
    }
    beast::get_lowest_layer(*s).expires_never();
    ++w.opened;
    held.push_back(std::move(s));
  }
  asio::steady_timer hold(w.ctx);
  hold.expires_at(w.p.deadline);
  co_await hold.async_wait(use_nothrow);  // the main thread stops the context first
}

// ---------------------------------------------------------------------------------------------
// /proc sampling of the proxy under test.

struct proc_sample {
  double cpu_s = 0;
  long rss_kib = 0;
  long hwm_kib = 0;
  bool ok = false;
};

proc_sample read_proc(int pid) {
  proc_sample out;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return out;
  // Fields after the command name, which may itself hold spaces and parentheses.
  std::istringstream fields(line.substr(line.rfind(')') + 2));
  std::string field;
  unsigned long utime = 0, stime = 0;
  for (int i = 3; fields >> field; ++i) {
    if (i == 14) utime = std::stoul(field);
    if (i == 15) {
      stime = std::stoul(field);
      break;
    }
  }
  out.cpu_s = static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::ifstream status(fmt::format("/proc/{}/status", pid));
  while (std::getline(status, line)) {
    if (line.starts_with("VmRSS:")) out.rss_kib = std::stol(line.substr(6));
    if (line.starts_with("VmHWM:")) out.hwm_kib = std::stol(line.substr(6));
  }
  out.ok = true;
  return out;
}

proc_sample read_procs(const std::vector<int>& pids) {
  proc_sample sum;
  for (int pid : pids) {
    const auto s = read_proc(pid);
    if (!s.ok) continue;
    sum.ok = true;
    sum.cpu_s += s.cpu_s;
    sum.rss_kib += s.rss_kib;
    sum.hwm_kib += s.hwm_kib;
  }
  return sum;
}

// "5" resets VmHWM to the current RSS (proc(5), clear_refs), so the peak covers only the window.
bool reset_peaks(const std::vector<int>& pids) {
  bool all = true;
  for (int pid : pids) {
    std::ofstream f(fmt::format("/proc/{}/clear_refs", pid));
    f << "5";
    f.flush();
    all = all && static_cast<bool>(f);
  }
  return all;
}

void raise_fd_limit() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

int run(plan& p) {
  raise_fd_limit();
  asio::ssl::context tls(asio::ssl::context::tls_client);
  tls.set_verify_mode(asio::ssl::verify_peer);
  if (p.opt.cacert.empty()) {
    tls.set_default_verify_paths();
  } else {
    tls.load_verify_file(p.opt.cacert);
  }
  static constexpr unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  SSL_CTX_set_alpn_protos(tls.native_handle(), alpn, sizeof alpn);

  const unsigned threads = std::max(1u, p.opt.threads);
  std::vector<std::unique_ptr<worker>> workers;
  for (unsigned i = 0; i < threads; ++i)
    workers.push_back(std::make_unique<worker>(p, tls));

  const auto sample_before_open = read_procs(p.opt.sample_pids);
  p.start = clock::now();
  const auto warmup =
      std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(p.opt.warmup_s));
  p.measure_from = p.start + warmup;
  p.deadline = p.measure_from + std::chrono::duration_cast<clock::duration>(
                                    std::chrono::duration<double>(p.opt.duration_s));
  p.hard_stop = p.deadline + p.timeout;
  if (p.opt.m == mode::idle) {
    // The window starts when the tunnels are open, which takes as long as it takes: the deadline
    // is far out, and the main thread stops the contexts once it has held them for --duration.
    p.deadline = p.start + std::chrono::hours(1);
  }

  for (unsigned t = 0; t < threads; ++t) {
    auto& w = *workers[t];
    const std::size_t share = p.opt.connections / threads + (t < p.opt.connections % threads);
    if (p.opt.m == mode::idle) {
      const std::size_t lanes = std::min(share, idle_open_parallelism);
      for (std::size_t lane = 0; lane < lanes; ++lane) {
        asio::co_spawn(w.ctx, idle_client(w, share / lanes + (lane < share % lanes)),
                       asio::detached);
      }
      continue;
    }
    for (std::size_t c = 0; c < share; ++c) {
      switch (p.opt.m) {
        case mode::newconn:
          asio::co_spawn(w.ctx, newconn_client(w), asio::detached);
          break;
        case mode::sse:
          asio::co_spawn(w.ctx, sse_client(w), asio::detached);
          break;
        default:
          asio::co_spawn(w.ctx, keepalive_client(w), asio::detached);
      }
    }
  }

  std::vector<std::thread> pool;
  for (auto& w : workers)
    pool.emplace_back([&w] { w->ctx.run(); });

  proc_sample before, after;
  double seconds = p.opt.duration_s;
  double open_seconds = 0;
  if (p.opt.m == mode::idle) {
    // Wait until every tunnel is open (or failed), bounded by the open timeout.
    const auto open_limit = p.start + std::chrono::duration_cast<clock::duration>(
                                          std::chrono::duration<double>(p.opt.timeout_s * 6));
    for (;;) {
      std::uint64_t done = 0;
      for (auto& w : workers)
        done += w->opened + w->errors;
      if (done >= p.opt.connections || clock::now() > open_limit) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    open_seconds = std::chrono::duration<double>(clock::now() - p.start).count();
    before = read_procs(p.opt.sample_pids);
    std::this_thread::sleep_for(std::chrono::duration<double>(p.opt.duration_s));
    after = read_procs(p.opt.sample_pids);
    // Every client re-checks running() only when its timer fires: stop the contexts instead.
    for (auto& w : workers)
      w->ctx.stop();
  } else {
    std::this_thread::sleep_until(p.measure_from);
    const bool peaks_reset = reset_peaks(p.opt.sample_pids);
    before = read_procs(p.opt.sample_pids);
    if (!peaks_reset) before.hwm_kib = 0;
    std::this_thread::sleep_until(p.deadline);
    after = read_procs(p.opt.sample_pids);
    // Clients stop by themselves once their request in flight is answered; whatever still runs
    // at the hard stop is abandoned.
    while (clock::now() < p.hard_stop &&
           std::any_of(workers.begin(), workers.end(), [](auto& w) { return !w->ctx.stopped(); })) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (auto& w : workers)
      w->ctx.stop();
  }
  for (auto& t : pool)
    t.join();

  histogram all;
  std::uint64_t requests = 0, errors = 0, bytes = 0, opened = 0, reconnects = 0;
  std::string first_error;
  for (auto& w : workers) {
    all.merge(w->latency);
    requests += w->requests;
    errors += w->errors;
    bytes += w->bytes;
    opened += w->opened;
    reconnects += w->reconnects;
    if (first_error.empty()) first_error = w->first_error;
  }
  const auto us = [](std::uint64_t ns) { return static_cast<double>(ns) / 1000.0; };
  std::string out = fmt::format(
      "{{\"mode\":{},\"label\":{},\"connections\":{},\"threads\":{},\"requests\":{},"
      "\"errors\":{},\"seconds\":{:.3f},\"rps\":{:.1f},\"bytes\":{},\"mbps\":{:.2f},"
      "\"p50_us\":{:.1f},\"p90_us\":{:.1f},\"p99_us\":{:.1f},\"max_us\":{:.1f}",
      json_string(p.opt.mode_text), json_string(p.opt.label), p.opt.connections, threads, requests,
      errors, seconds, static_cast<double>(requests) / seconds, bytes,
      static_cast<double>(bytes) / seconds / 1e6, us(all.quantile(0.50)), us(all.quantile(0.90)),
      us(all.quantile(0.99)), us(all.max()));
  out += fmt::format(",\"reconnects\":{}", reconnects);
  if (p.opt.m == mode::idle) {
    out += fmt::format(",\"opened\":{},\"open_seconds\":{:.2f}", opened, open_seconds);
  }
  if (!p.opt.sample_pids.empty() && after.ok) {
    const double cpu_us = (after.cpu_s - before.cpu_s) * 1e6;
    out += fmt::format(",\"proxy_cpu_us\":{:.0f},\"proxy_rss_kib\":{},\"proxy_hwm_kib\":{}", cpu_us,
                       after.rss_kib, std::max(after.hwm_kib, after.rss_kib));
    if (p.opt.m == mode::idle) {
      out += fmt::format(",\"proxy_rss_before_open_kib\":{}", sample_before_open.rss_kib);
    }
  }
  if (!first_error.empty()) out += ",\"first_error\":" + json_string(first_error);
  out += "}";
  std::cout << out << std::endl;
  return requests > 0 || p.opt.m == mode::idle ? 0 : 1;
}

}  // namespace
}  // namespace sbx::bench

int main(int argc, char** argv) {
  sbx::bench::options opt;
  CLI::App app{"sbx_loadgen: closed-loop HTTP(S) load through a proxy or direct; one JSON line"};
  app.add_option("--mode", opt.mode_text,
                 "direct | forward | connect | intercept | newconn | bulk | sse | idle");
  app.add_option("--target", opt.target, "https://IP:PORT/path or http://IP:PORT/path")->required();
  app.add_option("--proxy", opt.proxy, "proxy host:port (CONNECT or absolute-form)");
  app.add_option("--proxy-auth", opt.proxy_auth, "user:token for Proxy-Authorization: Basic");
  app.add_option("--host", opt.host, "NAME[:PORT] for CONNECT, SNI, Host and the cert check");
  app.add_option("--path", opt.path, "request path (overrides the target's)");
  app.add_option("--cacert", opt.cacert, "PEM bundle the client trusts (default: system store)");
  app.add_option("--header", opt.headers, "extra request header line, e.g. 'Authorization: x'");
  app.add_option("--connections,-c", opt.connections, "concurrent clients (idle: tunnels)");
  app.add_option("--threads,-t", opt.threads, "threads, one io_context each");
  app.add_option("--duration,-d", opt.duration_s, "measured seconds");
  app.add_option("--warmup", opt.warmup_s, "seconds before measuring (connections open here)");
  app.add_option("--timeout", opt.timeout_s, "seconds for one connect/handshake/response");
  app.add_option("--sse-interval-ms", opt.sse_interval_ms, "sse: ms between upstream events");
  app.add_option("--idle-request", opt.idle_request, "idle: one request on each tunnel first");
  app.add_option("--sample-pid", opt.sample_pids, "process whose CPU and RSS to sample");
  app.add_option("--label", opt.label, "copied into the JSON line");
  CLI11_PARSE(app, argc, argv);
  try {
    auto plan = sbx::bench::make_plan(std::move(opt));
    return sbx::bench::run(plan);
  } catch (const std::exception& e) {
    std::cerr << "sbx_loadgen: " << e.what() << "\n";
    return 2;
  }
}
