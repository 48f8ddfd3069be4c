// Tests for sbx_certs: the CA on disk, leaf minting, the leaf cache, and real in-memory TLS
// handshakes through the server and upstream contexts.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <latch>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "certs/authority.hpp"
#include "certs/leaf_cache.hpp"
#include "certs/leaf_issuer.hpp"
#include "certs/tls_contexts.hpp"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using sbx::certs::certificate_authority;
using sbx::certs::certs_error;
using sbx::certs::leaf_cache;
using sbx::certs::leaf_issuer;

namespace {

template <auto free_function>
struct deleter {
  template <class T>
  void operator()(T* p) const noexcept {
    free_function(p);
  }
};
using ssl_ptr = std::unique_ptr<SSL, deleter<SSL_free>>;
using ssl_ctx_ptr = std::unique_ptr<SSL_CTX, deleter<SSL_CTX_free>>;
using store_ptr = std::unique_ptr<X509_STORE, deleter<X509_STORE_free>>;
using store_ctx_ptr = std::unique_ptr<X509_STORE_CTX, deleter<X509_STORE_CTX_free>>;
using bignum_ptr = std::unique_ptr<BIGNUM, deleter<BN_free>>;
using basic_constraints_ptr = std::unique_ptr<BASIC_CONSTRAINTS, deleter<BASIC_CONSTRAINTS_free>>;
using general_names_ptr = std::unique_ptr<GENERAL_NAMES, deleter<GENERAL_NAMES_free>>;
using ssl_session_ptr = std::unique_ptr<SSL_SESSION, deleter<SSL_SESSION_free>>;
void free_openssl_string(char* p) {
  OPENSSL_free(p);
}
using openssl_string = std::unique_ptr<char, deleter<free_openssl_string>>;

class temp_dir {
 public:
  temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "sbx-certs-test.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  ~temp_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::string read_text(const fs::path& path) {
  std::ifstream in{path, std::ios::binary};
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  out << text;
}

unsigned file_mode(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

std::set<std::string> directory_listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    names.insert(entry.path().filename());
  return names;
}

// Everything that identifies the files of a state directory, to prove an error changed nothing.
struct snapshot {
  std::set<std::string> names;
  std::vector<std::pair<std::string, unsigned>> contents;
  friend bool operator==(const snapshot&, const snapshot&) = default;
};
snapshot take_snapshot(const fs::path& dir) {
  snapshot s{directory_listing(dir), {}};
  for (const auto& name : s.names) {
    s.contents.emplace_back(read_text(dir / name), file_mode(dir / name));
  }
  return s;
}

std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const certs_error& e) {
    return e.what();
  }
  return {};
}

std::string name_entry(X509_NAME* name, int nid) {
  int index = X509_NAME_get_index_by_NID(name, nid, -1);
  if (index < 0) return {};
  ASN1_STRING* value = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, index));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(value)),
                     static_cast<std::size_t>(ASN1_STRING_length(value)));
}

std::string serial_hex(X509* cert) {
  bignum_ptr bn{ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)};
  openssl_string hex{BN_bn2hex(bn.get())};
  return hex.get();
}

bool extension_critical(X509* cert, int nid) {
  int index = X509_get_ext_by_NID(cert, nid, -1);
  REQUIRE(index >= 0);
  return X509_EXTENSION_get_critical(X509_get_ext(cert, index)) == 1;
}

// Seconds from now to t (negative: in the past).
long long seconds_from_now(const ASN1_TIME* t) {
  int days = 0;
  int seconds = 0;
  REQUIRE(ASN1_TIME_diff(&days, &seconds, nullptr, t) == 1);
  return static_cast<long long>(days) * 86400 + seconds;
}

// X509_verify_cert of leaf against ca alone, purpose sslserver; returns the verify error code.
int verify_against(X509* ca, X509* leaf) {
  store_ptr store{X509_STORE_new()};
  REQUIRE(X509_STORE_add_cert(store.get(), ca) == 1);
  store_ctx_ptr ctx{X509_STORE_CTX_new()};
  REQUIRE(X509_STORE_CTX_init(ctx.get(), store.get(), leaf, nullptr) == 1);
  REQUIRE(X509_STORE_CTX_set_purpose(ctx.get(), X509_PURPOSE_SSL_SERVER) == 1);
  int ok = X509_verify_cert(ctx.get());
  int error = X509_STORE_CTX_get_error(ctx.get());
  return ok == 1 ? X509_V_OK : (error == X509_V_OK ? -1 : error);
}

// A self-signed EC certificate with chosen validity, for what the library itself never makes (an
// expired or short-lived CA, a self-signed upstream).
std::pair<sbx::certs::x509_ptr, sbx::certs::pkey_ptr> make_self_signed(const std::string& cn,
                                                                       long not_before_seconds,
                                                                       long not_after_seconds,
                                                                       bool is_ca) {
  sbx::certs::pkey_ptr key{EVP_EC_gen("P-256")};
  sbx::certs::x509_ptr cert{X509_new()};
  REQUIRE(key);
  REQUIRE(cert);
  X509_set_version(cert.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 4242);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), not_before_seconds);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), not_after_seconds);
  X509_set_pubkey(cert.get(), key.get());
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  std::string san = "DNS:" + cn;
  for (auto [nid, value] :
       {std::pair<int, const char*>{NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "CA:FALSE"},
        {NID_subject_key_identifier, "hash"},
        {NID_subject_alt_name, san.c_str()}}) {
    X509_EXTENSION* ext = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value);
    REQUIRE(ext != nullptr);
    X509_add_ext(cert.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  REQUIRE(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0);
  return {std::move(cert), std::move(key)};
}

void write_pem_pair(const fs::path& dir, X509* cert, EVP_PKEY* key) {
  auto write = [](const fs::path& path, auto&& writer) {
    std::unique_ptr<BIO, deleter<BIO_free_all>> bio{BIO_new_file(path.c_str(), "w")};
    REQUIRE(bio);
    REQUIRE(writer(bio.get()) == 1);
  };
  write(dir / "ca.pem", [&](BIO* b) { return PEM_write_bio_X509(b, cert); });
  write(dir / "ca-key.pem", [&](BIO* b) {
    return PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr);
  });
  ::chmod((dir / "ca-key.pem").c_str(), 0600);
}

