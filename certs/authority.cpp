#include "certs/authority.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <ctime>
#include <optional>
#include <system_error>
#include <utility>

#include <openssl/crypto.h>
#include <openssl/pem.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "certs/detail/openssl.hpp"

namespace sbx::certs {
namespace {

namespace fs = std::filesystem;
constexpr std::string_view rotate_hint =
    "Restore the original file, or run `sbx ca rotate` to make a new CA (sandboxes must then be "
    "given the new ca.pem).";
constexpr int ca_validity_days = 3652;  // ten years, leap days included
constexpr long ca_backdate_seconds = 3600;
constexpr auto ca_expiry_warning = std::chrono::hours{24 * 30};
// RFC 5280 appendix A: ub-common-name is 64 characters.
constexpr std::size_t max_common_name = 64;

std::string errno_text(int error) {
  return std::generic_category().message(error);
}

// An open file descriptor, closed on scope exit.
class unique_fd {
 public:
  explicit unique_fd(int fd) : fd_(fd) {}
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  ~unique_fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_;
};

// Serialises load_or_create and rotate between processes (the proxy starting while `sbx ca
// rotate` runs): flock on the state directory itself, so no lock file is left behind.
class directory_lock {
 public:
  explicit directory_lock(const fs::path& dir)
      : fd_(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) {
    if (fd_.get() < 0) {
      throw certs_error(
          fmt::format("cannot open state directory {}: {}", dir.string(), errno_text(errno)));
    }
    while (::flock(fd_.get(), LOCK_EX) != 0) {
      if (errno != EINTR) {
        throw certs_error(
            fmt::format("cannot lock state directory {}: {}", dir.string(), errno_text(errno)));
      }
    }
  }
  [[nodiscard]] int fd() const { return fd_.get(); }

 private:
  unique_fd fd_;
};

void ensure_directory(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    throw certs_error(
        fmt::format("cannot create state directory {}: {}", dir.string(), errno_text(errno)));
  }
}

bool file_exists(const fs::path& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) return true;
  if (errno == ENOENT) return false;
  throw certs_error(
      fmt::format("cannot inspect {}: {}. {}", path.string(), errno_text(errno), rotate_hint));
}

