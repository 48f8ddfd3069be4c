#include "proxy/detail/credentials.hpp"

#include <fmt/format.h>

namespace sbx::proxy::detail {
namespace {

struct header_form {
  std::string_view name;
  std::string_view prefix;  // value text before {secret}
  std::string_view suffix;  // value text after {secret}
};

// Forms are validated at config load as "Name: value with {secret}".
header_form split_form(std::string_view form) {
  const auto colon = form.find(':');
  header_form f;
  f.name = form.substr(0, colon);
  auto value = form.substr(colon + 1);
  while (!value.empty() && value.front() == ' ')
    value.remove_prefix(1);
  const auto at = value.find("{secret}");
  f.prefix = value.substr(0, at);
  f.suffix = value.substr(at + 8);
  return f;
}

std::string render(const header_form& f, const keychain::secret& secret) {
  std::string v;
  v.reserve(f.prefix.size() + secret.size() + f.suffix.size());
  v.append(f.prefix).append(secret.reveal()).append(f.suffix);
  return v;
}

// Wipes a rendered header value once Beast has copied it into the fields.
struct wiping_string {
  std::string value;
  ~wiping_string() {
    std::fill(value.begin(), value.end(), '\0');
    asm volatile("" : : "r"(value.data()) : "memory");
  }
};

}  // namespace

credential_cache::credential_cache(std::shared_ptr<keychain::secret_store> store)
    : store_(std::move(store)) {
  current_.store(std::make_shared<const snapshot>());
}

void credential_cache::refresh() {
  auto next = std::make_shared<snapshot>();
  if (store_) {
    for (auto& s : store_->list()) {
      // A stored value that fails the checks (a trailing newline) is never injected.
      if (!keychain::check_secret_value(s.value.reveal()).empty()) continue;
      next->secrets.emplace(key{s.scope, s.service}, std::move(s.value));
    }
  }
  current_.store(std::move(next));
}

std::shared_ptr<const keychain::secret> credential_cache::find(std::string_view sandbox,
                                                               std::string_view service) const {
  auto snap = current_.load();
  auto lookup = [&](std::string_view scope) -> const keychain::secret* {
    auto it = snap->secrets.find(std::pair<std::string_view, std::string_view>(scope, service));
    return it == snap->secrets.end() ? nullptr : &it->second;
  };
  const keychain::secret* s = sandbox.empty() ? nullptr : lookup(sandbox);
  if (!s) s = lookup("");
  if (!s) return nullptr;
  return {snap, s};  // aliasing: keeps the snapshot alive while the secret is in use
}

std::size_t credential_cache::size() const {
  return current_.load()->secrets.size();
}

std::string_view credential_cache::store_kind() const {
  return store_ ? store_->kind() : std::string_view("none");
}

injection_outcome inject_credential(boost::beast::http::fields& fields, const config::service& svc,
                                    const keychain::secret& secret) {
  injection_outcome out;
  out.status = injection_status::injected;
  for (const auto& form_text : svc.headers) {
    const auto form = split_form(form_text);
    if (fields.count(form.name) == 0) continue;
    wiping_string v{render(form, secret)};
    fields.set(form.name, v.value);  // set() replaces every existing instance
    ++out.forms_rewritten;
  }
  if (out.forms_rewritten == 0 && !svc.headers.empty()) {
    const auto form = split_form(svc.headers.front());
    wiping_string v{render(form, secret)};
    fields.set(form.name, v.value);
    out.default_added = true;
  }
  return out;
}

}  // namespace sbx::proxy::detail
