// The proxy's local certificate authority: the CA that sandboxes trust so that the proxy can
// intercept TLS for hosts that get a credential. It lives in the state directory as ca.pem
// (world-readable) and ca-key.pem (0600) and is created on first use.
//
//   auto ca = sbx::certs::certificate_authority::load_or_create(state_dir);  // throws certs_error
//   fmt::print("{}", ca.certificate_pem());                                 // `sbx ca cert`
//   auto fresh = sbx::certs::certificate_authority::rotate(state_dir);       // `sbx ca rotate`
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

// OpenSSL's own struct tags (X509, EVP_PKEY, SSL_CTX, SSL, STACK_OF(X509)): declared here so that
// the public headers need no OpenSSL include.
struct x509_st;
struct evp_pkey_st;
struct ssl_ctx_st;
struct ssl_st;
struct stack_st_X509;

namespace sbx::certs {

// Raised while loading or creating the CA and while building TLS contexts; what() names the file
// or the host and says what to do next.
class certs_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct x509_deleter {
  void operator()(x509_st* cert) const noexcept;
};
struct pkey_deleter {
  void operator()(evp_pkey_st* key) const noexcept;
};
using x509_ptr = std::unique_ptr<x509_st, x509_deleter>;
using pkey_ptr = std::unique_ptr<evp_pkey_st, pkey_deleter>;

// An immutable CA certificate and its private key; safe to share between threads.
class certificate_authority {
 public:
  static constexpr std::string_view cert_file_name = "ca.pem";
  static constexpr std::string_view key_file_name = "ca-key.pem";

  // Loads ca.pem + ca-key.pem from state_dir, or creates both when neither exists (state_dir is
  // created 0700 if missing). A half-present, unreadable, corrupt, expired or mismatched pair is
  // an error naming the file: it is never replaced silently, since sandboxes already trust it.
  [[nodiscard]] static certificate_authority load_or_create(const std::filesystem::path& state_dir);
  // Loads an existing pair; a missing pair is an error too.
  [[nodiscard]] static certificate_authority load(const std::filesystem::path& state_dir);
  // Generates a new CA and replaces the pair on disk (each file replaced atomically).
  [[nodiscard]] static certificate_authority rotate(const std::filesystem::path& state_dir);

  [[nodiscard]] static std::filesystem::path cert_path(const std::filesystem::path& state_dir) {
    return state_dir / cert_file_name;
  }
  [[nodiscard]] static std::filesystem::path key_path(const std::filesystem::path& state_dir) {
    return state_dir / key_file_name;
  }

  certificate_authority(certificate_authority&&) noexcept = default;
  certificate_authority& operator=(certificate_authority&&) noexcept = default;
  ~certificate_authority();

  // Borrowed pointers, valid as long as this object.
  [[nodiscard]] x509_st* certificate() const noexcept { return cert_.get(); }
  [[nodiscard]] evp_pkey_st* private_key() const noexcept { return key_.get(); }

  [[nodiscard]] const std::string& certificate_pem() const noexcept { return pem_; }
  // SHA-256 of the DER certificate, upper-case hex pairs joined by ':' (as `openssl x509
  // -fingerprint -sha256` prints it).
  [[nodiscard]] const std::string& fingerprint_sha256() const noexcept { return fingerprint_; }
  [[nodiscard]] std::string subject() const;  // "CN=sbx-proxy local CA (host, 2025-01-31), O=..."
  [[nodiscard]] std::chrono::system_clock::time_point not_before() const noexcept {
    return not_before_;
  }
  [[nodiscard]] std::chrono::system_clock::time_point not_after() const noexcept {
    return not_after_;
  }

 private:
  certificate_authority(x509_ptr cert, pkey_ptr key);

  x509_ptr cert_;
  pkey_ptr key_;
  std::string pem_;
  std::string fingerprint_;
  std::chrono::system_clock::time_point not_before_;
  std::chrono::system_clock::time_point not_after_;
};

}  // namespace sbx::certs
