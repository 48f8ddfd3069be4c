#include "certs/tls_contexts.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <mutex>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <openssl/tls1.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "certs/detail/openssl.hpp"

namespace sbx::certs {

void ssl_ctx_deleter::operator()(ssl_ctx_st* ctx) const noexcept {
  SSL_CTX_free(ctx);
}

namespace {

// ---- ex_data slots --------------------------------------------------------------------------
// Own indexes, never the "app data" slot 0: boost::asio keeps its verify callback there and
// deletes whatever it finds.

int checked_index(int index, const char* what) {
  if (index < 0) detail::throw_openssl(fmt::format("cannot reserve OpenSSL ex_data for {}", what));
  return index;
}

void free_leaf_cache(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::shared_ptr<leaf_cache>*>(ptr);
}

struct session_store;
void free_session_store(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*);

void free_session_key(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<std::string*>(ptr);
}

// SSL_CTX -> std::shared_ptr<leaf_cache>*: the server context's cache, freed with the SSL_CTX.
int leaf_cache_index() {
  static const int index = checked_index(
      SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_leaf_cache), "the leaf cache");
  return index;
}
// SSL -> const std::string*: the CONNECT target, owned by the caller.
int intercept_host_index() {
  static const int index = checked_index(
      SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr), "the intercept host");
  return index;
}
// SSL -> const char* (a string literal): why the handshake was refused.
int intercept_error_index() {
  static const int index = checked_index(
      SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr), "the intercept error");
  return index;
}
// SSL_CTX -> session_store*: the upstream context's sessions, freed with the SSL_CTX.
int session_store_index() {
  static const int index =
      checked_index(SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_session_store),
                    "the session store");
  return index;
}
// SSL -> std::string* "host:port": which upstream a new session belongs to.
int session_key_index() {
  static const int index = checked_index(
      SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_session_key), "the session key");
  return index;
}

// ---- server side --------------------------------------------------------------------------

// RFC 6066 section 3: ServerNameList = 2-byte length, then entries of a 1-byte type and a 2-byte
// length-prefixed name. Returns the host_name entry (empty when there is none), nullopt when the
// extension is malformed.
std::optional<std::string_view> parse_server_name(const unsigned char* data, std::size_t size) {
  if (size < 2) return std::nullopt;
  std::size_t list_size = (std::size_t{data[0]} << 8) | data[1];
  if (list_size != size - 2) return std::nullopt;
  std::size_t at = 2;
  while (at + 3 <= size) {
    unsigned type = data[at];
    std::size_t length = (std::size_t{data[at + 1]} << 8) | data[at + 2];
    at += 3;
    if (at + length > size) return std::nullopt;
    if (type == TLSEXT_NAMETYPE_host_name) {
      return std::string_view{reinterpret_cast<const char*>(data + at), length};
    }
    at += length;
  }
  if (at != size) return std::nullopt;
  return std::string_view{};
}

int refuse(SSL* ssl, int* alert, int code, const char* reason) {
  SSL_set_ex_data(ssl, intercept_error_index(), const_cast<char*>(reason));
  *alert = code;
  return SSL_CLIENT_HELLO_ERROR;
}

// Runs before the server picks a certificate: presents the leaf for the CONNECT target, and
// refuses a client that asks (by SNI) for another host, since the proxy's policy decision and
// credential choice were made for the CONNECT target alone.
int select_leaf(SSL* ssl, int* alert, void* arg) {
  auto* cache = static_cast<leaf_cache*>(arg);
  const auto* target =
      static_cast<const std::string*>(SSL_get_ex_data(ssl, intercept_host_index()));
  if (target == nullptr) {
    return refuse(ssl, alert, SSL_AD_INTERNAL_ERROR,
                  "no CONNECT target was attached to the connection (set_intercept_host)");
  }
  detail::host_buffer target_buffer;
  auto intended = detail::normalize_host(*target, target_buffer);
  if (!intended) {
    return refuse(ssl, alert, SSL_AD_INTERNAL_ERROR,
                  "the CONNECT target is not a host name or an IP address");
  }

  const unsigned char* extension = nullptr;
  std::size_t extension_size = 0;
  if (SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_server_name, &extension, &extension_size) == 1) {
    auto sni = parse_server_name(extension, extension_size);
    if (!sni) {
      return refuse(ssl, alert, SSL_AD_DECODE_ERROR, "the client sent a malformed SNI extension");
    }
    if (!sni->empty()) {
      detail::host_buffer sni_buffer;
      auto requested = detail::normalize_host(*sni, sni_buffer);
      if (!requested || *requested != *intended) {
        return refuse(ssl, alert, SSL_AD_UNRECOGNIZED_NAME,
                      "the client's TLS SNI names another host than its CONNECT target");
      }
    }
  }

  std::shared_ptr<const leaf_certificate> leaf;
  try {
    leaf = cache->get(*intended);
  } catch (const std::exception& e) {
    spdlog::warn("intercepting TLS for {}: {}", detail::printable(*intended), e.what());
    return refuse(ssl, alert, SSL_AD_INTERNAL_ERROR, "no certificate could be made for the host");
  }
  if (SSL_use_cert_and_key(ssl, leaf->cert.get(), leaf->issuer->leaf_key(), leaf->issuer->chain(),
                           1) != 1) {
    spdlog::warn("intercepting TLS for {}: cannot use the leaf: {}", detail::printable(*intended),
                 detail::openssl_errors());
    return refuse(ssl, alert, SSL_AD_INTERNAL_ERROR, "the leaf certificate could not be used");
  }
  return SSL_CLIENT_HELLO_SUCCESS;
}

