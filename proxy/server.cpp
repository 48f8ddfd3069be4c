#include "proxy/server.hpp"

#include <malloc.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <unistd.h>
#include <cerrno>
#include <csignal>
#include <cstring>

#include <thread>

#include <fmt/format.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "certs/authority.hpp"
#include "certs/tls_contexts.hpp"
#include "keychain/secret_store.hpp"
#include "policy/store/decision_json.hpp"
#include "policy/store/state_db.hpp"
#include "proxy/detail/control_api.hpp"
#include "proxy/detail/control_server.hpp"
#include "proxy/detail/credentials.hpp"
#include "proxy/detail/identity.hpp"
#include "proxy/detail/intercept.hpp"
#include "proxy/detail/session.hpp"
#include "proxy/detail/upstream.hpp"
#include "proxy/http_checks.hpp"

namespace sbx::proxy {
namespace {

using namespace detail;
using json = nlohmann::json;
using clock = std::chrono::steady_clock;

constexpr auto rules_poll_interval = std::chrono::milliseconds(250);
// Secrets changed by the CLI arrive by notify at once; this catches edits made with other tools
// (secret-tool, Seahorse) within a few seconds.
constexpr int secrets_poll_every = 40;  // rule polls, i.e. 10 s
constexpr std::string_view version_text = "0.1.0";
// A refused flood must not flood the log too: at most one line per this interval.
constexpr auto client_limit_log_interval = std::chrono::seconds(10);
// When the hard open-file limit is unlimited, the soft limit goes this high (the kernel's default
// fs.nr_open).
constexpr rlim_t open_files_when_unlimited = 1 << 20;

void setup_logging() {
  if (!spdlog::get("sbx")) {
    auto logger = spdlog::stderr_color_mt("sbx");
    spdlog::set_default_logger(logger);
  }
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
  if (const char* level = std::getenv("SBX_LOG_LEVEL")) {
    spdlog::set_level(spdlog::level::from_str(level));
  }
}

tcp::endpoint parse_listen(std::string_view text) {
  const auto ep = config::parse_endpoint(text);  // throws config_error with the reason
  return {asio::ip::make_address(ep.ip), ep.port};
}

std::string endpoint_text(const tcp::endpoint& ep) {
  return ep.address().is_v6() ? fmt::format("[{}]:{}", ep.address().to_string(), ep.port())
                              : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

std::shared_ptr<const sandbox_directory> load_sandboxes(store::state_db& db) {
  auto dir = std::make_shared<sandbox_directory>();
  for (const auto& s : db.sandboxes()) {
    if (auto h = db.token_hash(s.name)) dir->token_hashes.emplace(s.name, *h);
    for (const auto& net : s.sources)
      dir->sources.emplace_back(net, s.name);
  }
  return dir;
}

// Raises the soft RLIMIT_NOFILE to the hard limit: the default soft limit (often 1024) would cap
// the proxy at a few hundred connections. Returns the soft limit in force.
std::uint64_t raise_open_file_limit() {
  rlimit r{};
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 1024;
  const rlim_t want = r.rlim_max == RLIM_INFINITY ? open_files_when_unlimited : r.rlim_max;
  if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < want) {
    rlimit raised{want, r.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
      r.rlim_cur = want;
    } else {
      spdlog::warn("cannot raise the open-file limit from {} to {}: {}", r.rlim_cur, want,
                   std::strerror(errno));
    }
  }
  return r.rlim_cur == RLIM_INFINITY ? open_files_when_unlimited : r.rlim_cur;
}

// Fixed glibc heap thresholds. With the defaults, each exchange that frees its 64 KiB body buffer
// leaves more than the (128 KiB) trim threshold free at the top of its thread's arena, so glibc
// hands the pages back (madvise) and the next exchange faults them in again: perf showed
// sysmalloc, madvise and the page faults at ~15 % of the proxy's CPU on keep-alive intercepted
// traffic. The periodic malloc_trim(0) of the control thread returns idle memory instead. The mmap
// threshold is fixed too (setting the trim threshold stops glibc's dynamic adjustment of both).
void tune_allocator() {
  mallopt(M_TRIM_THRESHOLD, 16 << 20);
  mallopt(M_MMAP_THRESHOLD, 4 << 20);
}

class runtime {
 public:
  explicit runtime(const run_options& opt, std::uint64_t open_files)
      : opt_(opt),
        open_files_(open_files),
        threads_(opt.threads ? opt.threads : std::max(1u, std::thread::hardware_concurrency())),
        db_(store::state_db::open(opt.state_dir / "policy.db")),
        log_(opt.state_dir / "policy.db",
             store::decision_log_options{.capacity = opt.settings.log_queue_capacity,
                                         .retention_days = opt.settings.log_retention_days}),
        signals_(control_ctx_, SIGTERM, SIGINT, SIGHUP),
        poll_timer_(control_ctx_),
        drain_timer_(control_ctx_) {
    for (unsigned i = 0; i < threads_; ++i)
      io_.push_back(std::make_unique<asio::io_context>(1));
    acceptor_.emplace(*io_.front());

    const auto ep = parse_listen(opt.settings.listen);
    loopback_listener_ = ep.address().is_loopback();
    auto settings = opt.settings;
    spdlog::info("{}", prepare_settings(settings));
    spdlog::info(
        "anonymous access (requests with no sandbox token and no --source address): {}{}",
        config::to_string(settings.anonymous),
        settings.anonymous != opt.settings.anonymous
            ? fmt::format(" (config says {}; {})", config::to_string(opt.settings.anonymous),
                          opt.allow_anonymous ? "--allow-anonymous" : "non-loopback listen address")
            : "");
    store_settings(std::move(settings));
    state_.log = &log_;
    rules_version_ = db_.rules_version();
    state_.rules.store(std::make_shared<const policy::rule_set>(db_.load_rules()));
    state_.sandboxes.store(load_sandboxes(db_));

    server_tls_ = std::make_shared<certs::server_tls_context>(
        certs::certificate_authority::load_or_create(opt.state_dir));
    upstream_tls_ = std::make_shared<certs::upstream_tls_context>(
        std::filesystem::path(opt.settings.upstream_ca_file));
    credentials_ = std::make_shared<credential_cache>(opt.secrets);
    refresh_secrets("start");
    intercept_.emplace(server_tls_, upstream_tls_, credentials_);
    state_.intercept = &*intercept_;

    if (!loopback_listener_ && opt.allow_anonymous) {
      spdlog::warn("listening on non-loopback {} without sandbox tokens (--allow-anonymous)",
                   opt.settings.listen);
    }
    error_code ec;
    acceptor_->open(ep.protocol(), ec);
    if (!ec) acceptor_->set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor_->bind(ep, ec);
    if (!ec) acceptor_->listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      throw std::runtime_error(fmt::format(
          "cannot listen on {}: {}{}", opt.settings.listen, ec.message(),
          ec == asio::error::address_in_use ? " (another proxy on that port? use --listen)" : ""));
    }
    state_.listen_address = endpoint_text(acceptor_->local_endpoint());

