#include "policy/store/sandbox_token.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <cstdint>

#include <fmt/format.h>

#include "policy/store/state_db.hpp"

namespace sbx::store {

namespace {

constexpr std::size_t token_bytes = 32;
constexpr std::size_t max_sandbox_name = 63;
constexpr std::size_t sha256_hex_length = 64;

// RFC 4648 section 5: URL- and filename-safe, so a token fits in a proxy URL's userinfo unescaped.
std::string base64url(const unsigned char* data, std::size_t size) {
  constexpr std::string_view alphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((size * 4 + 2) / 3);
  std::size_t i = 0;
  for (; i + 3 <= size; i += 3) {
    std::uint32_t v = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  if (std::size_t rest = size - i; rest > 0) {
    std::uint32_t v = data[i] << 16;
    if (rest == 2) v |= data[i + 1] << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    if (rest == 2) out += alphabet[(v >> 6) & 63];
  }
  return out;
}

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

}  // namespace

std::string make_sandbox_token() {
  std::array<unsigned char, token_bytes> bytes{};
  if (RAND_bytes(bytes.data(), static_cast<int>(bytes.size())) != 1) {
    throw store_error(
        "cannot make a sandbox token: the system random number generator failed; try again");
  }
  auto token = base64url(bytes.data(), bytes.size());
  OPENSSL_cleanse(bytes.data(), bytes.size());
  return token;
}

std::string hash_sandbox_token(std::string_view token) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  if (EVP_Digest(token.data(), token.size(), digest.data(), &length, EVP_sha256(), nullptr) != 1) {
    throw store_error("cannot hash a sandbox token: OpenSSL's SHA-256 failed");
  }
  constexpr std::string_view hex_digits = "0123456789abcdef";
  std::string hex;
  hex.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    hex += hex_digits[digest[i] >> 4];
    hex += hex_digits[digest[i] & 0x0f];
  }
  return hex;
}

bool sandbox_token_matches(std::string_view token, std::string_view stored_hash) {
  // The length says nothing about the token (every valid hash is 64 characters), so refusing a
  // malformed hash early leaks nothing; the digests themselves are compared in constant time.
  if (stored_hash.size() != sha256_hex_length) return false;
  auto actual = hash_sandbox_token(token);
  return actual.size() == stored_hash.size() &&
         CRYPTO_memcmp(actual.data(), stored_hash.data(), actual.size()) == 0;
}

void validate_sandbox_name(std::string_view name) {
  bool ok = !name.empty() && name.size() <= max_sandbox_name && name.front() != '-' &&
            name.front() != '_';
  for (char c : name)
    ok = ok && name_char(c);
  if (ok) return;
  std::string shown;
  for (char c : name.substr(0, 80)) {
    shown += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
  }
  throw store_error(fmt::format(
      "invalid sandbox name '{}': use 1-{} characters from a-z, 0-9, '-' and '_', starting with a "
      "letter or digit",
      shown, max_sandbox_name));
}

}  // namespace sbx::store
