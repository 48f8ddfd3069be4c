// Sandbox identity: the socket-owner lookup over NETLINK_SOCK_DIAG on real loopback sockets (ours,
// and, when run as root, another user's), Basic credentials, and the decision table of
// anonymous mode x credentials x source address.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>

#include <doctest/doctest.h>
#include <openssl/evp.h>

#include "policy/store/sandbox_token.hpp"
#include "proxy/detail/identity.hpp"

using namespace sbx::proxy::detail;
using sbx::config::anonymous_access;
using sbx::policy::ip_address;

namespace {

constexpr uid_t nobody_uid = 65534;

// A file descriptor closed on scope exit.
struct fd_guard {
  int fd = -1;
  explicit fd_guard(int f) : fd(f) {}
  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;
  ~fd_guard() {
    if (fd >= 0) ::close(fd);
  }
};

sockaddr_in loopback(std::uint16_t port, const char* ip = "127.0.0.1") {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

sockaddr_in name_of(int fd, bool peer) {
  sockaddr_in a{};
  socklen_t len = sizeof(a);
  if (peer) {
    ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len);
  } else {
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  }
  return a;
}

ip_address ip_of(const sockaddr_in& a) {
  ip_address out;
  std::memcpy(out.bytes.data(), &a.sin_addr, 4);
  return out;
}

// A listener on 127.0.0.1, port chosen by the kernel.
int listen_loopback() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  auto a = loopback(0);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0);
  REQUIRE(::listen(fd, 16) == 0);
  return fd;
}

int connect_to(const sockaddr_in& where, const char* from = nullptr) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (from) {
    auto src = loopback(0, from);
    ::bind(fd, reinterpret_cast<sockaddr*>(&src), sizeof(src));
  }
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&where), sizeof(where)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// What the proxy would ask about an accepted connection: the owner of the socket whose local end
// is the client's address and whose remote end is the listener.
std::optional<uid_t> owner_of_accepted(int accepted, std::string& problem) {
  auto client = name_of(accepted, true);
  auto server = name_of(accepted, false);
  return tcp_socket_owner(ip_of(client), ntohs(client.sin_port), ip_of(server),
                          ntohs(server.sin_port), problem);
}

}  // namespace

TEST_CASE("sock_diag finds our own uid for a loopback connection we opened") {
  fd_guard listener(listen_loopback());
  const auto where = name_of(listener.fd, false);
  fd_guard client(connect_to(where));
  REQUIRE(client.fd >= 0);
  fd_guard accepted(::accept(listener.fd, nullptr, nullptr));
  std::string problem;
  auto uid = owner_of_accepted(accepted.fd, problem);
  INFO(problem);
  REQUIRE(uid.has_value());
  CHECK(*uid == ::geteuid());

  SUBCASE("a 4-tuple with no socket is not found") {
    auto client_end = name_of(accepted.fd, true);
    std::string why;
    auto none = tcp_socket_owner(ip_of(client_end), static_cast<std::uint16_t>(1), ip_of(where),
                                 ntohs(where.sin_port), why);
    CHECK_FALSE(none.has_value());
    CHECK_FALSE(why.empty());
  }

  SUBCASE("the cost of one lookup") {
    auto client_end = name_of(accepted.fd, true);
    constexpr int rounds = 2000;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < rounds; ++i) {
      std::string p;
      REQUIRE(tcp_socket_owner(ip_of(client_end), ntohs(client_end.sin_port), ip_of(where),
                               ntohs(where.sin_port), p)
                  .has_value());
    }
    const auto us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
            .count() /
        rounds;
    MESSAGE("sock_diag owner lookup: " << us << " us per lookup (" << rounds << " rounds)");
    CHECK(us < 1000);  // a kernel table lookup, not a scan of /proc
  }
}

TEST_CASE("sock_diag finds another user's uid for a socket that user opened") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to open a socket as another user");
    return;
  }
  fd_guard listener(listen_loopback());
  const auto where = name_of(listener.fd, false);
  int ready[2];
  int done[2];
  REQUIRE(::pipe(ready) == 0);
  REQUIRE(::pipe(done) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The child: become nobody, connect, tell the parent, wait until it has looked.
    if (::setgid(nobody_uid) != 0 || ::setuid(nobody_uid) != 0) ::_exit(2);
    int fd = connect_to(where);
    char c = fd >= 0 ? 'y' : 'n';
    (void)!::write(ready[1], &c, 1);
    (void)!::read(done[0], &c, 1);
    ::_exit(0);
  }
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  CHECK(c == 'y');
  fd_guard accepted(::accept(listener.fd, nullptr, nullptr));
  std::string problem;
  auto uid = owner_of_accepted(accepted.fd, problem);
  (void)!::write(done[1], "x", 1);
  int status = 0;
  ::waitpid(child, &status, 0);
  for (int fd : {ready[0], ready[1], done[0], done[1]})
    ::close(fd);
  INFO(problem);
  REQUIRE(uid.has_value());
  CHECK(*uid == nobody_uid);
}

