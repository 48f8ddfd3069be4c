#include "proxy/detail/identity.hpp"
#include "proxy/detail/upstream.hpp"
#include "proxy/http_checks.hpp"

#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <openssl/evp.h>
#include <spdlog/spdlog.h>

#include "policy/store/sandbox_token.hpp"

namespace sbx::proxy::detail {
namespace {

// Longest Basic credentials accepted: a sandbox name (63) and a token (43) need far less.
constexpr std::size_t max_credentials_length = 4096;
constexpr std::size_t max_sandbox_name_length = 63;

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = static_cast<unsigned char>(a[i]), y = static_cast<unsigned char>(b[i]);
    if (std::tolower(x) != std::tolower(y)) return false;
  }
  return true;
}

// Decodes standard base64 (RFC 4648 §4) as used by Basic authentication (RFC 7617).
std::optional<std::string> decode_base64(std::string_view in) {
  if (in.empty() || in.size() % 4 != 0 || in.size() > max_credentials_length) return std::nullopt;
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

// A claimed name goes into the row only when it could be a sandbox name: the client chose it, so
// anything else (control characters, a pasted token) stays out of the log.
std::string loggable_name(std::string_view name) {
  if (name.empty() || name.size() > max_sandbox_name_length) return {};
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!ok) return {};
  }
  return std::string(name);
}

bool is_v4_mapped(const policy::ip_address& a) {
  if (!a.v6) return false;
  for (int i = 0; i < 10; ++i)
    if (a.bytes[i] != 0) return false;
  return a.bytes[10] == 0xff && a.bytes[11] == 0xff;
}

policy::ip_address unmapped(const policy::ip_address& a) {
  if (!is_v4_mapped(a)) return a;
  policy::ip_address out;
  std::copy(a.bytes.begin() + 12, a.bytes.end(), out.bytes.begin());
  return out;
}

// One NETLINK_SOCK_DIAG socket per thread: opened on first use, closed with the thread.
class diag_socket {
 public:
  diag_socket() = default;
  diag_socket(const diag_socket&) = delete;
  diag_socket& operator=(const diag_socket&) = delete;
  ~diag_socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  int get(std::string& problem) {
    if (fd_ < 0) {
      fd_ = ::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
      if (fd_ < 0) problem = fmt::format("netlink sock_diag unavailable: {}", std::strerror(errno));
    }
    return fd_;
  }
  std::uint32_t next_sequence() { return ++sequence_; }

 private:
  int fd_ = -1;
  std::uint32_t sequence_ = 0;
};

thread_local diag_socket diag;

void copy_address(const policy::ip_address& a, __be32 (&out)[4]) {
  std::memcpy(out, a.bytes.data(), a.v6 ? 16 : 4);
}

}  // namespace

bool is_loopback(const policy::ip_address& a) {
  const auto u = unmapped(a);
  if (!u.v6) return u.bytes[0] == 127;
  for (int i = 0; i < 15; ++i)
    if (u.bytes[i] != 0) return false;
  return u.bytes[15] == 1;
}

std::string client_group(const policy::ip_address& a) {
  const auto u = unmapped(a);
  if (!u.v6 || is_loopback(u)) return u.to_string();
  policy::ip_network net{.base = u, .prefix = 64};
  std::fill(net.base.bytes.begin() + 8, net.base.bytes.end(), std::uint8_t{0});
  return net.to_string();
}

std::optional<peer_info> make_peer_info(const tcp::socket& socket) {
  error_code ec;
  const auto remote = socket.remote_endpoint(ec);
  if (ec) return std::nullopt;
  const auto local = socket.local_endpoint(ec);
  if (ec) return std::nullopt;
  peer_info p;
  p.address = to_policy_address(remote.address());
  p.port = remote.port();
  p.local_address = to_policy_address(local.address());
  p.local_port = local.port();
  return p;
}

