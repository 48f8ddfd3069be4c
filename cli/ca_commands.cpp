// `sbx ca cert|rotate`: the local CA that signs the leaf certificates of intercepted hosts.
#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "certs/authority.hpp"
#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "config/config.hpp"
#include "proxy/control_client.hpp"

namespace sbx::cli {
namespace {

int print_ca_cert() {
  auto dir = config::ensure_state_dir();
  auto ca = certs::certificate_authority::load_or_create(dir);
  fmt::print("{}", ca.certificate_pem());
  return exit_ok;
}

int rotate_ca(bool force) {
  if (!force) {
    throw usage_error(
        "rotating the CA breaks every sandbox that trusts the current one until it gets the new "
        "ca.pem; run `sbx ca rotate -f` to go ahead");
  }
  auto dir = config::ensure_state_dir();
  auto ca = certs::certificate_authority::rotate(dir);
  fmt::print("New CA {}\nFingerprint (SHA-256) {}\n", ca.subject(), ca.fingerprint_sha256());
  const auto socket = control_socket_path(dir);
  if (std::filesystem::exists(socket)) {
    auto r = proxy::control_request(socket, "POST", "/v1/ca/rotated");
    if (r && r->status == 200) {
      fmt::print("The running proxy now signs with the new CA.\n");
    } else if (r) {
      fmt::print(stderr,
                 "sbx: warning: the running proxy did not take the new CA ({}); restart it\n",
                 r->body);
    }
  }
  fmt::print(
      "Give sandboxes the new certificate: sbx ca cert > ca.pem (or sbx sandbox env NAME)\n");
  return exit_ok;
}

}  // namespace

void add_ca_commands(CLI::App& app, command_action& action) {
  auto* ca = app.add_subcommand("ca", "The local CA sandboxes must trust for intercepted hosts");
  ca->require_subcommand(1);
  ca->add_subcommand("cert", "Print the CA certificate (PEM)")->callback([&action] {
    action = [] { return print_ca_cert(); };
  });
  static bool force = false;
  auto* rotate = ca->add_subcommand("rotate", "Make a new CA (old leaf certificates are dropped)");
  rotate->add_flag("-f,--force", force, "Do it without asking");
  rotate->callback([&action] { action = [] { return rotate_ca(force); }; });
}

}  // namespace sbx::cli