TEST_CASE("Basic credentials: NAME:TOKEN in base64, nothing else") {
  auto ok = parse_basic_credentials("Basic ZGV2OnRvazplbg==");  // dev:tok:en
  REQUIRE(ok.has_value());
  CHECK(ok->name == "dev");
  CHECK(ok->token == "tok:en");
  CHECK(parse_basic_credentials("basic   ZGV2OnQ=")->name == "dev");
  for (const char* bad : {"", "Basic", "Basic ", "Bearer ZGV2OnQ=", "Basic !!!", "Basic ZGV2",
                          "BasicZGV2OnQ=", "Basic ZGV2OnQ"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_basic_credentials(bad).has_value());
  }
}

TEST_CASE("the anonymous mode in force") {
  using enum anonymous_access;
  CHECK(effective_anonymous(same_user, true, false) == same_user);
  CHECK(effective_anonymous(none, true, false) == none);
  CHECK(effective_anonymous(any, true, false) == any);
  // A non-loopback listener needs the flag to serve anyone without credentials.
  CHECK(effective_anonymous(same_user, false, false) == none);
  CHECK(effective_anonymous(any, false, false) == none);
  CHECK(effective_anonymous(none, false, true) == any);
  CHECK(effective_anonymous(same_user, true, true) == any);
}

namespace {

std::string basic(std::string_view name, std::string_view token) {
  std::string plain = std::string(name) + ":" + std::string(token);
  std::string out(4 * ((plain.size() + 2) / 3), '\0');
  EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                  reinterpret_cast<const unsigned char*>(plain.data()),
                  static_cast<int>(plain.size()));
  return "Basic " + out;
}

struct identity_fixture {
  proxy_state st;
  std::string dev_token = sbx::store::make_sandbox_token();
  std::string vm_token = sbx::store::make_sandbox_token();

  identity_fixture() {
    auto dir = std::make_shared<sandbox_directory>();
    dir->token_hashes["dev"] = sbx::store::hash_sandbox_token(dev_token);
    dir->token_hashes["vm"] = sbx::store::hash_sandbox_token(vm_token);
    sbx::policy::resource r = sbx::policy::parse_resource("127.0.0.2");
    dir->sources.emplace_back(r.network, "vm");
    st.sandboxes.store(dir);
    mode(anonymous_access::same_user);
  }
  void mode(anonymous_access a) {
    auto s = std::make_shared<sbx::config::settings>();
    s->anonymous = a;
    st.settings.store(s);
  }
  static peer_info peer(const char* ip, std::optional<bool> same_user) {
    peer_info p;
    p.address = *ip_address::parse(ip);
    p.port = 40000;
    p.local_address = *ip_address::parse("127.0.0.1");
    p.local_port = 3128;
    p.same_user = same_user;  // preset: no netlink query in the table
    return p;
  }
};

}  // namespace

