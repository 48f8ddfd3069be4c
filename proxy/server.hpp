// Runs the proxy: the HTTP forward / CONNECT listener, the control socket, the decision log
// writer, and the rule reloader. This header is all the CLI needs; everything else in proxy/ is
// private to it.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "config/config.hpp"

namespace sbx::keychain {
class secret_store;
}

namespace sbx::proxy {

struct run_options {
  config::settings settings;
  std::filesystem::path state_dir;  // SBX_HOME, already created 0700
  // Reloaded on SIGHUP / POST /v1/reload; nullopt = embedded defaults (+ $SBX_CONFIG).
  std::optional<std::filesystem::path> config_file;
  bool allow_anonymous = false;  // permit a non-loopback listen address without sandbox tokens
  unsigned threads = 0;          // 0 = one io_context per core
  // Where credentials come from; null = no injection (every CONNECT without rules is a tunnel).
  std::shared_ptr<keychain::secret_store> secrets;
};

// Blocks until SIGTERM/SIGINT, then drains and returns the process exit code (0 on a clean stop).
// Prints "sbx proxy listening on 127.0.0.1:PORT" on stderr once it accepts connections (tests read
// the port from that line when listening on port 0). Throws std::exception on start-up failures
// with a message that says what to do.
int run_proxy(const run_options& options);

}  // namespace sbx::proxy
