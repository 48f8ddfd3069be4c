// The desktop keychain through libsecret (Secret Service D-Bus API: gnome-keyring, KeePassXC).
//
// Items use the schema "dev.sbx.Credential" with the attributes application=sbx, scope and
// service, and a label a person recognises in Seahorse or `secret-tool search application sbx`.
#include <algorithm>
#include <memory>
#include <mutex>

#include <fmt/format.h>
#include <libsecret/secret.h>
#include <spdlog/spdlog.h>

#include "keychain/detail/glib_ptr.hpp"
#include "keychain/detail/naming.hpp"
#include "keychain/detail/secret_service_probe.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::keychain {

namespace {

using detail::error_ptr;
using detail::hash_table_ptr;
using detail::object_ptr;

constexpr const char* kApplication = "sbx";
// An empty attribute value is awkward to search for with `secret-tool` and looks like a mistake in
// Seahorse, so the global scope gets a word of its own; the "sandbox:" prefix keeps a sandbox
// that happens to be named "global" apart from it.
constexpr std::string_view kGlobalScope = "global";
constexpr std::string_view kSandboxScopePrefix = "sandbox:";
constexpr std::string_view kWhatToDo =
    "If the keyring is locked, unlock it (for example in Seahorse) and try again, or set "
    "SBX_KEYCHAIN=file.";

const SecretSchema kSchema = {
    "dev.sbx.Credential",
    SECRET_SCHEMA_NONE,
    {
        {"application", SECRET_SCHEMA_ATTRIBUTE_STRING},
        {"scope", SECRET_SCHEMA_ATTRIBUTE_STRING},
        {"service", SECRET_SCHEMA_ATTRIBUTE_STRING},
        {nullptr, SECRET_SCHEMA_ATTRIBUTE_STRING},
    },
};

struct secret_value_deleter {
  void operator()(SecretValue* value) const { secret_value_unref(value); }
};
using value_ptr = std::unique_ptr<SecretValue, secret_value_deleter>;

struct item_list_deleter {
  void operator()(GList* items) const { g_list_free_full(items, g_object_unref); }
};
using item_list_ptr = std::unique_ptr<GList, item_list_deleter>;

// secret_password_free() wipes before freeing.
struct password_deleter {
  void operator()(gchar* password) const { secret_password_free(password); }
};
using password_ptr = std::unique_ptr<gchar, password_deleter>;

std::string scope_attribute(std::string_view scope) {
  if (scope.empty()) return std::string(kGlobalScope);
  return std::string(kSandboxScopePrefix) + std::string(scope);
}

std::optional<std::string> scope_from_attribute(std::string_view attribute) {
  if (attribute == kGlobalScope) return std::string();
  if (attribute.starts_with(kSandboxScopePrefix) && attribute.size() > kSandboxScopePrefix.size()) {
    return std::string(attribute.substr(kSandboxScopePrefix.size()));
  }
  return std::nullopt;
}

// The strings must outlive the table: it borrows their characters.
hash_table_ptr attributes(const std::string* scope, const std::string* service) {
  hash_table_ptr table(g_hash_table_new(g_str_hash, g_str_equal));
  g_hash_table_insert(table.get(), const_cast<char*>("application"),
                      const_cast<char*>(kApplication));
  if (scope != nullptr) {
    g_hash_table_insert(table.get(), const_cast<char*>("scope"), const_cast<char*>(scope->c_str()));
  }
  if (service != nullptr) {
    g_hash_table_insert(table.get(), const_cast<char*>("service"),
                        const_cast<char*>(service->c_str()));
  }
  return table;
}

std::string attribute_of(GHashTable* table, const char* name) {
  const auto* value = static_cast<const char*>(g_hash_table_lookup(table, name));
  return value != nullptr ? value : "";
}

class libsecret_store final : public secret_store {
 public:
  libsecret_store(object_ptr<GDBusConnection> bus, object_ptr<SecretService> service)
      : bus_(std::move(bus)), service_(std::move(service)) {}

  std::optional<secret> get(std::string_view scope, std::string_view service) override {
    const std::string scope_value = scope_attribute(scope);
    const std::string service_value(service);
    const hash_table_ptr query = attributes(&scope_value, &service_value);
    GError* raw_error = nullptr;
    password_ptr password;
    {
      const std::lock_guard lock(mutex_);
      password.reset(secret_password_lookupv_sync(&kSchema, query.get(), nullptr, &raw_error));
    }
    const error_ptr error(raw_error);
    if (error) {
      throw keychain_error(fmt::format("the Secret Service could not look up the {}: {}. {}",
                                       detail::describe_secret(scope, service), error->message,
                                       kWhatToDo));
    }
    if (!password) return std::nullopt;
    secret value{std::string(password.get())};
    if (auto reason = check_secret_value(value.reveal()); !reason.empty()) {
      throw keychain_error(fmt::format(
          "the {} in the Secret Service is not usable: {}. Set it again with `sbx secret set`.",
          detail::describe_secret(scope, service), reason));
    }
    return value;
  }