std::optional<uid_t> tcp_socket_owner(const policy::ip_address& local_in, std::uint16_t local_port,
                                      const policy::ip_address& remote_in,
                                      std::uint16_t remote_port, std::string& problem) {
  // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; on the wire, and in the kernel's
  // table, the connection is IPv4.
  const auto local = unmapped(local_in);
  const auto remote = unmapped(remote_in);
  if (local.v6 != remote.v6) {
    problem = "address families of the two ends differ";
    return std::nullopt;
  }
  const int fd = diag.get(problem);
  if (fd < 0) return std::nullopt;

  struct request {
    nlmsghdr header;
    inet_diag_req_v2 body;
  } req{};
  req.header.nlmsg_len = sizeof(req);
  req.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  // No NLM_F_DUMP: an exact lookup of one socket by its 4-tuple (inet_diag_find_one_icsk).
  req.header.nlmsg_flags = NLM_F_REQUEST;
  req.header.nlmsg_seq = diag.next_sequence();
  req.body.sdiag_family = local.v6 ? AF_INET6 : AF_INET;
  req.body.sdiag_protocol = IPPROTO_TCP;
  req.body.idiag_states = ~0U;
  req.body.id.idiag_sport = htons(local_port);
  req.body.id.idiag_dport = htons(remote_port);
  copy_address(local, req.body.id.idiag_src);
  copy_address(remote, req.body.id.idiag_dst);
  req.body.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
  req.body.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;

  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  if (::sendto(fd, &req, sizeof(req), MSG_DONTWAIT, reinterpret_cast<const sockaddr*>(&kernel),
               sizeof(kernel)) < 0) {
    problem = fmt::format("netlink sock_diag query failed: {}", std::strerror(errno));
    return std::nullopt;
  }
  // The kernel handled the request inside sendto and queued its answer; a reply of an earlier,
  // abandoned query (another sequence number) is skipped.
  alignas(nlmsghdr) std::array<char, 8192> buf{};
  for (;;) {
    const auto n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
    if (n < 0) {
      problem = errno == EAGAIN || errno == EWOULDBLOCK
                    ? std::string("netlink sock_diag gave no answer")
                    : fmt::format("netlink sock_diag read failed: {}", std::strerror(errno));
      return std::nullopt;
    }
    auto len = static_cast<unsigned>(n);
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, len);
         h = NLMSG_NEXT(h, len)) {
      if (h->nlmsg_seq != req.header.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        problem = err->error == -ENOENT
                      ? std::string("no such socket (the client is gone, or not on this host)")
                      : fmt::format("netlink sock_diag: {}", std::strerror(-err->error));
        return std::nullopt;
      }
      if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY ||
          h->nlmsg_len < NLMSG_LENGTH(sizeof(inet_diag_msg))) {
        continue;
      }
      const auto* msg = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
      // The lookup may fall back to a listening socket on that port; only the connected socket
      // with exactly this 4-tuple is the client.
      if (msg->id.idiag_sport != req.body.id.idiag_sport ||
          msg->id.idiag_dport != req.body.id.idiag_dport ||
          std::memcmp(msg->id.idiag_dst, req.body.id.idiag_dst, local.v6 ? 16 : 4) != 0) {
        problem = "the kernel answered for another socket";
        return std::nullopt;
      }
      return static_cast<uid_t>(msg->idiag_uid);
    }
  }
}

std::optional<basic_credentials> parse_basic_credentials(std::string_view value) {
  static constexpr std::string_view scheme = "basic";
  value = trim_ows(value);
  if (value.size() <= scheme.size() || !iequals(value.substr(0, scheme.size()), scheme) ||
      (value[scheme.size()] != ' ' && value[scheme.size()] != '\t')) {
    return std::nullopt;
  }
  auto decoded = decode_base64(trim_ows(value.substr(scheme.size())));
  if (!decoded) return std::nullopt;
  const auto colon = decoded->find(':');
  if (colon == std::string::npos) return std::nullopt;
  return basic_credentials{decoded->substr(0, colon), decoded->substr(colon + 1)};
}

bool sandbox_token_valid(const sandbox_directory& dir, std::string_view name,
                         std::string_view token) {
  const std::string* hash = nullptr;
  if (auto it = dir.token_hashes.find(std::string(name)); it != dir.token_hashes.end()) {
    hash = &it->second;
  }
  // Compare against a fixed hash when the name is unknown, so timing does not reveal which
  // sandbox names exist.
  static const std::string unknown_hash(64, '0');
  return store::sandbox_token_matches(token, hash ? *hash : unknown_hash) && hash != nullptr;
}