std::shared_ptr<const certificate_authority> shared_ca(const fs::path& dir) {
  return std::make_shared<const certificate_authority>(certificate_authority::load_or_create(dir));
}

// ---- in-memory TLS ---------------------------------------------------------------------------

struct handshake_result {
  bool ok = false;
  int client_error = 0;  // SSL_get_error on failure
  unsigned long first_error = 0;
};

// Joins two SSL objects with a BIO pair and drives both handshakes until they finish or one fails.
handshake_result run_handshake(SSL* client, SSL* server) {
  ERR_clear_error();
  BIO* client_bio = nullptr;
  BIO* server_bio = nullptr;
  REQUIRE(BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) == 1);
  SSL_set_bio(client, client_bio, client_bio);
  SSL_set_bio(server, server_bio, server_bio);
  SSL_set_connect_state(client);
  SSL_set_accept_state(server);
  handshake_result result;
  bool client_done = false;
  bool server_done = false;
  for (int round = 0; round < 100 && !(client_done && server_done); ++round) {
    if (!client_done) {
      int rc = SSL_do_handshake(client);
      if (rc == 1) {
        client_done = true;
      } else if (int e = SSL_get_error(client, rc);
                 e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        result.client_error = e;
        break;
      }
    }
    if (!server_done) {
      int rc = SSL_do_handshake(server);
      if (rc == 1) {
        server_done = true;
      } else if (int e = SSL_get_error(server, rc);
                 e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        // Let the client read the alert, as it would on a socket.
        SSL_do_handshake(client);
        break;
      }
    }
  }
  result.ok = client_done && server_done;
  result.first_error = ERR_peek_error();
  if (result.ok) {
    // Post-handshake messages (TLS 1.3 session tickets) reach the client on its first read.
    std::array<char, 16> scratch{};
    SSL_read(client, scratch.data(), static_cast<int>(scratch.size()));
  }
  ERR_clear_error();
  return result;
}

// A client that trusts only `ca` and checks the host name, like a sandbox given ca.pem.
ssl_ctx_ptr sandbox_client_context(X509* ca) {
  ssl_ctx_ptr ctx{SSL_CTX_new(TLS_client_method())};
  REQUIRE(ctx);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
  REQUIRE(X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), ca) == 1);
  return ctx;
}

ssl_ptr sandbox_client(SSL_CTX* ctx, const std::string& sni, const std::string& verify_host,
                       std::string_view alpn = {}) {
  ssl_ptr ssl{SSL_new(ctx)};
  REQUIRE(ssl);
  if (!sni.empty()) REQUIRE(SSL_set_tlsext_host_name(ssl.get(), sni.c_str()) == 1);
  X509_VERIFY_PARAM* param = SSL_get0_param(ssl.get());
  if (verify_host.find(':') != std::string::npos ||
      verify_host.find_first_not_of("0123456789.") == std::string::npos) {
    REQUIRE(X509_VERIFY_PARAM_set1_ip_asc(param, verify_host.c_str()) == 1);
  } else {
    REQUIRE(SSL_set1_host(ssl.get(), verify_host.c_str()) == 1);
  }
  if (!alpn.empty()) {
    REQUIRE(SSL_set_alpn_protos(ssl.get(), reinterpret_cast<const unsigned char*>(alpn.data()),
                                static_cast<unsigned>(alpn.size())) == 0);
  }
  return ssl;
}

std::string alpn_selected(SSL* ssl) {
  const unsigned char* data = nullptr;
  unsigned size = 0;
  SSL_get0_alpn_selected(ssl, &data, &size);
  return std::string(reinterpret_cast<const char*>(data), size);
}

constexpr std::string_view alpn_h2_http11{"\x02h2\x08http/1.1", 12};
constexpr std::string_view alpn_h2_only{"\x02h2", 3};

// A plain TLS server presenting cert/key (+chain), standing in for a real upstream.
ssl_ctx_ptr upstream_server_context(X509* cert, EVP_PKEY* key, stack_st_X509* chain) {
  ssl_ctx_ptr ctx{SSL_CTX_new(TLS_server_method())};
  REQUIRE(ctx);
  REQUIRE(SSL_CTX_use_cert_and_key(ctx.get(), cert, key, chain, 1) == 1);
  return ctx;
}

}  // namespace

// ---- the CA ----------------------------------------------------------------------------------

