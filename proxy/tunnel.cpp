#include "proxy/detail/tunnel.hpp"

#include <array>
#include <optional>
#include <vector>

#include <fmt/format.h>

#include "proxy/client_hello.hpp"

namespace sbx::proxy::detail {

using namespace asio::experimental::awaitable_operators;

namespace relay_detail {

asio::awaitable<void> watchdog(const clock::time_point& last, std::chrono::milliseconds idle,
                               bool& fired) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  for (;;) {
    const auto deadline = last + idle;
    if (clock::now() >= deadline) {
      fired = true;
      co_return;
    }
    timer.expires_at(deadline);
    auto [ec] = co_await timer.async_wait(use_nothrow);
    if (ec) co_return;  // cancelled: the relay finished first
  }
}

namespace {

// Large relay buffers are lent per I/O thread while bytes flow and returned when a read comes back
// small: a tunnel that sits idle (the usual state of thousands of agent connections) holds only
// its small buffer per direction.
class buffer_pool {
 public:
  std::unique_ptr<char[]> take() {
    if (free_.empty()) return std::make_unique<char[]>(tunnel_large_buffer);
    auto b = std::move(free_.back());
    free_.pop_back();
    return b;
  }
  void give_back(std::unique_ptr<char[]> b) {
    if (free_.size() < max_free) free_.push_back(std::move(b));
  }

 private:
  static constexpr std::size_t max_free = 64;
  std::vector<std::unique_ptr<char[]>> free_;
};

thread_local buffer_pool large_buffers;

}  // namespace
}  // namespace relay_detail

borrowed_buffer::borrowed_buffer() : data_(relay_detail::large_buffers.take()) {}

borrowed_buffer::~borrowed_buffer() {
  if (data_) relay_detail::large_buffers.give_back(std::move(data_));
}

namespace relay_detail {
namespace {

// The raw-socket pump: the same loop as pump() but on tcp::socket, where shutdown is direct. It
// reads into a small buffer; a read that fills it means bytes are flowing, so the next reads use
// a large one until a read fits in the small one again.
asio::awaitable<void> pump_socket(tcp::socket& from, tcp::socket& to, std::uint64_t& total,
                                  clock::time_point& last, tcp::socket& a, tcp::socket& b) {
  std::array<char, tunnel_small_buffer> small;
  std::optional<borrowed_buffer> large;
  for (;;) {
    char* data = large ? large->get() : small.data();
    const std::size_t size = large ? tunnel_large_buffer : small.size();
    auto [ec, n] = co_await from.async_read_some(asio::buffer(data, size), use_nothrow);
    if (n > 0) {
      last = clock::now();
      auto [wec, wn] = co_await asio::async_write(to, asio::buffer(data, n), use_nothrow);
      total += wn;
      if (wec) {
        error_code ignored;
        a.close(ignored);
        b.close(ignored);
        co_return;
      }
      if (!large && n == size) {
        large.emplace();
      } else if (large && n <= small.size()) {
        large.reset();
      }
    }
    if (ec) {
      error_code ignored;
      if (ec == asio::error::eof) {
        to.shutdown(tcp::socket::shutdown_send, ignored);
      } else {
        a.close(ignored);
        b.close(ignored);
      }
      co_return;
    }
  }
}

void close_both(tcp::socket& a, tcp::socket& b) {
  error_code ignored;
  a.close(ignored);
  b.close(ignored);
}

// Holds back the client's first flight until it is known not to be TLS or its ClientHello is
// complete and accepted, then sends it upstream. True when the relay goes on with pump_socket.
// The flight buffer lives only in this frame: after it, the direction holds what pump_socket
// holds, as an unchecked tunnel does.
asio::awaitable<bool> relay_first_flight(tcp::socket& client, tcp::socket& upstream,
                                         std::string_view initial, std::uint64_t& total,
                                         clock::time_point& last, const first_flight_check& check,
                                         std::chrono::milliseconds timeout,
                                         std::optional<policy::decision>& refused) {
  using status = client_hello_result::status;
  std::string flight(initial);
  asio::steady_timer deadline(co_await asio::this_coro::executor);
  bool deadline_set = false;
  bool client_eof = false;
  auto refuse = [&](std::string reason) {
    refused = policy::decision{.act = policy::action::deny, .reason = std::move(reason)};
    close_both(client, upstream);
  };
  for (;;) {
    auto hello = parse_client_hello(flight);
    if (hello.state == status::not_tls) break;
    if (hello.state == status::ok) {
      auto no = check(hello.sni ? std::optional<std::string_view>(*hello.sni) : std::nullopt);
      if (no) {
        refused = std::move(no);
        close_both(client, upstream);
        co_return false;
      }
      break;
    }
    if (hello.state == status::malformed) {
      refuse("TLS ClientHello refused: " + hello.reason);
      co_return false;
    }
    // need_more
    if (client_eof) {
      if (flight.empty()) {  // the client sent nothing at all: pass its half-close on
        error_code ignored;
        upstream.shutdown(tcp::socket::shutdown_send, ignored);
        co_return false;
      }
      refuse(fmt::format("TLS ClientHello truncated: the client closed after {} bytes",
                         flight.size()));
      co_return false;
    }
    // The deadline runs from the flight's first byte: a client that waits for the server to
    // speak first (SMTP) has sent nothing and is only subject to the idle timeout.
    if (!flight.empty() && !deadline_set) {
      deadline.expires_after(timeout);
      deadline_set = true;
    }
    const std::size_t old = flight.size();
    flight.resize(old + tunnel_small_buffer);
    auto into = asio::buffer(flight.data() + old, tunnel_small_buffer);
    error_code ec;
    std::size_t n = 0;
    if (deadline_set) {
      auto r =
          co_await (client.async_read_some(into, use_nothrow) || deadline.async_wait(use_nothrow));
      if (r.index() == 1) {
        flight.resize(old);
        refuse(fmt::format("TLS ClientHello not complete within {} ms ({} bytes received)",
                           timeout.count(), flight.size()));
        co_return false;
      }
      std::tie(ec, n) = std::get<0>(r);
    } else {
      std::tie(ec, n) = co_await client.async_read_some(into, use_nothrow);
    }
    flight.resize(old + n);
    if (n > 0) last = clock::now();
    if (ec == asio::error::eof) {
      client_eof = true;
    } else if (ec) {
      close_both(client, upstream);
      co_return false;
    }
  }
  auto [ec, n] = co_await asio::async_write(upstream, asio::buffer(flight), use_nothrow);
  total += n;
  if (ec) {
    close_both(client, upstream);
    co_return false;
  }
  if (client_eof) {
    error_code ignored;
    upstream.shutdown(tcp::socket::shutdown_send, ignored);
    co_return false;
  }
  co_return true;
}

asio::awaitable<void> checked_pump(tcp::socket& client, tcp::socket& upstream,
                                   std::string_view initial, std::uint64_t& total,
                                   clock::time_point& last, const first_flight_check& check,
                                   std::chrono::milliseconds timeout,
                                   std::optional<policy::decision>& refused) {
  const bool go_on =
      co_await relay_first_flight(client, upstream, initial, total, last, check, timeout, refused);
  if (go_on) co_await pump_socket(client, upstream, total, last, client, upstream);
}

}  // namespace
}  // namespace relay_detail