config::anonymous_access effective_anonymous(config::anonymous_access configured,
                                             bool loopback_listener, bool allow_anonymous_flag) {
  if (allow_anonymous_flag) return config::anonymous_access::any;
  if (!loopback_listener) return config::anonymous_access::none;
  return configured;
}

identity_result resolve_identity(const proxy_state& st, peer_info& peer,
                                 std::string_view proxy_authorization) {
  static const sandbox_directory empty_directory;
  const auto dir_ptr = st.sandboxes.load();
  const auto& dir = dir_ptr ? *dir_ptr : empty_directory;
  identity_result out;
  const std::string* bound = dir.bound_sandbox(peer.address);
  if (bound) out.sandbox = *bound;

  auto refuse = [&](std::string text, std::string reason, std::string claimed = {}) {
    out.refusal = identity_refusal{
        .text = std::move(text), .reason = std::move(reason), .claimed = std::move(claimed)};
    return out;
  };

  if (!trim_ows(proxy_authorization).empty()) {
    auto credentials = parse_basic_credentials(proxy_authorization);
    if (!credentials) {
      return refuse(
          "sbx-proxy: Proxy-Authorization is not Basic credentials (NAME:TOKEN). Use the proxy "
          "URL printed by `sbx sandbox env NAME`.",
          "invalid sandbox credentials (not Basic NAME:TOKEN)");
    }
    auto claimed = loggable_name(credentials->name);
    const auto claimed_text = claimed.empty() ? std::string("an unreadable sandbox name")
                                              : fmt::format("sandbox '{}'", claimed);
    if (!sandbox_token_valid(dir, credentials->name, credentials->token)) {
      return refuse(
          "sbx-proxy: unknown sandbox or wrong token in Proxy-Authorization. Use the proxy URL "
          "printed by `sbx sandbox env NAME`.",
          fmt::format("invalid sandbox credentials for {}", claimed_text), claimed);
    }
    if (bound && credentials->name != *bound) {
      // The address says who this is; credentials of another sandbox cannot change it.
      return refuse(
          "sbx-proxy: this client address belongs to another sandbox (sbx sandbox add --source); "
          "its traffic cannot use these credentials.",
          fmt::format("credentials of {} from a source address of sandbox '{}'", claimed_text,
                      *bound),
          claimed);
    }
    out.sandbox = credentials->name;
    return out;
  }
  if (bound) return out;

  const auto settings = st.settings.load();
  const auto mode = settings ? settings->anonymous : config::anonymous_access::none;
  switch (mode) {
    case config::anonymous_access::any:
      return out;
    case config::anonymous_access::none:
      return refuse(
          "sbx-proxy: this proxy requires sandbox credentials (http://NAME:TOKEN@host:port); see "
          "`sbx sandbox add` and `sbx sandbox env NAME`.",
          "sandbox credentials required (anonymous: none)");
    case config::anonymous_access::same_user:
      break;
  }
  if (!peer.same_user) {
    if (!is_loopback(peer.address)) {
      peer.same_user = false;
      peer.owner_problem = "not over loopback";
    } else {
      auto uid = tcp_socket_owner(peer.address, peer.port, peer.local_address, peer.local_port,
                                  peer.owner_problem);
      if (uid) peer.owner_uid = *uid;
      peer.same_user = uid && *uid == ::geteuid();
      if (!uid) {
        // Fail closed, and say so once: without sock_diag only tokens work.
        static std::atomic<bool> warned{false};
        if (!warned.exchange(true)) {
          spdlog::warn(
              "cannot tell which user owns a client socket ({}); requests without "
              "sandbox credentials are refused",
              peer.owner_problem);
        }
      }
    }
  }
  if (*peer.same_user) return out;
  const auto why = peer.owner_uid >= 0
                       ? fmt::format("client socket owned by uid {}, not the proxy's uid {}",
                                     peer.owner_uid, ::geteuid())
                       : peer.owner_problem;
  return refuse(
      "sbx-proxy: without sandbox credentials this proxy serves only its own user's programs on "
      "this machine. Use the proxy URL printed by `sbx sandbox env NAME` "
      "(http://NAME:TOKEN@host:port).",
      fmt::format("sandbox credentials required (anonymous: same-user; {})", why));
}

}  // namespace sbx::proxy::detail
