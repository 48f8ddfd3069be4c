// A client for the running proxy's control socket ($SBX_HOME/sbx.sock, HTTP/1.1 + JSON).
#pragma once

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace sbx::proxy {

struct control_response {
  int status = 0;
  std::string body;
};

// Sends one request; nullopt when no proxy listens on the socket (not running), with *error set.
[[nodiscard]] std::optional<control_response> control_request(
    const std::filesystem::path& socket_path, std::string_view method, std::string_view target,
    std::string_view body = {}, std::chrono::milliseconds timeout = std::chrono::seconds(3),
    std::string* error = nullptr);

}  // namespace sbx::proxy