    control_.emplace(control_ctx_, opt.state_dir / "sbx.sock",
                     [this](std::string_view m, std::string_view t, std::string_view b) {
                       return handle_control(m, t, b);
                     });
  }

  int run() {
    control_->start();
    wait_signal();
    schedule_poll();
    asio::co_spawn(*io_.front(), accept_loop(), asio::detached);

    std::vector<std::thread> workers;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
    for (auto& ctx : io_)
      guards.emplace_back(ctx->get_executor());
    for (auto& ctx : io_)
      workers.emplace_back([&c = *ctx] { c.run(); });

    spdlog::info("sbx proxy listening on {} ({} threads, state in {}, {} rules)",
                 state_.listen_address, threads_, opt_.state_dir.string(),
                 state_.rules.load()->rules().size());
    control_ctx_.run();  // returns once shutdown has drained the sessions

    for (auto& g : guards)
      g.reset();
    for (auto& ctx : io_)
      ctx->stop();
    for (auto& t : workers)
      t.join();
    log_.stop();
    spdlog::info("sbx proxy stopped; {} decisions written", log_.rows_written());
    return 0;
  }

 private:
  asio::awaitable<void> accept_loop() {
    std::size_t next = 0;
    while (acceptor_->is_open()) {
      auto& target = *io_[next++ % io_.size()];
      auto [ec, socket] = co_await acceptor_->async_accept(target.get_executor(), use_nothrow);
      if (ec) {
        if (!acceptor_->is_open()) co_return;
        if (ec == asio::error::no_descriptors || ec == asio::error::no_buffer_space) {
          // Out of file descriptors: back off instead of spinning on accept.
          spdlog::warn("accept failed: {}; pausing accepts for 100 ms", ec.message());
          asio::steady_timer t(co_await asio::this_coro::executor, std::chrono::milliseconds(100));
          co_await t.async_wait(use_nothrow);
        }
        continue;
      }
      const auto cfg = state_.settings.load();
      if (state_.counters.active_connections.load(std::memory_order_relaxed) >=
          static_cast<std::int64_t>(cfg->lim.max_connections)) {
        metrics::add(state_.counters.connection_limit_rejections);
        asio::co_spawn(socket.get_executor(), refuse_connection(std::move(socket), busy_reply),
                       asio::detached);
        continue;
      }
      // Per client (address, or IPv6 /64), so that one client alone never reaches the global cap.
      error_code peer_ec;
      const auto peer = socket.remote_endpoint(peer_ec);
      if (peer_ec) continue;  // already gone
      auto key = detail::client_group(detail::to_policy_address(peer.address()));
      if (!state_.per_client.try_acquire(key, cfg->lim.max_connections_per_client)) {
        metrics::add(state_.counters.connection_limit_rejections);
        metrics::add(state_.counters.client_limit_rejections);
        if (clock::now() - last_client_limit_log_ >= client_limit_log_interval) {
          last_client_limit_log_ = clock::now();
          spdlog::warn(
              "client {} has {} connections open (limits.max_connections_per_client); "
              "refusing more with 429",
              key, cfg->lim.max_connections_per_client);
        }
        asio::co_spawn(socket.get_executor(),
                       refuse_connection(std::move(socket), client_limit_reply), asio::detached);
        continue;
      }
      spawn_session(std::move(socket), state_, limiter_slot(state_.per_client, std::move(key)));
    }
  }