asio::awaitable<relay_totals> run_tunnel(tcp::socket& client, tcp::socket& upstream,
                                         std::string_view initial_up,
                                         std::chrono::milliseconds idle_timeout,
                                         const first_flight_check& check,
                                         std::chrono::milliseconds first_flight_timeout) {
  relay_totals totals;
  auto last = relay_detail::clock::now();
  co_await ((relay_detail::checked_pump(client, upstream, initial_up, totals.up, last, check,
                                        first_flight_timeout, totals.refused) &&
             relay_detail::pump_socket(upstream, client, totals.down, last, client, upstream)) ||
            relay_detail::watchdog(last, idle_timeout, totals.idle_timeout));
  if (totals.idle_timeout) relay_detail::close_both(client, upstream);
  co_return totals;
}

namespace {

// Host names compare without case and without a trailing dot (RFC 4343, RFC 1034 §3.1).
std::string comparable_host(std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  std::string out(host);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

}  // namespace

first_flight_check sni_policy_check(std::shared_ptr<const policy::rule_set> rules,
                                    std::string sandbox, std::string connect_host,
                                    std::uint16_t port) {
  auto comparable = comparable_host(connect_host);
  return [rules = std::move(rules), sandbox = std::move(sandbox),
          comparable = std::move(comparable), host = std::move(connect_host),
          port](std::optional<std::string_view> sni) -> std::optional<policy::decision> {
    if (!sni || *sni == comparable) return std::nullopt;
    // By name only: the connection goes to the CONNECT host's checked address whatever the SNI
    // says, so the SNI is never resolved (that would also leak it to DNS).
    auto d = rules->decide({.sandbox = sandbox, .host = *sni, .port = port});
    if (d.allowed()) return std::nullopt;
    d.reason = fmt::format("SNI {} does not match CONNECT host {}: {}", *sni, host, d.reason);
    return d;
  };
}

}  // namespace sbx::proxy::detail