TEST_CASE("a new CA is written with the right modes, subject and extensions") {
  temp_dir dir;
  auto ca = certificate_authority::load_or_create(dir.path());
  CHECK(file_mode(dir.path() / "ca.pem") == 0644);
  CHECK(file_mode(dir.path() / "ca-key.pem") == 0600);
  CHECK(directory_listing(dir.path()) == std::set<std::string>{"ca.pem", "ca-key.pem"});
  CHECK(read_text(dir.path() / "ca.pem") == ca.certificate_pem());
  CHECK(ca.certificate_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
  CHECK(read_text(dir.path() / "ca-key.pem").starts_with("-----BEGIN PRIVATE KEY-----\n"));

  X509* cert = ca.certificate();
  std::string cn = name_entry(X509_get_subject_name(cert), NID_commonName);
  std::array<char, 256> host{};
  ::gethostname(host.data(), host.size() - 1);
  std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::gmtime_r(&now, &tm);
  std::array<char, 16> date{};
  std::strftime(date.data(), date.size(), "%Y-%m-%d", &tm);
  CHECK(cn.starts_with("sbx-proxy local CA ("));
  CHECK(cn.find(std::string(host.data()).substr(0, 10)) != std::string::npos);
  CHECK(cn.ends_with(std::string(", ") + date.data() + ")"));
  CHECK(cn.size() <= 64);
  CHECK(name_entry(X509_get_subject_name(cert), NID_organizationName) == "sbx-proxy");
  CHECK(X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)) == 0);
  CHECK(ca.subject().find("O=sbx-proxy") != std::string::npos);

  int critical = -1;
  basic_constraints_ptr bc{static_cast<BASIC_CONSTRAINTS*>(
      X509_get_ext_d2i(cert, NID_basic_constraints, &critical, nullptr))};
  REQUIRE(bc);
  CHECK(critical == 1);
  CHECK(bc->ca != 0);
  REQUIRE(bc->pathlen != nullptr);
  CHECK(ASN1_INTEGER_get(bc->pathlen) == 0);
  CHECK(X509_get_key_usage(cert) == (KU_KEY_CERT_SIGN | KU_CRL_SIGN));
  CHECK(extension_critical(cert, NID_key_usage));
  CHECK(X509_get0_subject_key_id(cert) != nullptr);

  CHECK(EVP_PKEY_is_a(ca.private_key(), "EC") == 1);
  std::array<char, 64> group{};
  REQUIRE(EVP_PKEY_get_group_name(ca.private_key(), group.data(), group.size(), nullptr) == 1);
  CHECK(std::string(group.data()) == "prime256v1");
  CHECK(X509_get_signature_nid(cert) == NID_ecdsa_with_SHA256);

  bignum_ptr serial{ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)};
  CHECK(BN_is_negative(serial.get()) == 0);
  CHECK(BN_num_bits(serial.get()) > 64);
  CHECK(BN_num_bits(serial.get()) <= 128);

  CHECK(seconds_from_now(X509_get0_notBefore(cert)) == doctest::Approx(-3600).epsilon(0.01));
  long long ten_years = 3652LL * 86400;
  CHECK(seconds_from_now(X509_get0_notAfter(cert)) == doctest::Approx(ten_years).epsilon(0.001));
  CHECK(ca.not_after() - ca.not_before() > 24h * 3650);

  CHECK(ca.fingerprint_sha256().size() == 32 * 3 - 1);
  std::array<unsigned char, 32> digest{};
  unsigned length = 0;
  REQUIRE(X509_digest(cert, EVP_sha256(), digest.data(), &length) == 1);
  CHECK(ca.fingerprint_sha256().starts_with([&] {
    std::array<char, 8> first{};
    std::snprintf(first.data(), first.size(), "%02X:%02X", digest[0], digest[1]);
    return std::string(first.data());
  }()));
}

TEST_CASE("the CA is reused: a second load gives the same fingerprint") {
  temp_dir dir;
  auto first = certificate_authority::load_or_create(dir.path());
  auto before = take_snapshot(dir.path());
  auto second = certificate_authority::load_or_create(dir.path());
  auto third = certificate_authority::load(dir.path());
  CHECK(second.fingerprint_sha256() == first.fingerprint_sha256());
  CHECK(third.fingerprint_sha256() == first.fingerprint_sha256());
  CHECK(take_snapshot(dir.path()) == before);
}

TEST_CASE("the state directory is created 0700 when missing") {
  temp_dir dir;
  auto state = dir.path() / "sbx";
  auto ca = certificate_authority::load_or_create(state);
  CHECK(file_mode(state) == 0700);
  CHECK(fs::exists(state / "ca.pem"));
}

TEST_CASE("load() without a CA is an error and creates nothing") {
  temp_dir dir;
  std::string error = error_of([&] { (void)certificate_authority::load(dir.path()); });
  CHECK(error.find("no CA") != std::string::npos);
  CHECK(directory_listing(dir.path()).empty());
}

TEST_CASE("a half-present CA is an error naming the files, and nothing is replaced") {
  temp_dir dir;
  (void)certificate_authority::load_or_create(dir.path());

  SUBCASE("key missing") {
    fs::remove(dir.path() / "ca-key.pem");
    auto before = take_snapshot(dir.path());
    std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
    CHECK(error.find("ca-key.pem is missing") != std::string::npos);
    CHECK(error.find("sbx ca rotate") != std::string::npos);
    CHECK(take_snapshot(dir.path()) == before);
  }
  SUBCASE("certificate missing") {
    fs::remove(dir.path() / "ca.pem");
    auto before = take_snapshot(dir.path());
    std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
    CHECK(error.find("ca.pem is missing") != std::string::npos);
    CHECK(error.find("sbx ca rotate") != std::string::npos);
    CHECK(take_snapshot(dir.path()) == before);
  }
}

TEST_CASE("a mismatched CA pair is an error, and nothing is replaced") {
  temp_dir dir;
  temp_dir other;
  (void)certificate_authority::load_or_create(dir.path());
  (void)certificate_authority::load_or_create(other.path());
  fs::copy_file(other.path() / "ca-key.pem", dir.path() / "ca-key.pem",
                fs::copy_options::overwrite_existing);
  auto before = take_snapshot(dir.path());
  std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
  CHECK(error.find("do not belong together") != std::string::npos);
  CHECK(error.find((dir.path() / "ca.pem").string()) != std::string::npos);
  CHECK(error.find("sbx ca rotate") != std::string::npos);
  CHECK(take_snapshot(dir.path()) == before);
}

TEST_CASE("a corrupt CA file is an error naming it, and nothing is replaced") {
  temp_dir dir;
  (void)certificate_authority::load_or_create(dir.path());

  SUBCASE("certificate") {
    write_text(dir.path() / "ca.pem", "not a certificate\n");
    auto before = take_snapshot(dir.path());
    std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
    CHECK(error.find((dir.path() / "ca.pem").string() + " does not hold a PEM certificate") !=
          std::string::npos);
    CHECK(take_snapshot(dir.path()) == before);
  }
  SUBCASE("key") {
    std::string text = read_text(dir.path() / "ca-key.pem");
    text[40] = text[40] == 'A' ? 'B' : 'A';
    text.erase(60, 20);
    write_text(dir.path() / "ca-key.pem", text);
    auto before = take_snapshot(dir.path());
    std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
    CHECK(error.find((dir.path() / "ca-key.pem").string() + " does not hold") != std::string::npos);
    CHECK(take_snapshot(dir.path()) == before);
  }
  SUBCASE("unreadable key") {
    // A directory in its place: unreadable even for root, which ignores file modes.
    fs::remove(dir.path() / "ca-key.pem");
    fs::create_directory(dir.path() / "ca-key.pem");
    std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
    CHECK(error.find("cannot read " + (dir.path() / "ca-key.pem").string()) != std::string::npos);
  }
}