  static constexpr std::string_view busy_reply =
      "HTTP/1.1 503 Service Unavailable\r\nServer: sbx-proxy\r\nX-Proxy-Error: "
      "connection-limit\r\nContent-Type: text/plain\r\nContent-Length: 45\r\n"
      "Connection: close\r\n\r\nsbx-proxy: too many connections; retry later\n";
  static constexpr std::string_view client_limit_reply =
      "HTTP/1.1 429 Too Many Requests\r\nServer: sbx-proxy\r\nX-Proxy-Error: "
      "connection-limit\r\nContent-Type: text/plain\r\nContent-Length: 63\r\n"
      "Connection: close\r\n\r\nsbx-proxy: too many connections from this address; retry later\n";

  // Over a cap: an answer the client can read. Closing with its request unread would send RST
  // and destroy the answer, so half-close and drain briefly first (bounded in time and bytes).
  static asio::awaitable<void> refuse_connection(tcp::socket socket, std::string_view reply) {
    beast::tcp_stream stream(std::move(socket));
    stream.expires_after(std::chrono::seconds(2));
    auto [ec, n] = co_await asio::async_write(stream, asio::buffer(reply), use_nothrow);
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
    std::array<char, 4096> sink{};
    std::size_t drained = 0;
    while (!ec && drained < 64 * 1024) {
      auto [rec, rn] = co_await stream.async_read_some(asio::buffer(sink), use_nothrow);
      drained += rn;
      ec = rec;
    }
    stream.socket().close(ignored);
  }

