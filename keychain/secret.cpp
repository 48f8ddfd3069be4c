#include "keychain/secret.hpp"

#include <fmt/format.h>
#include <openssl/crypto.h>

namespace sbx::keychain {

namespace {

// Shown around the masked middle; with more than 12 characters at least 5 stay hidden, which
// keeps "at most the first 4 and last 4" from revealing most of a short value.
constexpr std::size_t kMaskedEdge = 4;
constexpr std::size_t kMaskedMinLength = 13;

}  // namespace

secret& secret::operator=(const secret& other) {
  if (this != &other) {
    // Wiping first: assigning a shorter value reuses the buffer and would leave the old tail in it.
    wipe();
    value_ = other.value_;
  }
  return *this;
}

secret& secret::operator=(secret&& other) noexcept {
  if (this != &other) {
    wipe();
    value_ = std::move(other.value_);
    // A short value lives in the small-string buffer, so moving copies it and leaves the bytes
    // behind.
    other.wipe();
  }
  return *this;
}

std::string secret::masked() const {
  if (value_.size() < kMaskedMinLength) return "****";
  return fmt::format("{}****...****{}", std::string_view(value_).substr(0, kMaskedEdge),
                     std::string_view(value_).substr(value_.size() - kMaskedEdge));
}

bool operator==(const secret& a, const secret& b) {
  // Constant time, so comparing a guess against a stored key does not leak how much of it matched.
  return a.value_.size() == b.value_.size() &&
         CRYPTO_memcmp(a.value_.data(), b.value_.data(), a.value_.size()) == 0;
}

void secret::wipe() noexcept {
  // The whole capacity: an earlier, longer value may still sit beyond size().
  if (value_.capacity() > 0) OPENSSL_cleanse(value_.data(), value_.capacity());
  value_.clear();
}

std::string check_secret_value(std::string_view value) {
  if (value.empty()) return "the secret is empty";
  for (std::size_t i = 0; i < value.size(); ++i) {
    const auto byte = static_cast<unsigned char>(value[i]);
    // Positions and control bytes only: the message must not reveal any part of the secret.
    if (byte == '\n' || byte == '\r') {
      return fmt::format(
          "the secret contains a line break (at character {}); it would end the HTTP header it is "
          "written into",
          i + 1);
    }
    if (byte < 0x20 || byte == 0x7f) {
      return fmt::format("the secret contains the control character 0x{:02x} (at character {})",
                         byte, i + 1);
    }
    // API keys and tokens are ASCII; a non-ASCII byte is nearly always a pasted non-breaking space
    // or typographic quote, which the provider would reject with a confusing 401.
    if (byte > 0x7f) {
      return fmt::format(
          "the secret contains a non-ASCII character (at character {}); API keys are plain ASCII, "
          "check for a pasted non-breaking space or quote",
          i + 1);
    }
  }
  if (value.front() == ' ' || value.back() == ' ') {
    return "the secret starts or ends with a space; copy the key without surrounding blanks";
  }
  return {};
}

}  // namespace sbx::keychain
