// Owning pointers for the GLib objects the Secret Service code handles, so every early return and
// exception frees them.
#pragma once

#include <memory>

#include <gio/gio.h>

namespace sbx::keychain::detail {

struct error_deleter {
  void operator()(GError* error) const { g_error_free(error); }
};
using error_ptr = std::unique_ptr<GError, error_deleter>;

struct object_deleter {
  void operator()(gpointer object) const { g_object_unref(object); }
};
template <class T>
using object_ptr = std::unique_ptr<T, object_deleter>;

struct variant_deleter {
  void operator()(GVariant* variant) const { g_variant_unref(variant); }
};
using variant_ptr = std::unique_ptr<GVariant, variant_deleter>;

struct hash_table_deleter {
  void operator()(GHashTable* table) const { g_hash_table_unref(table); }
};
using hash_table_ptr = std::unique_ptr<GHashTable, hash_table_deleter>;

}  // namespace sbx::keychain::detail
