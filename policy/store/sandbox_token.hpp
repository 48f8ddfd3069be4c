// Sandbox credentials: a random token shown once, stored only as a hash, checked in constant time.
#pragma once

#include <string>
#include <string_view>

namespace sbx::store {

// A new random token: 32 bytes from the OS CSPRNG, base64url without padding.
[[nodiscard]] std::string make_sandbox_token();
// SHA-256 of the token, hex. Tokens are 256-bit random values, so a plain hash suffices (no KDF).
[[nodiscard]] std::string hash_sandbox_token(std::string_view token);
// Compares hash_sandbox_token(token) with stored_hash in constant time.
[[nodiscard]] bool sandbox_token_matches(std::string_view token, std::string_view stored_hash);
// Sandbox names: 1-63 of [a-z0-9-_], starting with a letter or digit. Throws store_error otherwise.
void validate_sandbox_name(std::string_view name);

}  // namespace sbx::store
