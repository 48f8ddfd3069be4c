// Credentials on the data path: an in-memory snapshot of the keychain (so no I/O thread ever waits
// on D-Bus or disk), and the header rewrite that puts a secret into a request.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include <boost/beast/http/fields.hpp>

#include "config/config.hpp"
#include "keychain/secret.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::proxy::detail {

// Every secret of the store, held as an immutable snapshot that is swapped whole on refresh.
class credential_cache {
 public:
  explicit credential_cache(std::shared_ptr<keychain::secret_store> store);

  // Re-reads every secret from the store. Blocking (D-Bus, disk): call it on the control thread.
  // Throws keychain::keychain_error; the previous snapshot stays in force then.
  void refresh();

  // The sandbox's own secret for the service, else the global one; null when neither exists.
  [[nodiscard]] std::shared_ptr<const keychain::secret> find(std::string_view sandbox,
                                                             std::string_view service) const;
  [[nodiscard]] std::size_t size() const;
  [[nodiscard]] std::string_view store_kind() const;

 private:
  using key = std::pair<std::string, std::string>;  // (scope, service); scope "" = global
  // Transparent ordering, so lookups by string_view pairs allocate nothing.
  struct key_less {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      const int c = std::string_view(a.first).compare(std::string_view(b.first));
      return c < 0 || (c == 0 && std::string_view(a.second) < std::string_view(b.second));
    }
  };
  struct snapshot {
    std::map<key, keychain::secret, key_less> secrets;
  };
  std::shared_ptr<keychain::secret_store> store_;
  std::atomic<std::shared_ptr<const snapshot>> current_;
};

enum class injection_status { injected, not_a_service_host, no_secret };

struct injection_outcome {
  injection_status status = injection_status::not_a_service_host;
  std::size_t forms_rewritten = 0;  // header forms the client sent, now carrying the secret
  bool default_added = false;       // the client sent none: the default form was added
};

// For a request to a host of `svc`: every header form of the service that the client sent (with a
// placeholder or anything else) is replaced by the real secret in that same form; when it sent
// none, the default (first) form is added. Each form appears once afterwards, so no placeholder
// survives. Secrets are checked for CR/LF when stored, so they cannot forge header lines.
injection_outcome inject_credential(boost::beast::http::fields& fields, const config::service& svc,
                                    const keychain::secret& secret);

}  // namespace sbx::proxy::detail