std::string read_file(const fs::path& path) {
  unique_fd fd{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (fd.get() < 0) {
    throw certs_error(
        fmt::format("cannot read {}: {}. {}", path.string(), errno_text(errno), rotate_hint));
  }
  std::string text;
  std::array<char, 4096> chunk{};
  for (;;) {
    ssize_t n = ::read(fd.get(), chunk.data(), chunk.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      throw certs_error(
          fmt::format("cannot read {}: {}. {}", path.string(), errno_text(errno), rotate_hint));
    }
    text.append(chunk.data(), static_cast<std::size_t>(n));
  }
  return text;
}

void write_all(int fd, std::string_view data, const fs::path& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw certs_error(fmt::format("cannot write {}: {}", path.string(), errno_text(errno)));
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
}

// A file written beside its final name and renamed over it, so a reader sees the old content or
// the new one, never a torn file. The temporary file is created with its final mode (mkstemp
// makes it 0600), so the private key is never readable by others, not even briefly.
class staged_file {
 public:
  staged_file(const fs::path& final_path, std::string_view content, mode_t mode)
      : final_path_(final_path) {
    std::string pattern =
        (final_path.parent_path() / ("." + final_path.filename().string() + ".XXXXXX")).string();
    unique_fd fd{::mkostemp(pattern.data(), O_CLOEXEC)};
    if (fd.get() < 0) {
      throw certs_error(fmt::format("cannot create a temporary file for {}: {}",
                                    final_path.string(), errno_text(errno)));
    }
    temp_path_ = pattern;
    if (::fchmod(fd.get(), mode) != 0) {
      throw certs_error(
          fmt::format("cannot set the mode of {}: {}", temp_path_.string(), errno_text(errno)));
    }
    write_all(fd.get(), content, temp_path_);
    if (::fsync(fd.get()) != 0) {
      throw certs_error(fmt::format("cannot sync {}: {}", temp_path_.string(), errno_text(errno)));
    }
  }
  staged_file(const staged_file&) = delete;
  staged_file& operator=(const staged_file&) = delete;
  ~staged_file() {
    if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  }

  void commit() {
    if (::rename(temp_path_.c_str(), final_path_.c_str()) != 0) {
      throw certs_error(fmt::format("cannot rename {} to {}: {}", temp_path_.string(),
                                    final_path_.string(), errno_text(errno)));
    }
    temp_path_.clear();
  }

 private:
  fs::path final_path_;
  fs::path temp_path_;
};

std::chrono::system_clock::time_point to_time_point(const ASN1_TIME* time) {
  std::tm tm{};
  if (ASN1_TIME_to_tm(time, &tm) != 1) detail::throw_openssl("cannot read a certificate time");
  return std::chrono::system_clock::from_time_t(::timegm(&tm));
}

std::string utc_date(std::chrono::system_clock::time_point when) {
  std::time_t t = std::chrono::system_clock::to_time_t(when);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  return fmt::format("{:04}-{:02}-{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday);
}

std::string local_hostname() {
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0 || name[0] == '\0') return "unknown host";
  return name.data();
}

// The CN must fit ub-common-name, so a long host name is shortened rather than the CA refused.
std::string ca_common_name(std::chrono::system_clock::time_point now) {
  std::string date = utc_date(now);
  std::string host = local_hostname();
  std::size_t fixed = fmt::formatted_size("sbx-proxy local CA (, {})", date);
  if (host.size() + fixed > max_common_name) host.resize(max_common_name - fixed);
  return fmt::format("sbx-proxy local CA ({}, {})", host, date);
}

void add_extension(X509* cert, X509V3_CTX* ctx, int nid, const char* value) {
  detail::x509_extension_ptr ext{X509V3_EXT_nconf_nid(nullptr, ctx, nid, value)};
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    detail::throw_openssl(fmt::format("cannot add the CA extension {}", OBJ_nid2sn(nid)));
  }
}

std::pair<x509_ptr, pkey_ptr> generate_ca() {
  pkey_ptr key{EVP_EC_gen("P-256")};
  if (!key) detail::throw_openssl("cannot generate the CA key");

  x509_ptr cert{X509_new()};
  if (!cert || X509_set_version(cert.get(), X509_VERSION_3) != 1) {
    detail::throw_openssl("cannot create the CA certificate");
  }
  detail::set_random_serial(cert.get());

  auto now = std::chrono::system_clock::now();
  std::string cn = ca_common_name(now);
  X509_NAME* name = X509_get_subject_name(cert.get());
  auto add_name = [&](int nid, const std::string& value) {
    if (X509_NAME_add_entry_by_NID(name, nid, MBSTRING_UTF8,
                                   reinterpret_cast<const unsigned char*>(value.data()),
                                   static_cast<int>(value.size()), -1, 0) != 1) {
      detail::throw_openssl("cannot set the CA subject");
    }
  };
  add_name(NID_organizationName, "sbx-proxy");
  add_name(NID_commonName, cn);
  if (X509_set_issuer_name(cert.get(), name) != 1) detail::throw_openssl("cannot set the issuer");

  if (!X509_gmtime_adj(X509_getm_notBefore(cert.get()), -ca_backdate_seconds) ||
      !X509_time_adj_ex(X509_getm_notAfter(cert.get()), ca_validity_days, 0, nullptr)) {
    detail::throw_openssl("cannot set the CA validity");
  }
  if (X509_set_pubkey(cert.get(), key.get()) != 1) detail::throw_openssl("cannot set the CA key");

  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, cert.get(), cert.get(), nullptr, nullptr, 0);
  // pathlen:0: this CA signs leaves only, so a leaf that leaked could not act as a CA either.
  add_extension(cert.get(), &ctx, NID_basic_constraints, "critical,CA:TRUE,pathlen:0");
  add_extension(cert.get(), &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
  add_extension(cert.get(), &ctx, NID_subject_key_identifier, "hash");

  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    detail::throw_openssl("cannot sign the CA certificate");
  }
  return {std::move(cert), std::move(key)};
}