  void wait_signal() {
    signals_.async_wait([this](error_code ec, int sig) {
      if (ec) return;
      if (sig == SIGHUP) {
        reload("SIGHUP");
        wait_signal();
        return;
      }
      spdlog::info("{} received: draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
      begin_shutdown();
    });
  }

  void begin_shutdown() {
    if (shutting_down_) return;
    shutting_down_ = true;
    state_.draining = true;
    asio::post(*io_.front(), [this] {
      error_code ignored;
      acceptor_->close(ignored);
    });
    for (auto& ctx : io_)
      asio::post(*ctx, [] { drain_sessions_on_this_thread(); });
    shutdown_deadline_ = clock::now() + state_.settings.load()->lim.shutdown_grace;
    wait_for_drain();
  }

  void wait_for_drain() {
    if (state_.counters.active_connections.load() == 0) return finish_shutdown();
    if (clock::now() >= shutdown_deadline_) {
      if (!forced_) {
        forced_ = true;
        spdlog::warn("grace period over: closing {} connections",
                     state_.counters.active_connections.load());
        for (auto& ctx : io_)
          asio::post(*ctx, [] { force_close_sessions_on_this_thread(); });
        shutdown_deadline_ = clock::now() + std::chrono::seconds(2);
      } else {
        return finish_shutdown();
      }
    }
    drain_timer_.expires_after(std::chrono::milliseconds(20));
    drain_timer_.async_wait([this](error_code ec) {
      if (!ec) wait_for_drain();
    });
  }

  void finish_shutdown() {
    signals_.cancel();
    poll_timer_.cancel();
    control_->stop();
  }

  void schedule_poll() {
    poll_timer_.expires_after(rules_poll_interval);
    poll_timer_.async_wait([this](error_code ec) {
      if (ec || shutting_down_) return;
      try {
        if (db_.rules_version() != rules_version_) reload_rules();
      } catch (const std::exception& e) {
        spdlog::error("cannot read rules ({}); keeping the rules in force", e.what());
      }
      if (++polls_ % secrets_poll_every == 0) {
        refresh_secrets("poll");
        // Heap freed after a burst (thousands of tunnels, many intercepted connections) stays in
        // glibc's per-thread arenas otherwise; hand the free pages back to the system.
        malloc_trim(0);
      }
      schedule_poll();
    });
  }

  void reload_rules() {
    const auto version = db_.rules_version();
    auto rules = std::make_shared<const policy::rule_set>(db_.load_rules());
    auto sandboxes = load_sandboxes(db_);
    state_.rules.store(rules);
    state_.sandboxes.store(sandboxes);
    rules_version_ = version;
    spdlog::info("rules reloaded: {} rules, {} sandboxes", rules->rules().size(),
                 sandboxes->token_hashes.size());
  }

  // Blocking (D-Bus or disk): runs on the control thread only.
  json refresh_secrets(std::string_view why) {
    try {
      const auto before = credentials_->size();
      credentials_->refresh();
      if (why != "poll" || before != credentials_->size()) {
        spdlog::info("credentials loaded from the {} store: {} secrets ({})",
                     credentials_->store_kind(), credentials_->size(), why);
      }
      return json{{"ok", true}, {"secrets", credentials_->size()}};
    } catch (const std::exception& e) {
      spdlog::error("cannot read secrets ({}); keeping the ones loaded before: {}", why, e.what());
      return json{{"ok", false}, {"error", e.what()}};
    }
  }

  json reload(std::string_view why) {
    json out{{"ok", true}};
    try {
      auto fresh = config::load(opt_.config_file);
      if (fresh.listen != state_.settings.load()->listen) {
        spdlog::warn("config reload: a new listen address takes effect after a restart");
      }
      fresh.listen = state_.settings.load()->listen;
      const auto line = prepare_settings(fresh);
      if (why != "start") spdlog::info("config reloaded ({}): {}", why, line);
      store_settings(std::move(fresh));
    } catch (const std::exception& e) {
      spdlog::error("config reload ({}) failed, keeping the current config: {}", why, e.what());
      out = json{{"ok", false}, {"error", e.what()}};
    }
    try {
      reload_rules();
    } catch (const std::exception& e) {
      spdlog::error("rule reload ({}) failed, keeping the rules in force: {}", why, e.what());
      out = json{{"ok", false}, {"error", e.what()}};
    }
    out["rules"] = state_.rules.load()->rules().size();
    return out;
  }

  // What the config says, made what the proxy runs with: the anonymous mode in force, and the
  // connection caps sized from the open-file limit. Returns the caps line for the log.
  std::string prepare_settings(config::settings& s) const {
    s.anonymous = effective_anonymous(s.anonymous, loopback_listener_, opt_.allow_anonymous);
    return config::fit_connection_caps(s.lim, open_files_);
  }

  void store_settings(config::settings s) {
    state_.settings.store(std::make_shared<const config::settings>(std::move(s)));
  }

  json status_json() {
    const auto& c = state_.counters;
    return json{
        {"running", true},
        {"version", version_text},
        {"pid", ::getpid()},
        {"listen", state_.listen_address},
        {"anonymous", std::string(config::to_string(state_.settings.load()->anonymous))},
        {"uptime_s",
         std::chrono::duration_cast<std::chrono::seconds>(clock::now() - state_.started).count()},
        {"threads", threads_},
        {"state_dir", opt_.state_dir.string()},
        {"rules", state_.rules.load()->rules().size()},
        {"active_connections", c.active_connections.load()},
        {"active_tunnels", c.active_tunnels.load()},
        {"connections_total", c.connections_total.load()},
        {"requests_total", c.requests_total.load()},
        {"decisions_allow", c.decisions_allow.load()},
        {"decisions_deny", c.decisions_deny.load()},
        {"bytes_up", c.bytes_up.load()},
        {"bytes_down", c.bytes_down.load()},
        {"log_queue_depth", log_.queue_depth()},
        {"log_rows_written", log_.rows_written()},
        {"peak_rss_kib", peak_rss_kib()},
        {"keychain", std::string(credentials_->store_kind())},
        {"secrets", credentials_->size()},
        {"ca_fingerprint", server_tls_->authority()->fingerprint_sha256()},
        {"leaf_mints", server_tls_->leaves().mints()},
        {"leaf_cache_hits", server_tls_->leaves().hits()},
        {"credentials_injected", c.credentials_injected.load()},
        {"routes_intercept", c.routes_intercept.load()},
        {"routes_tunnel", c.routes_tunnel.load()},
        {"routes_forward", c.routes_forward.load()},
    };
  }

  std::string metrics_text() { return prometheus_text(state_, log_); }

  json decisions_json(std::string_view target) {
    const auto f = decision_filter_from_query(target);
    json rows = json::array();
    for (const auto& r : db_.query_decisions(f))
      rows.push_back(store::decision_json(r));
    return rows;
  }

  control_reply handle_control(std::string_view method, std::string_view target,
                               std::string_view /*body*/) {
    const auto path = target.substr(0, target.find('?'));
    if (method == "GET" && path == "/v1/status")
      return {200, "application/json", status_json().dump()};
    if (method == "POST" && path == "/v1/reload")
      return {200, "application/json", reload("control socket").dump()};
    if (method == "GET" && path == "/v1/decisions") {
      log_.flush();  // a reader asking now expects what happened until now
      try {
        return {200, "application/json", decisions_json(target).dump()};
      } catch (const std::exception& e) {
        return {400, "application/json", json{{"error", e.what()}}.dump()};
      }
    }
    if (method == "POST" && path == "/v1/secrets/changed") {
      return {200, "application/json", refresh_secrets("changed by the CLI").dump()};
    }
    if (method == "POST" && path == "/v1/ca/rotated") {
      try {
        server_tls_->rotate(certs::certificate_authority::load(opt_.state_dir));
        spdlog::info("CA rotated: {}", server_tls_->authority()->fingerprint_sha256());
        return {200, "application/json",
                json{{"ok", true}, {"fingerprint", server_tls_->authority()->fingerprint_sha256()}}
                    .dump()};
      } catch (const std::exception& e) {
        return {500, "application/json", json{{"ok", false}, {"error", e.what()}}.dump()};
      }
    }
    if (method == "GET" && path == "/metrics") {
      return {200, "text/plain; version=0.0.4", metrics_text()};
    }
    return {404, "application/json",
            json{{"error", "unknown endpoint"},
                 {"endpoints",
                  {"GET /v1/status", "POST /v1/reload", "GET /v1/decisions", "GET /metrics",
                   "POST /v1/secrets/changed", "POST /v1/ca/rotated"}}}
                .dump()};
  }

  run_options opt_;
  std::uint64_t open_files_;
  bool loopback_listener_ = true;
  clock::time_point last_client_limit_log_{};
  unsigned threads_;
  std::vector<std::unique_ptr<asio::io_context>> io_;
  std::optional<tcp::acceptor> acceptor_;
  store::state_db db_;  // used only on the control thread
  store::decision_log log_;
  proxy_state state_;
  asio::io_context control_ctx_{1};
  asio::signal_set signals_;
  asio::steady_timer poll_timer_;
  asio::steady_timer drain_timer_;
  std::optional<control_server> control_;
  std::shared_ptr<certs::server_tls_context> server_tls_;
  std::shared_ptr<certs::upstream_tls_context> upstream_tls_;
  std::shared_ptr<credential_cache> credentials_;
  std::optional<interception> intercept_;
  std::uint64_t polls_ = 0;
  std::int64_t rules_version_ = 0;
  bool shutting_down_ = false;
  bool forced_ = false;
  clock::time_point shutdown_deadline_;
};

}  // namespace

int run_proxy(const run_options& options) {
  setup_logging();
  // SIGTERM/SIGINT/SIGHUP go to asio::signal_set on the control thread. SIGPIPE is ignored: a
  // peer closing mid-write is an error code on the data path, not a reason to die.
  std::signal(SIGPIPE, SIG_IGN);
  // The process holds API keys in memory: no core dumps, and no ptrace attach by other processes
  // of the same user.
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  tune_allocator();
  runtime rt(options, raise_open_file_limit());
  return rt.run();
}

}  // namespace sbx::proxy
