#include "proxy/detail/upstream.hpp"

#include <fmt/format.h>

namespace sbx::proxy::detail {

using namespace asio::experimental::awaitable_operators;

policy::ip_address to_policy_address(const asio::ip::address& a) {
  policy::ip_address out;
  if (a.is_v4()) {
    const auto b = a.to_v4().to_bytes();
    std::copy(b.begin(), b.end(), out.bytes.begin());
  } else {
    out.v6 = true;
    out.bytes = a.to_v6().to_bytes();
  }
  return out;
}

namespace {

struct resolved {
  std::vector<tcp::endpoint> endpoints;
  std::string error;  // set when resolution failed
  bool timed_out = false;
};

asio::awaitable<resolved> resolve(const config::settings& cfg, std::string_view host,
                                  std::uint16_t port) {
  resolved out;
  if (auto over = cfg.resolve_override(host, port)) {
    error_code ec;
    auto addr = asio::ip::make_address(over->ip, ec);
    if (ec) {
      out.error = fmt::format("bad resolve override for {}:{}", host, port);
      co_return out;
    }
    out.endpoints.emplace_back(addr, over->port);
    co_return out;
  }
  {
    error_code ec;
    auto literal = asio::ip::make_address(std::string(host), ec);
    if (!ec) {
      out.endpoints.emplace_back(literal, port);
      co_return out;
    }
  }
  auto ex = co_await asio::this_coro::executor;
  tcp::resolver resolver(ex);
  asio::steady_timer timer(ex);
  timer.expires_after(cfg.lim.connect_timeout);
  auto r = co_await (resolver.async_resolve(std::string(host), std::to_string(port), use_nothrow) ||
                     timer.async_wait(use_nothrow));
  if (r.index() == 1) {
    out.timed_out = true;
    out.error = fmt::format("DNS lookup of {} timed out", host);
    co_return out;
  }
  auto& [ec, results] = std::get<0>(r);
  if (ec) {
    out.error = fmt::format("DNS lookup of {} failed: {}", host, ec.message());
    co_return out;
  }
  for (const auto& e : results)
    out.endpoints.push_back(e.endpoint());
  if (out.endpoints.empty()) out.error = fmt::format("DNS lookup of {} returned no address", host);
  co_return out;
}

}  // namespace

asio::awaitable<upstream_choice> choose_upstream(const policy::rule_set& rules,
                                                 const config::settings& cfg, policy::facts f) {
  upstream_choice out;
  using outcome = upstream_result::outcome;

  // Decide by name first: a name is resolved only when a name rule allows it (a CIDR allow alone
  // never allows a name, see rule_set), so a denied name never reaches a resolver — the lookup
  // would itself carry the name, and whatever a sandbox hid in it, out. An IP literal is decided
  // here on its own address, blocked ranges included.
  f.address.reset();
  auto by_name = rules.decide(f);
  if (!by_name.allowed()) {
    out.result = by_name.blocked_address ? outcome::blocked_address : outcome::denied;
    out.decision = std::move(by_name);
    co_return out;
  }

  auto res = co_await resolve(cfg, f.host, f.port);
  if (!res.error.empty()) {
    out.result = res.timed_out ? outcome::timeout : outcome::dns_failed;
    out.decision = std::move(by_name);
    out.detail = std::move(res.error);
    co_return out;
  }

  std::optional<policy::decision> refusal;
  for (const auto& ep : res.endpoints) {
    f.address = to_policy_address(ep.address());
    auto d = rules.decide(f);
    if (d.allowed()) {
      out.allowed.push_back(ep);
      out.decisions.push_back(std::move(d));
    } else if (!refusal || (d.blocked_address && !refusal->blocked_address)) {
      refusal = std::move(d);
    }
  }
  if (out.allowed.empty()) {
    out.result = refusal && refusal->blocked_address ? outcome::blocked_address : outcome::denied;
    out.decision = refusal ? std::move(*refusal) : std::move(by_name);
  }
  co_return out;
}

asio::awaitable<void> connect_upstream(upstream_choice& choice, const config::settings& cfg,
                                       const policy::facts& f, upstream_result& out) {
  using outcome = upstream_result::outcome;
  if (!choice.ok()) {
    out.result = choice.result;
    out.decision = std::move(choice.decision);
    out.detail = std::move(choice.detail);
    co_return;
  }
  out.stream.expires_after(cfg.lim.connect_timeout);
  auto [ec, ep] = co_await out.stream.async_connect(choice.allowed, use_nothrow);
  out.stream.expires_never();
  if (ec) {
    out.result = ec == beast::error::timeout ? outcome::timeout : outcome::unreachable;
    out.decision = std::move(choice.decisions.front());
    out.detail = ec == beast::error::timeout
                     ? fmt::format("connecting to {}:{} timed out", f.host, f.port)
                     : fmt::format("cannot connect to {}:{}: {}", f.host, f.port, ec.message());
    co_return;
  }
  std::size_t index = 0;
  while (index < choice.allowed.size() && choice.allowed[index] != ep)
    ++index;
  out.decision = std::move(choice.decisions[index < choice.allowed.size() ? index : 0]);
  out.address = to_policy_address(ep.address());
  out.endpoint = ep;
  out.stream.socket().set_option(tcp::no_delay(true), ec);
  out.result = outcome::connected;
}

asio::awaitable<upstream_result> open_upstream(const policy::rule_set& rules,
                                               const config::settings& cfg, policy::facts f) {
  auto choice = co_await choose_upstream(rules, cfg, f);
  upstream_result out(co_await asio::this_coro::executor);
  co_await connect_upstream(choice, cfg, f, out);
  co_return out;
}

}  // namespace sbx::proxy::detail