TEST_CASE("identity: anonymous mode x credentials x source address") {
  identity_fixture fx;
  struct row {
    anonymous_access mode;
    const char* ip;
    std::optional<bool> same_user;
    std::string header;  // "" = no Proxy-Authorization
    bool accepted;
    std::string sandbox;
  };
  using enum anonymous_access;
  const std::string dev = basic("dev", fx.dev_token);
  const std::string vm = basic("vm", fx.vm_token);
  const std::string wrong = basic("dev", fx.vm_token);
  const row table[] = {
      // No credentials, not a source address: the mode decides.
      {same_user, "127.0.0.1", true, "", true, ""},
      {same_user, "127.0.0.1", false, "", false, ""},
      {same_user, "10.0.0.9", std::nullopt, "", false, ""},  // not loopback: no lookup at all
      {none, "127.0.0.1", true, "", false, ""},
      {any, "10.0.0.9", false, "", true, ""},
      // Valid credentials work whatever the mode and the owner.
      {none, "10.0.0.9", false, dev, true, "dev"},
      {same_user, "127.0.0.1", false, dev, true, "dev"},
      // Bad credentials are refused in every mode.
      {any, "127.0.0.1", true, wrong, false, ""},
      {any, "127.0.0.1", true, "Bearer x", false, ""},
      // A source address is its sandbox, with or without its own token, in every mode.
      {none, "127.0.0.2", false, "", true, "vm"},
      {same_user, "127.0.0.2", false, "", true, "vm"},
      {any, "127.0.0.2", true, "", true, "vm"},
      {none, "127.0.0.2", false, vm, true, "vm"},
      // ... and cannot become another sandbox, or present bad credentials.
      {any, "127.0.0.2", true, dev, false, "vm"},
      {any, "127.0.0.2", true, wrong, false, "vm"},
  };
  for (const auto& r : table) {
    CAPTURE(sbx::config::to_string(r.mode));
    CAPTURE(r.ip);
    CAPTURE(r.header);
    fx.mode(r.mode);
    auto p = identity_fixture::peer(r.ip, r.same_user);
    auto id = resolve_identity(fx.st, p, r.header);
    CHECK(id.ok() == r.accepted);
    CHECK(id.sandbox == r.sandbox);
    if (!id.ok()) {
      CHECK(id.refusal->status == 407);
      CHECK(id.refusal->code == "proxy-auth-required");
      CHECK_FALSE(id.refusal->text.empty());
      CHECK(id.refusal->reason.find(fx.dev_token) == std::string::npos);
      CHECK(id.refusal->reason.find(fx.vm_token) == std::string::npos);
    }
  }
}

TEST_CASE("identity refusals say who was claimed, never the token") {
  identity_fixture fx;
  auto p = identity_fixture::peer("127.0.0.2", true);
  auto id = resolve_identity(fx.st, p, basic("dev", fx.dev_token));
  REQUIRE_FALSE(id.ok());
  CHECK(id.refusal->claimed == "dev");
  CHECK(id.refusal->reason == "credentials of sandbox 'dev' from a source address of sandbox 'vm'");

  auto q = identity_fixture::peer("127.0.0.1", true);
  id = resolve_identity(fx.st, q, basic("ghost", fx.dev_token));
  REQUIRE_FALSE(id.ok());
  CHECK(id.refusal->reason == "invalid sandbox credentials for sandbox 'ghost'");
  // A name that could not be a sandbox name (here: a pasted token with '+' or '/') stays out.
  id = resolve_identity(fx.st, q, basic("Not A Name\x01", "x"));
  REQUIRE_FALSE(id.ok());
  CHECK(id.refusal->claimed.empty());
  CHECK(id.refusal->reason == "invalid sandbox credentials for an unreadable sandbox name");
}

TEST_CASE("same-user: the owner is looked up once per connection, on a real socket") {
  identity_fixture fx;
  fd_guard listener(listen_loopback());
  const auto where = name_of(listener.fd, false);
  fd_guard client(connect_to(where));
  fd_guard accepted(::accept(listener.fd, nullptr, nullptr));
  auto c = name_of(accepted.fd, true);
  peer_info p;
  p.address = ip_of(c);
  p.port = ntohs(c.sin_port);
  p.local_address = ip_of(where);
  p.local_port = ntohs(where.sin_port);
  auto id = resolve_identity(fx.st, p, "");
  INFO(p.owner_problem);
  CHECK(id.ok());
  REQUIRE(p.same_user.has_value());
  CHECK(*p.same_user);
  CHECK(p.owner_uid == static_cast<std::int64_t>(::geteuid()));
  // Cached: a later request on the connection does not ask again, even once the socket is gone.
  ::close(client.fd);
  client.fd = -1;
  CHECK(resolve_identity(fx.st, p, "").ok());
}

TEST_CASE("connections count per IPv4 address and per IPv6 /64") {
  const auto group = [](const char* text) { return client_group(*ip_address::parse(text)); };
  CHECK(group("192.0.2.7") == "192.0.2.7");
  CHECK(group("::ffff:192.0.2.7") == "192.0.2.7");  // the same client over a dual-stack listener
  CHECK(group("::1") == "::1");
  CHECK(group("2001:db8:1:2::a") == "2001:db8:1:2::/64");
  CHECK(group("2001:db8:1:2:ffff:ffff:ffff:ffff") == "2001:db8:1:2::/64");
  CHECK(group("2001:db8:1:3::a") != group("2001:db8:1:2::a"));
}
