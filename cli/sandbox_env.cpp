// `sbx sandbox env NAME`: the environment a sandbox needs, one KEY=value a line, ready for
// `docker run --env-file`.
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "certs/authority.hpp"
#include "cli/common.hpp"
#include "cli/keychain_access.hpp"
#include "config/config.hpp"
#include "policy/store/sandbox_token.hpp"

namespace sbx::cli {
namespace {

// Where Debian/Ubuntu, Fedora/RHEL and Alpine keep the system trust bundle.
constexpr const char* system_bundles[] = {"/etc/ssl/certs/ca-certificates.crt",
                                          "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"};

// SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and GIT_SSL_CAINFO replace a client's trust
// store rather than add to it; pointing them at the sbx CA alone would break every tunnelled
// (not intercepted) host. So they get the system bundle plus the sbx CA (so does npm's cafile);
// NODE_EXTRA_CA_CERTS is additive and gets the sbx CA alone.
std::filesystem::path write_ca_bundle(const std::filesystem::path& dir, const std::string& ca_pem) {
  std::string bundle;
  for (const char* path : system_bundles) {
    std::ifstream in(path);
    if (!in) continue;
    std::ostringstream text;
    text << in.rdbuf();
    bundle = text.str();
    break;
  }
  if (!bundle.empty() && bundle.back() != '\n') bundle += '\n';
  bundle += ca_pem;
  const auto file = dir / "ca-bundle.pem";
  const auto tmp = dir / "ca-bundle.pem.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << bundle;
    if (!out) throw failure(fmt::format("cannot write {}", tmp.string()));
  }
  std::filesystem::permissions(
      tmp, std::filesystem::perms::owner_read | std::filesystem::perms::owner_write |
               std::filesystem::perms::group_read | std::filesystem::perms::others_read);
  std::filesystem::rename(tmp, file);
  return file;
}

struct env_options {
  std::string name;
  std::string proxy_host;
  std::string ca_dir;
  bool new_token = false;
};

int print_env(const env_options& o) {
  auto st = open_state();
  require_sandbox(st.db, o.name);
  const auto settings = config::load(std::nullopt);
  auto store = open_keychain(st.dir, /*quiet=*/true);

  std::string token;
  if (!o.new_token) {
    if (auto t = store->get(o.name, sandbox_token_service)) token = std::string(t->reveal());
  }
  if (token.empty()) {
    if (!o.new_token) {
      throw failure(fmt::format(
          "the token of sandbox {} is not in the keychain; `sbx sandbox env {} --new-token` issues "
          "a new one (the old one stops working)",
          o.name, o.name));
    }
    token = store::make_sandbox_token();
    store->set(o.name, sandbox_token_service, keychain::secret{token});
    st.db.replace_token_hash(o.name, store::hash_sandbox_token(token));
    fmt::print(stderr, "sbx: issued a new token for sandbox {}; the old one no longer works\n",
               o.name);
  }

  const auto ca = certs::certificate_authority::load_or_create(st.dir);
  const auto bundle = write_ca_bundle(st.dir, ca.certificate_pem());
  const auto ca_pem = certs::certificate_authority::cert_path(st.dir);
  // Inside a container the files sit where the user mounts them (--ca-dir /etc/sbx).
  const auto shown_bundle = o.ca_dir.empty() ? bundle.string() : o.ca_dir + "/ca-bundle.pem";
  const auto shown_ca = o.ca_dir.empty() ? ca_pem.string() : o.ca_dir + "/ca.pem";

  auto listen = config::parse_endpoint(settings.listen);
  std::string host = o.proxy_host;
  if (host.empty()) {
    host = (listen.ip == "0.0.0.0" || listen.ip == "::") ? "127.0.0.1" : listen.ip;
    if (host.find(':') != std::string::npos) host = "[" + host + "]";
  }
  const auto url = fmt::format("http://{}:{}@{}:{}", o.name, token, host, listen.port);

  fmt::print("HTTP_PROXY={0}\nHTTPS_PROXY={0}\nhttp_proxy={0}\nhttps_proxy={0}\n", url);
  fmt::print("NO_PROXY=localhost,127.0.0.1,::1\nno_proxy=localhost,127.0.0.1,::1\n");
  fmt::print("SSL_CERT_FILE={0}\nREQUESTS_CA_BUNDLE={0}\nCURL_CA_BUNDLE={0}\nGIT_SSL_CAINFO={0}\n",
             shown_bundle);
  fmt::print("NODE_EXTRA_CA_CERTS={}\n", shown_ca);
  // npm's `cafile` replaces Node's trust store (and a global `cafile` in .npmrc would override
  // NODE_EXTRA_CA_CERTS, after which npm fails under interception): the whole bundle, as above.
  fmt::print("npm_config_cafile={}\n", shown_bundle);
  for (const auto& svc : settings.services) {
    const bool has_secret = store->get(o.name, svc.name) || store->get("", svc.name);
    if (!has_secret) continue;
    for (const auto& var : svc.env)
      fmt::print("{}=proxy-managed\n", var);
  }
  return exit_ok;
}

}  // namespace

void add_sandbox_env_command(CLI::App& sandbox, command_action& action) {
  static env_options o;
  auto* env = sandbox.add_subcommand(
      "env", "Print the environment a sandbox needs (for docker run --env-file)");
  env->add_option("name", o.name, "The sandbox")->required();
  env->add_option("--proxy-host", o.proxy_host,
                  "Host the sandbox reaches the proxy at (default: the listen address)");
  env->add_option("--ca-dir", o.ca_dir,
                  "Where the sandbox sees ca.pem and ca-bundle.pem (default: $SBX_HOME)");
  env->add_flag("--new-token", o.new_token, "Issue a new token (the old one stops working)");
  env->callback([&action] { action = [] { return print_env(o); }; });
}

}  // namespace sbx::cli