// The proxy parses HTTP/1.1 only. RFC 7301 section 3.2: when none of the client's protocols is
// supported the server answers with a fatal no_application_protocol alert. A client that offers
// no ALPN never reaches this callback and proceeds.
int select_alpn(SSL*, const unsigned char** out, unsigned char* out_size, const unsigned char* in,
                unsigned int in_size, void*) {
  static constexpr unsigned char http_1_1[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  unsigned char* selected = nullptr;
  unsigned char selected_size = 0;
  if (SSL_select_next_proto(&selected, &selected_size, http_1_1, sizeof http_1_1, in, in_size) !=
      OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  }
  *out = selected;
  *out_size = selected_size;
  return SSL_TLSEXT_ERR_OK;
}

std::shared_ptr<const leaf_issuer> make_issuer(certificate_authority ca) {
  return std::make_shared<const leaf_issuer>(
      std::make_shared<const certificate_authority>(std::move(ca)));
}

// ---- upstream side ------------------------------------------------------------------------

// Sessions per "host:port", so that a reconnection to the same upstream resumes instead of
// running a full handshake. OpenSSL's client cache never looks sessions up by itself, hence this.
struct session_store {
  explicit session_store(std::size_t c) : capacity(c) {}
  std::mutex mutex;
  std::unordered_map<std::string, detail::ssl_session_ptr> sessions;
  const std::size_t capacity;
};

void free_session_store(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<session_store*>(ptr);
}

session_store* store_of(const SSL* ssl) {
  return static_cast<session_store*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), session_store_index()));
}

// OpenSSL's new-session callback. The store keeps a copy, not the session it is given: OpenSSL
// marks a connection's own session not resumable when that connection is freed without a
// close_notify, which is how most upstream connections end (idle timeout, peer close). That rule
// guards against truncation in SSL 3.0 days; the session's keys are no less sound for it, and
// BoringSSL and Go resume such sessions too.
int keep_session(SSL* ssl, SSL_SESSION* session) {
  auto* key = static_cast<const std::string*>(SSL_get_ex_data(ssl, session_key_index()));
  session_store* store = store_of(ssl);
  if (key == nullptr || store == nullptr || SSL_SESSION_is_resumable(session) != 1) return 0;
  detail::ssl_session_ptr copy{SSL_SESSION_dup(session)};
  if (!copy) {
    detail::discard_openssl_errors();
    return 0;
  }
  try {
    std::lock_guard lock{store->mutex};
    if (auto it = store->sessions.find(*key); it != store->sessions.end()) {
      it->second = std::move(copy);
      return 0;
    }
    // Full: drop an arbitrary session; a bounded store matters, the choice of victim does not.
    if (store->sessions.size() >= store->capacity) store->sessions.erase(store->sessions.begin());
    store->sessions.emplace(*key, std::move(copy));
  } catch (...) {
  }
  return 0;  // OpenSSL keeps its reference
}

void offer_session(SSL* ssl, std::string_view host, std::uint16_t port) {
  session_store* store = store_of(ssl);
  if (store == nullptr) return;
  auto key = std::make_unique<std::string>(fmt::format("{}:{}", host, port));
  {
    std::lock_guard lock{store->mutex};
    if (auto it = store->sessions.find(*key); it != store->sessions.end()) {
      if (SSL_set_session(ssl, it->second.get()) != 1) detail::discard_openssl_errors();
      // RFC 8446 appendix C.4: a TLS 1.3 ticket is used once, or connections become linkable.
      if (SSL_SESSION_get_protocol_version(it->second.get()) >= TLS1_3_VERSION) {
        store->sessions.erase(it);
      }
    }
  }
  delete static_cast<std::string*>(SSL_get_ex_data(ssl, session_key_index()));
  SSL_set_ex_data(ssl, session_key_index(), key.release());
}

}  // namespace

// ---- server_tls_context -------------------------------------------------------------------

server_tls_context::server_tls_context(certificate_authority ca, std::size_t leaf_cache_capacity)
    : ctx_(SSL_CTX_new(TLS_server_method())) {
  if (!ctx_) detail::throw_openssl("cannot create the TLS server context");
  cache_ = std::make_shared<leaf_cache>(make_issuer(std::move(ca)), leaf_cache_capacity);
  SSL_CTX* ctx = ctx_.get();
  auto owned = std::make_unique<std::shared_ptr<leaf_cache>>(cache_);
  if (SSL_CTX_set_ex_data(ctx, leaf_cache_index(), owned.get()) != 1) {
    detail::throw_openssl("cannot attach the leaf cache");
  }
  owned.release();

  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    detail::throw_openssl("cannot require TLS 1.2");
  }
  // No resumption: a resumed session skips select_leaf, so it would skip the SNI check and keep
  // serving a rotated CA's leaf. A full handshake costs a fraction of a millisecond.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_client_hello_cb(ctx, select_leaf, cache_.get());
  SSL_CTX_set_alpn_select_cb(ctx, select_alpn, nullptr);
}