TEST_CASE("an expired CA is an error that says to rotate") {
  temp_dir dir;
  auto [cert, key] = make_self_signed("old CA", -86400 * 10, -86400, true);
  write_pem_pair(dir.path(), cert.get(), key.get());
  auto before = take_snapshot(dir.path());
  std::string error = error_of([&] { (void)certificate_authority::load_or_create(dir.path()); });
  CHECK(error.find("expired") != std::string::npos);
  CHECK(error.find("sbx ca rotate") != std::string::npos);
  CHECK(take_snapshot(dir.path()) == before);
}

TEST_CASE("rotate writes a new CA pair atomically") {
  temp_dir dir;
  auto first = certificate_authority::load_or_create(dir.path());
  auto rotated = certificate_authority::rotate(dir.path());
  CHECK(rotated.fingerprint_sha256() != first.fingerprint_sha256());
  CHECK(certificate_authority::load_or_create(dir.path()).fingerprint_sha256() ==
        rotated.fingerprint_sha256());
  CHECK(file_mode(dir.path() / "ca.pem") == 0644);
  CHECK(file_mode(dir.path() / "ca-key.pem") == 0600);
  // No temporary file is left behind.
  CHECK(directory_listing(dir.path()) == std::set<std::string>{"ca.pem", "ca-key.pem"});

  SUBCASE("rotate repairs a broken pair") {
    fs::remove(dir.path() / "ca-key.pem");
    auto repaired = certificate_authority::rotate(dir.path());
    CHECK(certificate_authority::load(dir.path()).fingerprint_sha256() ==
          repaired.fingerprint_sha256());
  }
}

// ---- leaves ----------------------------------------------------------------------------------

TEST_CASE("a leaf verifies against the CA for its host only") {
  temp_dir dir;
  auto ca = shared_ca(dir.path());
  leaf_issuer issuer{ca};
  auto leaf = issuer.mint("API.Example.com.");

  CHECK(verify_against(ca->certificate(), leaf.get()) == X509_V_OK);
  CHECK(X509_check_host(leaf.get(), "api.example.com", 0, 0, nullptr) == 1);
  CHECK(X509_check_host(leaf.get(), "other.example.com", 0, 0, nullptr) == 0);
  CHECK(X509_check_ip_asc(leaf.get(), "127.0.0.1", 0) == 0);
  CHECK(name_entry(X509_get_subject_name(leaf.get()), NID_commonName) == "api.example.com");
  CHECK(X509_NAME_cmp(X509_get_issuer_name(leaf.get()), X509_get_subject_name(ca->certificate())) ==
        0);

  CHECK((X509_get_extended_key_usage(leaf.get()) & XKU_SSL_SERVER) != 0);
  CHECK(X509_get_key_usage(leaf.get()) == KU_DIGITAL_SIGNATURE);
  CHECK(extension_critical(leaf.get(), NID_key_usage));
  CHECK(X509_check_ca(leaf.get()) == 0);
  int critical = -1;
  basic_constraints_ptr bc{static_cast<BASIC_CONSTRAINTS*>(
      X509_get_ext_d2i(leaf.get(), NID_basic_constraints, &critical, nullptr))};
  REQUIRE(bc);
  CHECK(bc->ca == 0);
  CHECK(X509_get0_subject_key_id(leaf.get()) != nullptr);
  REQUIRE(X509_get0_authority_key_id(leaf.get()) != nullptr);
  CHECK(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf.get()),
                              X509_get0_subject_key_id(ca->certificate())) == 0);
  CHECK(X509_get_signature_nid(leaf.get()) == NID_ecdsa_with_SHA256);
  CHECK(X509_verify(leaf.get(), X509_get0_pubkey(ca->certificate())) == 1);
  CHECK(EVP_PKEY_eq(X509_get0_pubkey(leaf.get()), issuer.leaf_key()) == 1);
}

TEST_CASE("a leaf from another CA does not verify") {
  temp_dir dir;
  temp_dir other;
  leaf_issuer issuer{shared_ca(dir.path())};
  auto stranger = shared_ca(other.path());
  auto leaf = issuer.mint("api.example.com");
  CHECK(verify_against(stranger->certificate(), leaf.get()) ==
        X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY);
}

TEST_CASE("IP literals get an IP SAN") {
  temp_dir dir;
  auto ca = shared_ca(dir.path());
  leaf_issuer issuer{ca};
  for (std::string host : {"127.0.0.1", "::1", "[::1]", "2001:DB8::5"}) {
    CAPTURE(host);
    auto leaf = issuer.mint(host);
    CHECK(verify_against(ca->certificate(), leaf.get()) == X509_V_OK);
    std::string address = host == "[::1]" ? "::1" : host;
    CHECK(X509_check_ip_asc(leaf.get(), address.c_str(), 0) == 1);
    CHECK(X509_check_ip_asc(leaf.get(), "10.1.2.3", 0) == 0);
    general_names_ptr names{static_cast<GENERAL_NAMES*>(
        X509_get_ext_d2i(leaf.get(), NID_subject_alt_name, nullptr, nullptr))};
    REQUIRE(names);
    REQUIRE(sk_GENERAL_NAME_num(names.get()) == 1);
    CHECK(sk_GENERAL_NAME_value(names.get(), 0)->type == GEN_IPADD);
  }
}

