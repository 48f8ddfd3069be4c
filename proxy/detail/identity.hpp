// Who a request comes from: a sandbox (by its --source address or its Proxy-Authorization token),
// nobody (anonymous: global rules, global secrets), or a refusal with 407.
//
//   peer_info peer = make_peer_info(socket).value();        // once per connection, at accept
//   auto id = resolve_identity(state, peer, req[http::field::proxy_authorization]);
//   if (!id.ok()) reply 407 with id.refusal->code/text, row.reason = id.refusal->reason
//   else row.sandbox = id.sandbox;                         // "" = no sandbox
//
// The order, which a sandbox cannot get around:
//   1. a connection from a sandbox's --source address is that sandbox; a valid token of the same
//      sandbox changes nothing, a token of another sandbox (or a bad one) is refused;
//   2. otherwise a valid token names the sandbox; a bad one is refused;
//   3. otherwise the request is anonymous, accepted as settings.anonymous says: `any`, `none`
//      (refused), or `same-user`: only over loopback from a socket owned by the proxy's own uid,
//      found with NETLINK_SOCK_DIAG (the kernel's socket table), not by reading /proc.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "policy/rule.hpp"
#include "proxy/detail/net.hpp"
#include "proxy/detail/state.hpp"

namespace sbx::proxy::detail {

// The two ends of one client connection, as the identity check needs them.
struct peer_info {
  policy::ip_address address;  // the client's
  std::uint16_t port = 0;
  policy::ip_address local_address;  // the listener's, as the client reached it
  std::uint16_t local_port = 0;
  // Whether the client's socket belongs to the proxy's own user: looked up the first time a
  // request without credentials needs it (mode same-user), then kept for the connection.
  std::optional<bool> same_user;
  std::int64_t owner_uid = -1;  // what the lookup found; -1 = not looked up or not found
  std::string owner_problem;    // why the lookup failed, for the row
};

// Both endpoints of an accepted socket; nullopt when the socket is already gone.
[[nodiscard]] std::optional<peer_info> make_peer_info(const tcp::socket& socket);

// True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
[[nodiscard]] bool is_loopback(const policy::ip_address& a);

// The client a connection counts against under limits.max_connections_per_client: its IPv4
// address (also when it arrives IPv4-mapped), or the /64 of an IPv6 address ("2001:db8:1:2::/64"),
// since one host is routinely given a whole /64 and could otherwise open each connection from
// another address; ::1 is itself.
[[nodiscard]] std::string client_group(const policy::ip_address& a);

// The uid that owns the TCP socket whose local end is `local` and whose remote end is `remote`
// (for the proxy's peer: local = the client's address:port, remote = the listener's), asked of
// the kernel with one NETLINK_SOCK_DIAG exact lookup (struct inet_diag_req_v2 carrying the
// 4-tuple). The kernel answers inside sendmsg, so the reply is read with MSG_DONTWAIT: the call
// never waits on anything but the kernel. One netlink socket per thread, opened on first use.
// nullopt with `problem` set when there is no such socket or netlink is unavailable.
[[nodiscard]] std::optional<uid_t> tcp_socket_owner(const policy::ip_address& local,
                                                    std::uint16_t local_port,
                                                    const policy::ip_address& remote,
                                                    std::uint16_t remote_port,
                                                    std::string& problem);

// Decoded `Proxy-Authorization: Basic base64(name:token)` (RFC 7617).
struct basic_credentials {
  std::string name;
  std::string token;
};
[[nodiscard]] std::optional<basic_credentials> parse_basic_credentials(std::string_view value);

// Whether `token` is the token of sandbox `name` in `dir`. Constant time in the token, and an
// unknown name costs the same as a known one, so timing reveals neither.
[[nodiscard]] bool sandbox_token_valid(const sandbox_directory& dir, std::string_view name,
                                       std::string_view token);

// A request refused for its identity: always 407 proxy-auth-required.
struct identity_refusal {
  int status = 407;
  std::string_view code = "proxy-auth-required";
  std::string text;     // for the client: what to do
  std::string reason;   // for the row: names the claimed sandbox, never a token
  std::string claimed;  // the sandbox name the credentials claimed ("" = none or unreadable)
};

struct identity_result {
  // The sandbox the request belongs to ("" = none). On a refusal: the sandbox the connection is
  // bound to by its source address, if any, for the row.
  std::string sandbox;
  std::optional<identity_refusal> refusal;
  [[nodiscard]] bool ok() const { return !refusal; }
};

// Decides the identity of one request from its connection and its Proxy-Authorization value
// (empty when absent). Reads st.sandboxes and st.settings->anonymous (the effective mode, see
// effective_anonymous). May fill peer.same_user (one netlink query per connection at most).
[[nodiscard]] identity_result resolve_identity(const proxy_state& st, peer_info& peer,
                                               std::string_view proxy_authorization);

// The anonymous mode in force: `--allow-anonymous` makes it `any`; a listener on a non-loopback
// address turns the config's mode into `none` without that flag (a config file alone never opens
// the global key to the network).
[[nodiscard]] config::anonymous_access effective_anonymous(config::anonymous_access configured,
                                                           bool loopback_listener,
                                                           bool allow_anonymous_flag);

}  // namespace sbx::proxy::detail