std::string to_pem(X509* cert) {
  detail::bio_ptr bio{BIO_new(BIO_s_mem())};
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) {
    detail::throw_openssl("cannot encode the CA certificate");
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(size));
}

std::string key_to_pem(EVP_PKEY* key) {
  detail::bio_ptr bio{BIO_new(BIO_s_mem())};
  if (!bio ||
      PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1) {
    detail::throw_openssl("cannot encode the CA key");
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(size));
}

// Never prompts on the terminal for a passphrase (OpenSSL's default when no callback is given):
// an encrypted key is reported as unreadable instead.
int refuse_passphrase(char*, int, int, void*) {
  return 0;
}

std::pair<x509_ptr, pkey_ptr> read_pair(const fs::path& cert_path, const fs::path& key_path,
                                        bool have_cert, bool have_key) {
  if (!have_cert || !have_key) {
    const fs::path& present = have_cert ? cert_path : key_path;
    const fs::path& missing = have_cert ? key_path : cert_path;
    throw certs_error(
        fmt::format("{} exists but {} is missing; the CA cannot be used without "
                    "both. {}",
                    present.string(), missing.string(), rotate_hint));
  }
  std::string cert_text = read_file(cert_path);
  std::string key_text = read_file(key_path);

  detail::bio_ptr cert_bio{BIO_new_mem_buf(cert_text.data(), static_cast<int>(cert_text.size()))};
  x509_ptr cert{cert_bio ? PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr) : nullptr};
  if (!cert) {
    throw certs_error(fmt::format("{} does not hold a PEM certificate ({}). {}", cert_path.string(),
                                  detail::openssl_errors(), rotate_hint));
  }
  detail::bio_ptr key_bio{BIO_new_mem_buf(key_text.data(), static_cast<int>(key_text.size()))};
  pkey_ptr key{key_bio ? PEM_read_bio_PrivateKey(key_bio.get(), nullptr, refuse_passphrase, nullptr)
                       : nullptr};
  // The key text held a secret: do not leave it in freed memory.
  OPENSSL_cleanse(key_text.data(), key_text.size());
  if (!key) {
    throw certs_error(fmt::format("{} does not hold an unencrypted PEM private key ({}). {}",
                                  key_path.string(), detail::openssl_errors(), rotate_hint));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    detail::discard_openssl_errors();
    throw certs_error(
        fmt::format("{} and {} do not belong together (the key does not match the "
                    "certificate). {}",
                    cert_path.string(), key_path.string(), rotate_hint));
  }
  if (X509_check_ca(cert.get()) == 0) {
    throw certs_error(
        fmt::format("{} is not a CA certificate (basicConstraints CA:TRUE is "
                    "missing). {}",
                    cert_path.string(), rotate_hint));
  }
  if (X509_cmp_current_time(X509_get0_notAfter(cert.get())) <= 0) {
    throw certs_error(fmt::format(
        "{} expired on {}: sandboxes would refuse every intercepted connection. Run `sbx ca "
        "rotate` to make a new CA (sandboxes must then be given the new ca.pem).",
        cert_path.string(), utc_date(to_time_point(X509_get0_notAfter(cert.get())))));
  }

  auto expires = to_time_point(X509_get0_notAfter(cert.get()));
  if (expires - std::chrono::system_clock::now() < ca_expiry_warning) {
    spdlog::warn("{} expires on {}; leaves will not outlive it. Run `sbx ca rotate` before then.",
                 cert_path.string(), utc_date(expires));
  }
  struct stat st {};
  if (::stat(key_path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    spdlog::warn(
        "{} is readable by other users (mode {:o}): anyone who can read it can "
        "impersonate any host to your sandboxes. Run: chmod 600 {}",
        key_path.string(), st.st_mode & 0777, key_path.string());
  }
  return {std::move(cert), std::move(key)};
}

void sync_directory(const directory_lock& lock, const fs::path& dir) {
  if (::fsync(lock.fd()) != 0) {
    spdlog::warn("cannot sync directory {}: {}", dir.string(), errno_text(errno));
  }
}