TEST_CASE("a name longer than 64 characters gets no CN and a critical SAN") {
  temp_dir dir;
  auto ca = shared_ca(dir.path());
  leaf_issuer issuer{ca};
  std::string host = std::string(63, 'a') + ".example.com";
  auto leaf = issuer.mint(host);
  CHECK(X509_NAME_entry_count(X509_get_subject_name(leaf.get())) == 0);
  CHECK(extension_critical(leaf.get(), NID_subject_alt_name));
  CHECK(X509_check_host(leaf.get(), host.c_str(), host.size(), 0, nullptr) == 1);
  CHECK(verify_against(ca->certificate(), leaf.get()) == X509_V_OK);

  auto short_leaf = issuer.mint("example.com");
  CHECK_FALSE(extension_critical(short_leaf.get(), NID_subject_alt_name));
}

TEST_CASE("hosts that are not a plain name or address are refused") {
  temp_dir dir;
  leaf_issuer issuer{shared_ca(dir.path())};
  for (const std::string& host :
       std::vector<std::string>{"", ".", "*.example.com", "*", "a..b", "exa mple.com", "evil\r\nx",
                                "a/b", std::string(64, 'a') + ".com", std::string(254, 'a')}) {
    CAPTURE(host);
    CHECK_THROWS_AS((void)issuer.mint(host), certs_error);
  }
  CHECK_NOTHROW((void)issuer.mint("under_score.example.com"));
}

TEST_CASE("serials are unique across 100 mints and validity lies inside the CA's") {
  temp_dir dir;
  auto ca = shared_ca(dir.path());
  leaf_issuer issuer{ca};
  std::set<std::string> serials;
  int long_serials = 0;
  for (int i = 0; i < 100; ++i) {
    auto leaf = issuer.mint("same.example.com");
    serials.insert(serial_hex(leaf.get()));
    bignum_ptr bn{ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf.get()), nullptr)};
    CHECK(BN_is_negative(bn.get()) == 0);
    if (BN_num_bits(bn.get()) >= 120) ++long_serials;
    CHECK(ASN1_TIME_compare(X509_get0_notBefore(leaf.get()),
                            X509_get0_notBefore(ca->certificate())) >= 0);
    CHECK(ASN1_TIME_compare(X509_get0_notAfter(leaf.get()),
                            X509_get0_notAfter(ca->certificate())) <= 0);
    CHECK(seconds_from_now(X509_get0_notBefore(leaf.get())) <= -3590);
    CHECK(seconds_from_now(X509_get0_notAfter(leaf.get())) ==
          doctest::Approx(90 * 86400).epsilon(0.001));
  }
  CHECK(serials.size() == 100);
  CHECK(long_serials > 90);  // 128 random bits: fewer than 120 significant bits is rare
}

TEST_CASE("a leaf never outlives a CA that expires sooner than 90 days") {
  temp_dir dir;
  auto [cert, key] = make_self_signed("short-lived CA", -3600, 10 * 86400, true);
  write_pem_pair(dir.path(), cert.get(), key.get());
  auto ca = shared_ca(dir.path());
  leaf_issuer issuer{ca};
  auto leaf = issuer.mint("api.example.com");
  CHECK(ASN1_TIME_compare(X509_get0_notAfter(leaf.get()), X509_get0_notAfter(ca->certificate())) ==
        0);
  CHECK(verify_against(ca->certificate(), leaf.get()) == X509_V_OK);
}

// ---- the leaf cache ----------------------------------------------------------------------------

TEST_CASE("a cache hit returns the same leaf and is counted") {
  temp_dir dir;
  leaf_cache cache{std::make_shared<const leaf_issuer>(shared_ca(dir.path()))};
  auto first = cache.get("api.example.com");
  CHECK(cache.mints() == 1);
  CHECK(cache.hits() == 0);
  auto second = cache.get("API.example.COM.");
  CHECK(second.get() == first.get());
  CHECK(second->cert.get() == first->cert.get());
  CHECK(cache.mints() == 1);
  CHECK(cache.hits() == 1);
  auto other = cache.get("www.example.com");
  CHECK(other->cert.get() != first->cert.get());
  CHECK(serial_hex(other->cert.get()) != serial_hex(first->cert.get()));
  CHECK(cache.mints() == 2);
  CHECK(cache.size() == 2);
  CHECK(first->issuer == cache.issuer());
}

