#include <arpa/inet.h>

#include <openssl/err.h>
#include <openssl/rand.h>

#include <fmt/format.h>

#include "certs/detail/openssl.hpp"

namespace sbx::certs {

void x509_deleter::operator()(x509_st* cert) const noexcept {
  X509_free(cert);
}
void pkey_deleter::operator()(evp_pkey_st* key) const noexcept {
  EVP_PKEY_free(key);
}

}  // namespace sbx::certs

namespace sbx::certs::detail {

std::string openssl_errors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    std::array<char, 256> line{};
    ERR_error_string_n(code, line.data(), line.size());
    if (!text.empty()) text += "; ";
    text += line.data();
  }
  return text.empty() ? std::string{"no OpenSSL error reported"} : text;
}

void discard_openssl_errors() noexcept {
  ERR_clear_error();
}

void throw_openssl(std::string_view what) {
  throw certs_error(fmt::format("{}: {}", what, openssl_errors()));
}

void set_random_serial(X509* cert) {
  std::array<unsigned char, 16> bytes{};
  do {
    if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
      throw_openssl("cannot draw a random serial number");
    }
  } while (bytes == std::array<unsigned char, 16>{});  // zero is not a valid serial
  // BN_bin2bn reads the bytes as unsigned, so the serial is positive.
  bignum_ptr bn{BN_bin2bn(bytes.data(), static_cast<int>(bytes.size()), nullptr)};
  if (!bn || !BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert))) {
    throw_openssl("cannot set the serial number");
  }
}

std::optional<std::string_view> normalize_host(std::string_view host,
                                               host_buffer& buffer) noexcept {
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  if (host.empty() || host.size() > buffer.size()) return std::nullopt;
  for (std::size_t i = 0; i < host.size(); ++i) {
    char c = host[i];
    buffer[i] = (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return std::string_view{buffer.data(), host.size()};
}

std::string printable(std::string_view host) {
  constexpr std::size_t limit = 256;
  std::string text{host.substr(0, limit)};
  for (char& c : text) {
    if (c < 0x20 || c > 0x7e) c = '?';
  }
  if (host.size() > limit) text += "...";
  return text;
}

host_kind classify_host(std::string_view normalized) noexcept {
  if (normalized.empty() || normalized.size() > max_host_length) return host_kind::invalid;
  // inet_pton needs a terminated string; the longest IPv6 text form is 45 characters.
  std::array<char, 64> text{};
  if (normalized.size() < text.size()) {
    normalized.copy(text.data(), normalized.size());
    std::array<unsigned char, 16> address{};
    if (inet_pton(AF_INET, text.data(), address.data()) == 1) return host_kind::ipv4;
    if (inet_pton(AF_INET6, text.data(), address.data()) == 1) return host_kind::ipv6;
  }
  if (normalized.back() == '.') return host_kind::invalid;
  std::size_t label_length = 0;
  for (char c : normalized) {
    if (c == '.') {
      if (label_length == 0) return host_kind::invalid;
      label_length = 0;
      continue;
    }
    bool allowed = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!allowed || ++label_length > 63) return host_kind::invalid;
  }
  return host_kind::dns_name;
}

}  // namespace sbx::certs::detail