// The key is renamed first: a crash between the two renames leaves a mismatched pair, which the
// next load reports (and `sbx ca rotate` repairs) rather than a CA whose key is lost.
void write_pair(const directory_lock& lock, const fs::path& dir, X509* cert, EVP_PKEY* key) {
  std::string key_pem = key_to_pem(key);
  std::optional<staged_file> key_file;
  try {
    key_file.emplace(certificate_authority::key_path(dir), key_pem, 0600);
  } catch (...) {
    OPENSSL_cleanse(key_pem.data(), key_pem.size());
    throw;
  }
  OPENSSL_cleanse(key_pem.data(), key_pem.size());
  staged_file cert_file{certificate_authority::cert_path(dir), to_pem(cert), 0644};
  key_file->commit();
  cert_file.commit();
  sync_directory(lock, dir);
}

}  // namespace

certificate_authority::certificate_authority(x509_ptr cert, pkey_ptr key)
    : cert_(std::move(cert)), key_(std::move(key)) {
  pem_ = to_pem(cert_.get());
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (X509_digest(cert_.get(), EVP_sha256(), digest.data(), &length) != 1) {
    detail::throw_openssl("cannot compute the CA fingerprint");
  }
  for (unsigned int i = 0; i < length; ++i) {
    if (i != 0) fingerprint_ += ':';
    fingerprint_ += fmt::format("{:02X}", digest[i]);
  }
  not_before_ = to_time_point(X509_get0_notBefore(cert_.get()));
  not_after_ = to_time_point(X509_get0_notAfter(cert_.get()));
  // Fills OpenSSL's per-certificate extension cache now, before threads share the certificate.
  X509_check_purpose(cert_.get(), -1, 0);
}

certificate_authority::~certificate_authority() = default;

certificate_authority certificate_authority::load_or_create(const fs::path& state_dir) {
  ensure_directory(state_dir);
  directory_lock lock{state_dir};
  fs::path cert_file = cert_path(state_dir);
  fs::path key_file = key_path(state_dir);
  bool have_cert = file_exists(cert_file);
  bool have_key = file_exists(key_file);
  if (!have_cert && !have_key) {
    auto [cert, key] = generate_ca();
    write_pair(lock, state_dir, cert.get(), key.get());
    certificate_authority ca{std::move(cert), std::move(key)};
    spdlog::info("created a new local CA in {} (SHA-256 {})", cert_file.string(),
                 ca.fingerprint_sha256());
    return ca;
  }
  auto [cert, key] = read_pair(cert_file, key_file, have_cert, have_key);
  return certificate_authority{std::move(cert), std::move(key)};
}

certificate_authority certificate_authority::load(const fs::path& state_dir) {
  directory_lock lock{state_dir};
  fs::path cert_file = cert_path(state_dir);
  fs::path key_file = key_path(state_dir);
  bool have_cert = file_exists(cert_file);
  bool have_key = file_exists(key_file);
  if (!have_cert && !have_key) {
    throw certs_error(
        fmt::format("there is no CA in {} yet; it is created when `sbx proxy` first "
                    "starts",
                    state_dir.string()));
  }
  auto [cert, key] = read_pair(cert_file, key_file, have_cert, have_key);
  return certificate_authority{std::move(cert), std::move(key)};
}

certificate_authority certificate_authority::rotate(const fs::path& state_dir) {
  ensure_directory(state_dir);
  directory_lock lock{state_dir};
  auto [cert, key] = generate_ca();
  write_pair(lock, state_dir, cert.get(), key.get());
  certificate_authority ca{std::move(cert), std::move(key)};
  spdlog::info("rotated the local CA in {} (SHA-256 {})", cert_path(state_dir).string(),
               ca.fingerprint_sha256());
  return ca;
}

std::string certificate_authority::subject() const {
  detail::bio_ptr bio{BIO_new(BIO_s_mem())};
  if (!bio || X509_NAME_print_ex(bio.get(), X509_get_subject_name(cert_.get()), 0,
                                 XN_FLAG_SEP_CPLUS_SPC | ASN1_STRFLGS_RFC2253) < 0) {
    detail::throw_openssl("cannot print the CA subject");
  }
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(size));
}

}  // namespace sbx::certs