TEST_CASE("16 threads asking for one new host at once mint it once") {
  temp_dir dir;
  leaf_cache cache{std::make_shared<const leaf_issuer>(shared_ca(dir.path()))};
  constexpr int thread_count = 16;
  // Many rounds, each a new host: on a busy two-core machine one round may not overlap at all,
  // but over all of them a cache without single-flight would mint some host twice.
  constexpr int rounds = 40;
  std::barrier round_start{thread_count};
  std::vector<std::vector<const x509_st*>> seen(rounds, std::vector<const x509_st*>(thread_count));
  std::vector<std::thread> threads;
  for (int i = 0; i < thread_count; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < rounds; ++round) {
        round_start.arrive_and_wait();
        seen[round][i] = cache.get("round" + std::to_string(round) + ".test")->cert.get();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  CHECK(cache.mints() == rounds);
  CHECK(cache.hits() == rounds * (thread_count - 1));
  for (const auto& round : seen) {
    CHECK(std::all_of(round.begin(), round.end(), [&](const x509_st* p) { return p == round[0]; }));
  }
}

TEST_CASE("a failed mint is not cached and every waiter sees the error") {
  temp_dir dir;
  leaf_cache cache{std::make_shared<const leaf_issuer>(shared_ca(dir.path()))};
  CHECK_THROWS_AS((void)cache.get("*.example.com"), certs_error);
  CHECK_THROWS_AS((void)cache.get("*.example.com"), certs_error);
  CHECK(cache.size() == 0);
  CHECK(cache.mints() == 2);
  CHECK_THROWS_AS((void)cache.get(std::string(300, 'a')), certs_error);
}

TEST_CASE("the least recently used leaf is evicted") {
  temp_dir dir;
  leaf_cache cache{std::make_shared<const leaf_issuer>(shared_ca(dir.path())), 2};
  auto a = cache.get("a.test");
  auto b = cache.get("b.test");
  CHECK(cache.get("a.test") == a);  // a is now the most recently used
  auto c = cache.get("c.test");     // evicts b
  CHECK(cache.size() == 2);
  CHECK(cache.mints() == 3);
  CHECK(cache.get("a.test") == a);
  CHECK(cache.get("c.test") == c);
  CHECK(cache.mints() == 3);
  auto b_again = cache.get("b.test");
  CHECK(cache.mints() == 4);
  CHECK(b_again != b);
  CHECK(cache.size() == 2);
}

TEST_CASE("clear and set_issuer drop every leaf") {
  temp_dir dir;
  temp_dir other;
  auto old_ca = shared_ca(dir.path());
  leaf_cache cache{std::make_shared<const leaf_issuer>(old_ca)};
  auto before = cache.get("api.example.com");
  cache.clear();
  CHECK(cache.size() == 0);
  auto after_clear = cache.get("api.example.com");
  CHECK(after_clear != before);
  CHECK(cache.mints() == 2);

  auto new_ca = shared_ca(other.path());
  cache.set_issuer(std::make_shared<const leaf_issuer>(new_ca));
  CHECK(cache.size() == 0);
  auto rotated = cache.get("api.example.com");
  CHECK(cache.mints() == 3);
  CHECK(verify_against(new_ca->certificate(), rotated->cert.get()) == X509_V_OK);
  CHECK(verify_against(old_ca->certificate(), rotated->cert.get()) != X509_V_OK);
  // A leaf handed out before the rotation still carries the issuer it was minted with.
  CHECK(&before->issuer->authority() == old_ca.get());
}

TEST_CASE("concurrent gets, evictions and issuer swaps hand out consistent leaves") {
  temp_dir dir;
  temp_dir other;
  std::array issuers{std::make_shared<const leaf_issuer>(shared_ca(dir.path())),
                     std::make_shared<const leaf_issuer>(shared_ca(other.path()))};
  leaf_cache cache{issuers[0], 4};
  constexpr int thread_count = 6;
  std::latch start{thread_count + 1};
  std::atomic<int> inconsistent{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < thread_count; ++t) {
    threads.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < 60; ++i) {
        std::string host = "h" + std::to_string((i * 7 + t) % 9) + ".test";
        auto leaf = cache.get(host);
        X509* ca = leaf->issuer->authority().certificate();
        if (verify_against(ca, leaf->cert.get()) != X509_V_OK ||
            X509_check_host(leaf->cert.get(), host.c_str(), 0, 0, nullptr) != 1) {
          ++inconsistent;
        }
      }
    });
  }
  start.arrive_and_wait();
  for (int i = 0; i < 20; ++i) {
    cache.set_issuer(issuers[i % 2]);
    std::this_thread::yield();
    cache.clear();
  }
  for (auto& t : threads)
    t.join();
  CHECK(inconsistent == 0);
  CHECK(cache.size() <= 4);
  CHECK(cache.mints() + cache.hits() == thread_count * 60);
}

// CPU time of this thread: the machine is shared, so wall time would measure the neighbours.
double thread_cpu_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

TEST_CASE("micro-measurement: mint and cache hit cost") {
  temp_dir dir;
  auto issuer = std::make_shared<const leaf_issuer>(shared_ca(dir.path()));
  constexpr int mint_count = 300;
  double t0 = thread_cpu_ns();
  for (int i = 0; i < mint_count; ++i) {
    (void)issuer->mint("bench" + std::to_string(i) + ".test");
  }
  double mint_us = (thread_cpu_ns() - t0) / mint_count / 1000;

  leaf_cache cache{issuer};
  (void)cache.get("hot.example.com");
  constexpr int hit_count = 200000;
  double t1 = thread_cpu_ns();
  for (int i = 0; i < hit_count; ++i)
    (void)cache.get("hot.example.com");
  double hit_ns = (thread_cpu_ns() - t1) / hit_count;
  MESSAGE("mint: " << mint_us << " us per leaf; cache hit: " << hit_ns << " ns (thread CPU time)");
  CHECK(cache.hits() == hit_count);
}

// ---- server TLS context (sandbox side) ------------------------------------------------------

TEST_CASE("server context: a sandbox client completes a real handshake") {
  temp_dir dir;
  sbx::certs::server_tls_context server{certificate_authority::load_or_create(dir.path())};
  auto ca = server.authority();
  auto client_ctx = sandbox_client_context(ca->certificate());
  CHECK(SSL_CTX_get_min_proto_version(server.native()) == TLS1_2_VERSION);

  SUBCASE("SNI and ALPN h2,http/1.1") {
    std::string target = "api.example.com";
    auto client =
        sandbox_client(client_ctx.get(), "api.example.com", "api.example.com", alpn_h2_http11);
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    auto result = run_handshake(client.get(), ssl.get());
    REQUIRE(result.ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_OK);
    CHECK(alpn_selected(client.get()) == "http/1.1");
    CHECK(alpn_selected(ssl.get()) == "http/1.1");
    STACK_OF(X509)* chain = SSL_get_peer_cert_chain(client.get());
    REQUIRE(chain != nullptr);
    REQUIRE(sk_X509_num(chain) == 2);
    CHECK(name_entry(X509_get_subject_name(sk_X509_value(chain, 0)), NID_commonName) ==
          "api.example.com");
    CHECK(X509_cmp(sk_X509_value(chain, 1), ca->certificate()) == 0);
    CHECK(sbx::certs::intercept_error(ssl.get()).empty());
    CHECK(server.leaves().mints() == 1);

    // A second connection to the same host reuses the cached leaf, and does a full handshake.
    ssl_session_ptr session{SSL_get1_session(client.get())};
    auto client2 = sandbox_client(client_ctx.get(), "api.example.com", "api.example.com");
    if (session) SSL_set_session(client2.get(), session.get());
    ssl_ptr ssl2{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl2.get(), &target);
    REQUIRE(run_handshake(client2.get(), ssl2.get()).ok);
    CHECK(SSL_session_reused(client2.get()) == 0);
    CHECK(server.leaves().mints() == 1);
    CHECK(server.leaves().hits() == 1);
    CHECK(alpn_selected(client2.get()).empty());
  }
  SUBCASE("a TLS 1.2 client") {
    std::string target = "api.example.com";
    auto client = sandbox_client(client_ctx.get(), target, target, alpn_h2_http11);
    REQUIRE(SSL_set_max_proto_version(client.get(), TLS1_2_VERSION) == 1);
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    REQUIRE(run_handshake(client.get(), ssl.get()).ok);
    CHECK(SSL_version(client.get()) == TLS1_2_VERSION);
    CHECK(alpn_selected(client.get()) == "http/1.1");
    CHECK(sk_X509_num(SSL_get_peer_cert_chain(client.get())) == 2);
  }
  SUBCASE("SNI differing only in case and a trailing dot") {
    std::string target = "API.example.com";
    auto client = sandbox_client(client_ctx.get(), "api.EXAMPLE.com.", "api.example.com");
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    CHECK(run_handshake(client.get(), ssl.get()).ok);
  }
  SUBCASE("IPv4 literal without SNI") {
    std::string target = "127.0.0.1";
    auto client = sandbox_client(client_ctx.get(), "", "127.0.0.1");
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    REQUIRE(run_handshake(client.get(), ssl.get()).ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_OK);
  }
  SUBCASE("IPv6 literal in brackets without SNI") {
    std::string target = "[::1]";
    auto client = sandbox_client(client_ctx.get(), "", "::1");
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    REQUIRE(run_handshake(client.get(), ssl.get()).ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_OK);
  }
}

