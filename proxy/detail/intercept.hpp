// TLS interception: for a CONNECT whose host gets a credential, has per-request (method/path)
// rules, or when intercept_all is set. The client gets a leaf minted by the local CA; the proxy
// opens its own TLS to the upstream, verified against the real host name; then each request inside
// is decided, logged, injected and relayed on its own.
#pragma once

#include <memory>
#include <string>

#include <boost/asio/ssl/context.hpp>

#include "certs/tls_contexts.hpp"
#include "proxy/detail/credentials.hpp"
#include "proxy/detail/net.hpp"
#include "proxy/detail/session.hpp"
#include "proxy/detail/state.hpp"
#include "proxy/detail/upstream.hpp"
#include "proxy/http_checks.hpp"

namespace sbx::proxy::detail {

struct intercept_plan {
  bool intercept = false;
  const config::service* service = nullptr;  // the host's credential service, if any
  std::string why;  // "credential openai", "method/path rules", "intercept_all"
};

// An idle upstream TLS connection, verified, kept by its I/O thread for the next intercepted
// CONNECT of the same sandbox to the same host (intercept.cpp).
struct pooled_upstream;

struct intercept_request {
  proxy_state& st;
  std::shared_ptr<const config::settings> cfg;
  beast::tcp_stream& client;
  beast::flat_buffer& client_buf;
  upstream_result upstream;  // a new TCP connection, when `pooled` is null
  authority where;
  row_builder& connect_row;
  intercept_plan plan;
  const std::string& client_addr;
  bool& idle;
  const bool& draining;
  std::shared_ptr<pooled_upstream> pooled;  // or an idle verified connection to use again
};

class interception {
 public:
  interception(std::shared_ptr<certs::server_tls_context> server,
               std::shared_ptr<certs::upstream_tls_context> upstream,
               std::shared_ptr<credential_cache> credentials);

  [[nodiscard]] intercept_plan plan(const policy::rule_set& rules, const config::settings& cfg,
                                    std::string_view sandbox, std::string_view host,
                                    std::uint16_t port) const;
  asio::awaitable<void> run(intercept_request& r);

  // An idle connection this I/O thread kept from an earlier intercepted CONNECT of `sandbox` to
  // `where`, to one of the addresses policy allows now (`choice`); `up` then gets that address
  // and its decision. Null when there is none.
  std::shared_ptr<pooled_upstream> take_pooled(const asio::any_io_executor& ex,
                                               std::string_view sandbox, const authority& where,
                                               upstream_choice& choice, upstream_result& up);

  [[nodiscard]] credential_cache& credentials() { return *credentials_; }
  [[nodiscard]] certs::server_tls_context& server_context() { return *server_; }

 private:
  std::shared_ptr<certs::server_tls_context> server_;
  std::shared_ptr<certs::upstream_tls_context> upstream_;
  std::shared_ptr<credential_cache> credentials_;
  asio::ssl::context server_asio_;
  asio::ssl::context upstream_asio_;
  std::uint64_t generation_;  // pooled connections of another instance (older settings) never mix
};

}  // namespace sbx::proxy::detail