  void set(std::string_view scope, std::string_view service, const secret& value) override {
    detail::check_names(scope, service);
    detail::check_value_for_store(scope, service, value.reveal());
    const std::string scope_value = scope_attribute(scope);
    const std::string service_value(service);
    const hash_table_ptr item = attributes(&scope_value, &service_value);
    const std::string label = "sbx: " + detail::describe_secret(scope, service);
    GError* raw_error = nullptr;
    {
      const std::lock_guard lock(mutex_);
      // reveal() views the whole of the secret's std::string, so data() is NUL-terminated.
      // An item with the same attributes is replaced, not duplicated.
      secret_password_storev_sync(&kSchema, item.get(), SECRET_COLLECTION_DEFAULT, label.c_str(),
                                  value.reveal().data(), nullptr, &raw_error);
    }
    const error_ptr error(raw_error);
    if (error) {
      throw keychain_error(fmt::format("the Secret Service could not store the {}: {}. {}",
                                       detail::describe_secret(scope, service), error->message,
                                       kWhatToDo));
    }
  }

  bool remove(std::string_view scope, std::string_view service) override {
    const std::string scope_value = scope_attribute(scope);
    const std::string service_value(service);
    const hash_table_ptr query = attributes(&scope_value, &service_value);
    GError* raw_error = nullptr;
    gboolean removed = FALSE;
    {
      const std::lock_guard lock(mutex_);
      removed = secret_password_clearv_sync(&kSchema, query.get(), nullptr, &raw_error);
    }
    const error_ptr error(raw_error);
    if (error) {
      throw keychain_error(fmt::format("the Secret Service could not remove the {}: {}. {}",
                                       detail::describe_secret(scope, service), error->message,
                                       kWhatToDo));
    }
    return removed == TRUE;
  }

  std::vector<stored_secret> list(std::optional<std::string_view> scope,
                                  std::optional<std::string_view> service) override {
    const std::optional<std::string> scope_value =
        scope ? std::optional(scope_attribute(*scope)) : std::nullopt;
    const std::optional<std::string> service_value =
        service ? std::optional(std::string(*service)) : std::nullopt;
    const hash_table_ptr query = attributes(scope_value ? &*scope_value : nullptr,
                                            service_value ? &*service_value : nullptr);
    GError* raw_error = nullptr;
    item_list_ptr items;
    {
      const std::lock_guard lock(mutex_);
      items.reset(secret_service_search_sync(
          service_.get(), &kSchema, query.get(),
          static_cast<SecretSearchFlags>(SECRET_SEARCH_ALL | SECRET_SEARCH_UNLOCK |
                                         SECRET_SEARCH_LOAD_SECRETS),
          nullptr, &raw_error));
    }
    const error_ptr error(raw_error);
    if (error) {
      throw keychain_error(fmt::format("the Secret Service could not list sbx's secrets: {}. {}",
                                       error->message, kWhatToDo));
    }

    std::vector<stored_secret> entries;
    for (GList* node = items.get(); node != nullptr; node = node->next) {
      auto* item = static_cast<SecretItem*>(node->data);
      const hash_table_ptr item_attributes(secret_item_get_attributes(item));
      const std::string scope_attr = attribute_of(item_attributes.get(), "scope");
      auto entry_scope = scope_from_attribute(scope_attr);
      std::string entry_service = attribute_of(item_attributes.get(), "service");
      if (!entry_scope || entry_service.empty()) {
        spdlog::warn(
            "skipping a Secret Service item of schema {} with scope \"{}\" and service "
            "\"{}\": not written by sbx",
            kSchema.name, scope_attr, entry_service);
        continue;
      }
      // A still-locked item (the user dismissed the unlock prompt) has no value to show.
      const value_ptr value(secret_item_get_secret(item));
      if (!value) continue;
      gsize length = 0;
      const gchar* bytes = secret_value_get(value.get(), &length);
      entries.push_back(
          {std::move(*entry_scope), std::move(entry_service), secret{std::string(bytes, length)}});
    }
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return std::tie(a.scope, a.service) < std::tie(b.scope, b.service);
    });
    return entries;
  }

  std::string_view kind() const override { return "secret-service"; }

 private:
  // Held so the shared session connection keeps exit-on-close off for as long as the store lives.
  object_ptr<GDBusConnection> bus_;
  object_ptr<SecretService> service_;
  // libsecret's *_sync calls each spin a private main loop; one at a time keeps them simple.
  std::mutex mutex_;
};

}  // namespace

std::unique_ptr<secret_store> open_libsecret_store() {
  if (auto why = detail::probe_secret_service(); !why.empty()) throw keychain_error(why);

  GError* raw_error = nullptr;
  object_ptr<GDBusConnection> bus(g_bus_get_sync(G_BUS_TYPE_SESSION, nullptr, &raw_error));
  if (!bus) {
    const error_ptr error(raw_error);
    throw keychain_error(fmt::format(
        "cannot connect to the D-Bus session bus: {}. Start gnome-keyring-daemon or KeePassXC's "
        "Secret Service, or set SBX_KEYCHAIN=file.",
        error->message));
  }
  // libsecret shares GLib's session connection, which by default calls exit() when the bus goes
  // away; a proxy must not die because a desktop session ended.
  g_dbus_connection_set_exit_on_close(bus.get(), FALSE);

  object_ptr<SecretService> service(
      secret_service_get_sync(SECRET_SERVICE_NONE, nullptr, &raw_error));
  if (!service) {
    const error_ptr error(raw_error);
    throw keychain_error(fmt::format(
        "cannot open the Secret Service: {}. Start gnome-keyring-daemon or KeePassXC's Secret "
        "Service, or set SBX_KEYCHAIN=file.",
        error->message));
  }
  return std::make_unique<libsecret_store>(std::move(bus), std::move(service));
}

}  // namespace sbx::keychain