TEST_CASE("server context: handshakes that must fail") {
  temp_dir dir;
  sbx::certs::server_tls_context server{certificate_authority::load_or_create(dir.path())};
  auto client_ctx = sandbox_client_context(server.authority()->certificate());
  std::string target = "api.example.com";

  SUBCASE("SNI names another host than the CONNECT target") {
    auto client = sandbox_client(client_ctx.get(), "evil.example.com", "evil.example.com");
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    auto result = run_handshake(client.get(), ssl.get());
    CHECK_FALSE(result.ok);
    CHECK(ERR_GET_REASON(result.first_error) == SSL_R_TLSV1_UNRECOGNIZED_NAME);
    CHECK(sbx::certs::intercept_error(ssl.get()).find("SNI") != std::string_view::npos);
    CHECK(server.leaves().mints() == 0);
  }
  SUBCASE("no intercept host attached") {
    auto client = sandbox_client(client_ctx.get(), "api.example.com", "api.example.com");
    ssl_ptr ssl{SSL_new(server.native())};
    CHECK_FALSE(run_handshake(client.get(), ssl.get()).ok);
    CHECK_FALSE(sbx::certs::intercept_error(ssl.get()).empty());
  }
  SUBCASE("a wildcard CONNECT target gets no certificate") {
    std::string wildcard = "*.example.com";
    auto client = sandbox_client(client_ctx.get(), "", "api.example.com");
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &wildcard);
    CHECK_FALSE(run_handshake(client.get(), ssl.get()).ok);
    CHECK(server.leaves().size() == 0);
  }
  SUBCASE("the client offers only h2") {
    auto client =
        sandbox_client(client_ctx.get(), "api.example.com", "api.example.com", alpn_h2_only);
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    auto result = run_handshake(client.get(), ssl.get());
    CHECK_FALSE(result.ok);
    CHECK(ERR_GET_REASON(result.first_error) == SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL);
  }
  SUBCASE("the client checks another host name than the leaf's") {
    auto client = sandbox_client(client_ctx.get(), "", "other.example.com");
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    CHECK_FALSE(run_handshake(client.get(), ssl.get()).ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_ERR_HOSTNAME_MISMATCH);
  }
}

TEST_CASE("server context: rotation takes effect for the next handshake") {
  temp_dir dir;
  sbx::certs::server_tls_context server{certificate_authority::load_or_create(dir.path())};
  auto old_ca = server.authority();
  std::string target = "api.example.com";
  auto handshake_trusting = [&](X509* ca) {
    auto client_ctx = sandbox_client_context(ca);
    auto client = sandbox_client(client_ctx.get(), target, target);
    ssl_ptr ssl{SSL_new(server.native())};
    sbx::certs::set_intercept_host(ssl.get(), &target);
    return run_handshake(client.get(), ssl.get()).ok;
  };
  REQUIRE(handshake_trusting(old_ca->certificate()));

  server.rotate(certificate_authority::rotate(dir.path()));
  auto new_ca = server.authority();
  CHECK(new_ca->fingerprint_sha256() != old_ca->fingerprint_sha256());
  CHECK(server.leaves().size() == 0);
  CHECK_FALSE(handshake_trusting(old_ca->certificate()));
  CHECK(handshake_trusting(new_ca->certificate()));
}

TEST_CASE("server context: an extra reference keeps the context usable") {
  temp_dir dir;
  temp_dir other;
  auto ca = shared_ca(other.path());  // only to own a trust anchor beyond the server's life
  ssl_ctx_ptr kept;
  std::shared_ptr<const certificate_authority> server_ca;
  {
    sbx::certs::server_tls_context server{certificate_authority::load_or_create(dir.path())};
    kept.reset(server.new_reference());
    server_ca = server.authority();
  }
  auto client_ctx = sandbox_client_context(server_ca->certificate());
  std::string target = "api.example.com";
  auto client = sandbox_client(client_ctx.get(), target, target);
  ssl_ptr ssl{SSL_new(kept.get())};
  sbx::certs::set_intercept_host(ssl.get(), &target);
  CHECK(run_handshake(client.get(), ssl.get()).ok);
}

// ---- upstream TLS context -------------------------------------------------------------------