server_tls_context::~server_tls_context() = default;

ssl_ctx_st* server_tls_context::new_reference() const {
  SSL_CTX_up_ref(ctx_.get());
  return ctx_.get();
}

void server_tls_context::rotate(certificate_authority ca) {
  cache_->set_issuer(make_issuer(std::move(ca)));
}

std::shared_ptr<const certificate_authority> server_tls_context::authority() const {
  return cache_->issuer()->authority_ptr();
}

leaf_cache& server_tls_context::leaves() noexcept {
  return *cache_;
}

void set_intercept_host(ssl_st* ssl, const std::string* host) {
  SSL_set_ex_data(ssl, intercept_host_index(), const_cast<std::string*>(host));
  SSL_set_ex_data(ssl, intercept_error_index(), nullptr);
}

std::string_view intercept_error(const ssl_st* ssl) noexcept {
  const char* reason = static_cast<const char*>(SSL_get_ex_data(ssl, intercept_error_index()));
  return reason == nullptr ? std::string_view{} : std::string_view{reason};
}

// ---- upstream_tls_context -----------------------------------------------------------------

upstream_tls_context::upstream_tls_context(const std::filesystem::path& extra_ca_file,
                                           std::size_t session_capacity)
    : ctx_(SSL_CTX_new(TLS_client_method())), extra_ca_file_(extra_ca_file) {
  if (!ctx_) detail::throw_openssl("cannot create the upstream TLS context");
  SSL_CTX* ctx = ctx_.get();
  auto store = std::make_unique<session_store>(session_capacity == 0 ? 1 : session_capacity);
  if (SSL_CTX_set_ex_data(ctx, session_store_index(), store.get()) != 1) {
    detail::throw_openssl("cannot attach the session store");
  }
  store.release();

  if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
    detail::throw_openssl("cannot require TLS 1.2");
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nullptr);
  if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
    detail::throw_openssl("cannot load the system certificate store");
  }
  if (!extra_ca_file_.empty()) {
    // Opened first for errno: OpenSSL's own report of a missing file is cryptic.
    int fd = ::open(extra_ca_file_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      throw certs_error(fmt::format("cannot read upstream_ca_file {}: {}", extra_ca_file_.string(),
                                    std::generic_category().message(errno)));
    }
    ::close(fd);
    if (SSL_CTX_load_verify_file(ctx, extra_ca_file_.c_str()) != 1) {
      throw certs_error(fmt::format("upstream_ca_file {} does not hold a PEM certificate ({})",
                                    extra_ca_file_.string(), detail::openssl_errors()));
    }
  }
  // Like curl: a certificate placed in the trust store is an anchor even if it is an
  // intermediate, which is what someone adding a corporate or test CA to the bundle expects.
  X509_VERIFY_PARAM_set_flags(SSL_CTX_get0_param(ctx), X509_V_FLAG_PARTIAL_CHAIN);

  // The proxy speaks HTTP/1.1 upstream; saying so keeps an ALPN-aware server from choosing h2.
  static constexpr unsigned char http_1_1[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  if (SSL_CTX_set_alpn_protos(ctx, http_1_1, sizeof http_1_1) != 0) {
    detail::throw_openssl("cannot set ALPN");
  }
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
  SSL_CTX_sess_set_new_cb(ctx, keep_session);
}

upstream_tls_context::~upstream_tls_context() = default;

ssl_ctx_st* upstream_tls_context::new_reference() const {
  SSL_CTX_up_ref(ctx_.get());
  return ctx_.get();
}

std::size_t upstream_tls_context::cached_sessions() const {
  session_store* store =
      static_cast<session_store*>(SSL_CTX_get_ex_data(ctx_.get(), session_store_index()));
  std::lock_guard lock{store->mutex};
  return store->sessions.size();
}

bool prepare_upstream_ssl(ssl_st* ssl, std::string_view host, std::uint16_t port) {
  if (ssl == nullptr) return false;
  detail::host_buffer buffer;
  auto normalized = detail::normalize_host(host, buffer);
  if (!normalized) return false;
  detail::host_kind kind = detail::classify_host(*normalized);
  if (kind == detail::host_kind::invalid) return false;
  std::string name{*normalized};
  try {
    if (kind == detail::host_kind::dns_name) {
      SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
      if (SSL_set_tlsext_host_name(ssl, name.c_str()) != 1 ||
          SSL_set1_host(ssl, name.c_str()) != 1) {
        detail::discard_openssl_errors();
        return false;
      }
    } else if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name.c_str()) != 1) {
      detail::discard_openssl_errors();
      return false;
    }
    offer_session(ssl, name, port);
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

std::string verify_error_text(const ssl_st* ssl) {
  return X509_verify_cert_error_string(SSL_get_verify_result(ssl));
}

}  // namespace sbx::certs
