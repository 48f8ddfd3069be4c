// A secret value (an API key): cannot be streamed or formatted by accident, and its memory is wiped
// when it is freed. Read it only where it is written into a request: reveal().
//
//   sbx::keychain::secret key{"sk-..."};
//   fmt::print("{}", key);          // prints "****"
//   req.set(field, key.reveal());   // the one deliberate use
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

namespace sbx::keychain {

class secret {
 public:
  secret() = default;
  explicit secret(std::string value) : value_(std::move(value)) {}
  secret(const secret&) = default;
  secret(secret&& other) noexcept : value_(std::move(other.value_)) { other.wipe(); }
  secret& operator=(const secret& other);
  secret& operator=(secret&& other) noexcept;
  ~secret() { wipe(); }

  [[nodiscard]] std::string_view reveal() const { return value_; }
  [[nodiscard]] bool empty() const { return value_.empty(); }
  [[nodiscard]] std::size_t size() const { return value_.size(); }
  // "sk-p****...****9xQz": first 4 and last 4 characters when longer than 12, else "****".
  [[nodiscard]] std::string masked() const;

  friend bool operator==(const secret& a, const secret& b);

  // No operator<<: streaming a secret does not compile.
  template <class Stream>
  friend Stream& operator<<(Stream&, const secret&) = delete;

 private:
  void wipe() noexcept;
  std::string value_;
};

// Refuses empty values and values with control characters (CR, LF, NUL, ...): a secret becomes a
// header value, and a CR/LF inside would let it forge headers. Returns the reason, empty if fine.
[[nodiscard]] std::string check_secret_value(std::string_view value);

}  // namespace sbx::keychain

template <>
struct fmt::formatter<sbx::keychain::secret> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const sbx::keychain::secret&, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format("****", ctx);
  }
};