TEST_CASE("upstream context: verification of the real upstream") {
  temp_dir upstream_ca_dir;
  temp_dir stranger_dir;
  auto upstream_ca = shared_ca(upstream_ca_dir.path());
  leaf_issuer upstream_issuer{upstream_ca};
  auto good_leaf = upstream_issuer.mint("upstream.test");
  auto good_server =
      upstream_server_context(good_leaf.get(), upstream_issuer.leaf_key(), upstream_issuer.chain());
  fs::path bundle = upstream_ca_dir.path() / "ca.pem";

  auto connect = [](sbx::certs::upstream_tls_context& upstream, SSL_CTX* server_ctx,
                    std::string_view host, std::uint16_t port = 443) {
    ssl_ptr client{SSL_new(upstream.native())};
    REQUIRE(sbx::certs::prepare_upstream_ssl(client.get(), host, port));
    ssl_ptr server{SSL_new(server_ctx)};
    bool ok = run_handshake(client.get(), server.get()).ok;
    return std::tuple{ok, sbx::certs::verify_error_text(client.get()), std::move(client),
                      std::move(server)};
  };

  SUBCASE("the extra CA bundle makes the right certificate acceptable") {
    sbx::certs::upstream_tls_context upstream{bundle};
    auto [ok, text, client, server] = connect(upstream, good_server.get(), "upstream.test");
    CHECK(ok);
    CHECK(text == "ok");
    const char* sni = SSL_get_servername(server.get(), TLSEXT_NAMETYPE_host_name);
    REQUIRE(sni != nullptr);
    CHECK(std::string(sni) == "upstream.test");
  }
  SUBCASE("without the extra bundle the test CA is unknown") {
    sbx::certs::upstream_tls_context upstream;
    auto [ok, text, client, server] = connect(upstream, good_server.get(), "upstream.test");
    CHECK_FALSE(ok);
    // The server sends the CA along, which is self-signed and not in the system store.
    CHECK(SSL_get_verify_result(client.get()) == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN);
    CHECK(text == "self-signed certificate in certificate chain");
  }
  SUBCASE("a certificate for another name is rejected") {
    sbx::certs::upstream_tls_context upstream{bundle};
    auto [ok, text, client, server] = connect(upstream, good_server.get(), "other.test");
    CHECK_FALSE(ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_ERR_HOSTNAME_MISMATCH);
    CHECK(text == "hostname mismatch");
  }
  SUBCASE("a certificate from an untrusted CA is rejected") {
    auto stranger_ca = shared_ca(stranger_dir.path());
    leaf_issuer stranger{stranger_ca};
    auto leaf = stranger.mint("upstream.test");
    auto server_ctx = upstream_server_context(leaf.get(), stranger.leaf_key(), stranger.chain());
    sbx::certs::upstream_tls_context upstream{bundle};
    auto [ok, text, client, server] = connect(upstream, server_ctx.get(), "upstream.test");
    CHECK_FALSE(ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN);
  }
  SUBCASE("a self-signed certificate is rejected") {
    auto [cert, key] = make_self_signed("upstream.test", -3600, 86400, false);
    auto server_ctx = upstream_server_context(cert.get(), key.get(), nullptr);
    sbx::certs::upstream_tls_context upstream{bundle};
    auto [ok, text, client, server] = connect(upstream, server_ctx.get(), "upstream.test");
    CHECK_FALSE(ok);
    CHECK(SSL_get_verify_result(client.get()) == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT);
  }
  SUBCASE("an IP literal is checked against the IP SAN and sends no SNI") {
    auto leaf = upstream_issuer.mint("127.0.0.1");
    auto server_ctx =
        upstream_server_context(leaf.get(), upstream_issuer.leaf_key(), upstream_issuer.chain());
    sbx::certs::upstream_tls_context upstream{bundle};
    {
      auto [ok, text, client, server] = connect(upstream, server_ctx.get(), "127.0.0.1");
      CHECK(ok);
      CHECK(SSL_get_servername(server.get(), TLSEXT_NAMETYPE_host_name) == nullptr);
    }
    {
      auto [ok, text, client, server] = connect(upstream, server_ctx.get(), "127.0.0.2");
      CHECK_FALSE(ok);
      CHECK(SSL_get_verify_result(client.get()) == X509_V_ERR_IP_ADDRESS_MISMATCH);
    }
  }
  SUBCASE("a second connection to the same host:port resumes its session") {
    sbx::certs::upstream_tls_context upstream{bundle};
    {
      auto [ok, text, client, server] = connect(upstream, good_server.get(), "upstream.test");
      REQUIRE(ok);
      CHECK(SSL_session_reused(client.get()) == 0);
    }
    CHECK(upstream.cached_sessions() == 1);
    {
      auto [ok, text, client, server] = connect(upstream, good_server.get(), "upstream.test");
      REQUIRE(ok);
      CHECK(SSL_session_reused(client.get()) == 1);
    }
    {
      auto [ok, text, client, server] = connect(upstream, good_server.get(), "upstream.test", 8443);
      REQUIRE(ok);
      CHECK(SSL_session_reused(client.get()) == 0);
    }
  }
}

TEST_CASE("upstream context: an unusable extra CA bundle is an error naming the file") {
  temp_dir dir;
  auto missing = dir.path() / "missing.pem";
  std::string error = error_of([&] { sbx::certs::upstream_tls_context upstream{missing}; });
  CHECK(error.find(missing.string()) != std::string::npos);
  CHECK(error.find("No such file") != std::string::npos);

  auto garbage = dir.path() / "garbage.pem";
  write_text(garbage, "this is not PEM\n");
  error = error_of([&] { sbx::certs::upstream_tls_context upstream{garbage}; });
  CHECK(error.find(garbage.string()) != std::string::npos);
}

TEST_CASE("prepare_upstream_ssl refuses hosts it cannot check") {
  sbx::certs::upstream_tls_context upstream;
  for (std::string host : {"", "*.example.com", "bad host", "a..b"}) {
    CAPTURE(host);
    ssl_ptr ssl{SSL_new(upstream.native())};
    CHECK_FALSE(sbx::certs::prepare_upstream_ssl(ssl.get(), host));
  }
  CHECK_FALSE(sbx::certs::prepare_upstream_ssl(nullptr, "example.com"));
}
