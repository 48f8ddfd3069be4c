// secrets.json: {"version": 1, "secrets": [{"scope": "", "service": "openai", "value": "..."}]}.
//
// Re-read on every call because the CLI writes it while the proxy, another process, reads it;
// replaced atomically (temporary file, fsync, rename) so a reader never sees half a file; and
// never rewritten when it cannot be parsed, since that would throw away the user's keys.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <utility>

#include <fmt/format.h>
#include <openssl/crypto.h>
#include <nlohmann/json.hpp>

#include "keychain/detail/naming.hpp"
#include "keychain/secret_store.hpp"

namespace sbx::keychain {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr int kFileFormatVersion = 1;
constexpr mode_t kFileMode = 0600;
constexpr mode_t kDirectoryMode = 0700;
// Stale temporaries from a crash are left alone and a fresh name is tried.
constexpr int kTemporaryNameAttempts = 100;
constexpr std::string_view kExpectedShape =
    R"({"version": 1, "secrets": [{"scope": "", "service": "openai", "value": "..."}]})";

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

// JSON text and parsed documents hold every key in the file; they are wiped, not just freed.
class wiped_string {
 public:
  wiped_string() = default;
  wiped_string(const wiped_string&) = delete;
  wiped_string& operator=(const wiped_string&) = delete;
  ~wiped_string() {
    if (text_.capacity() > 0) OPENSSL_cleanse(text_.data(), text_.capacity());
  }
  std::string& get() { return text_; }

 private:
  std::string text_;
};

void wipe_json(json& node) {
  if (node.is_string()) {
    auto& text = node.get_ref<std::string&>();
    if (text.capacity() > 0) OPENSSL_cleanse(text.data(), text.capacity());
  } else if (node.is_structured()) {
    for (auto& child : node)
      wipe_json(child);
  }
}

class wiped_json {
 public:
  wiped_json() = default;
  wiped_json(const wiped_json&) = delete;
  wiped_json& operator=(const wiped_json&) = delete;
  ~wiped_json() { wipe_json(doc_); }
  json& get() { return doc_; }

 private:
  json doc_;
};

class file_descriptor {
 public:
  explicit file_descriptor(int fd) : fd_(fd) {}
  file_descriptor(file_descriptor&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  file_descriptor& operator=(file_descriptor&&) = delete;
  ~file_descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }
  // close() reports write-back errors on some file systems; a store must not ignore them.
  [[nodiscard]] int close() {
    const int result = ::close(fd_);
    fd_ = -1;
    return result;
  }

 private:
  int fd_;
};

class json_file_store final : public secret_store {
 public:
  explicit json_file_store(fs::path file) : file_(std::move(file)), name_(file_.string()) {
    // Opening reports a corrupt or exposed file now, not at the first lookup inside the proxy.
    (void)read();
  }

  std::optional<secret> get(std::string_view scope, std::string_view service) override {
    for (auto& entry : read()) {
      if (entry.scope != scope || entry.service != service) continue;
      if (auto reason = check_secret_value(entry.value.reveal()); !reason.empty()) {
        throw keychain_error(
            fmt::format("the {} in {} is not usable: {}. Set it again with `sbx secret set`.",
                        detail::describe_secret(scope, service), name_, reason));
      }
      return std::move(entry.value);
    }
    return std::nullopt;
  }

  void set(std::string_view scope, std::string_view service, const secret& value) override {
    detail::check_names(scope, service);
    detail::check_value_for_store(scope, service, value.reveal());
    ensure_directory();
    const file_descriptor lock = lock_for_update();
    auto entries = read();
    const auto existing = std::find_if(entries.begin(), entries.end(), [&](const auto& entry) {
      return entry.scope == scope && entry.service == service;
    });
    if (existing != entries.end()) {
      existing->value = value;
    } else {
      entries.push_back({std::string(scope), std::string(service), value});
    }
    write(entries);
  }

  bool remove(std::string_view scope, std::string_view service) override {
    if (std::error_code ignored; !fs::exists(file_, ignored)) return false;
    const file_descriptor lock = lock_for_update();
    auto entries = read();
    const auto removed = std::remove_if(entries.begin(), entries.end(), [&](const auto& entry) {
      return entry.scope == scope && entry.service == service;
    });
    if (removed == entries.end()) return false;
    entries.erase(removed, entries.end());
    write(entries);
    return true;
  }

  std::vector<stored_secret> list(std::optional<std::string_view> scope,
                                  std::optional<std::string_view> service) override {
    auto entries = read();
    std::erase_if(entries, [&](const stored_secret& entry) {
      return (scope && entry.scope != *scope) || (service && entry.service != *service);
    });
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
      return std::tie(a.scope, a.service) < std::tie(b.scope, b.service);
    });
    return entries;
  }

  std::string_view kind() const override { return "file"; }

 private:
  [[noreturn]] void fail_shape(std::string_view what) const {
    throw keychain_error(fmt::format(
        "{} has the wrong shape: {}. Nothing was changed. Repair it by hand (expected {}) or move "
        "it away and set the secrets again.",
        name_, what, kExpectedShape));
  }

  std::vector<stored_secret> read() const {
    const file_descriptor fd(::open(file_.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.get() < 0) {
      const int error = errno;
      if (error == ENOENT) return {};
      if (error == ELOOP) {
        throw keychain_error(fmt::format(
            "{} is a symbolic link; it must be a regular file. Nothing was changed.", name_));
      }
      throw keychain_error(fmt::format("cannot open {}: {}", name_, errno_text(error)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) {
      throw keychain_error(fmt::format("cannot inspect {}: {}", name_, errno_text(errno)));
    }
    if (!S_ISREG(st.st_mode)) {
      throw keychain_error(fmt::format("{} is not a regular file. Nothing was changed.", name_));
    }
    if (st.st_uid != ::geteuid()) {
      throw keychain_error(fmt::format(
          "{} belongs to user id {}, not to you; it holds API keys, so sbx will not use it. "
          "Nothing was changed.",
          name_, st.st_uid));
    }
    if ((st.st_mode & 077) != 0) {
      throw keychain_error(fmt::format(
          "{} is readable or writable by other users (mode {:04o}); it holds API keys. Run `chmod "
          "600 {}` and try again. Nothing was changed.",
          name_, st.st_mode & 07777, name_));
    }

    wiped_string text;
    text.get().resize(static_cast<std::size_t>(st.st_size));
    std::size_t filled = 0;
    for (;;) {
      if (filled == text.get().size()) text.get().resize(filled + 4096);
      const ssize_t n = ::read(fd.get(), text.get().data() + filled, text.get().size() - filled);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) throw keychain_error(fmt::format("cannot read {}: {}", name_, errno_text(errno)));
      if (n == 0) break;
      filled += static_cast<std::size_t>(n);
    }
    text.get().resize(filled);

    wiped_json doc;
    try {
      doc.get() = json::parse(text.get());
    } catch (const json::parse_error& e) {
      // Only the offset: the parser's own message quotes the text it choked on, which may be a key.
      throw keychain_error(fmt::format(
          "{} is not valid JSON (syntax error at byte {}). Nothing was changed. Repair it by hand "
          "(expected {}) or move it away and set the secrets again.",
          name_, e.byte, kExpectedShape));
    }
    return entries_of(doc.get());
  }

  std::vector<stored_secret> entries_of(const json& doc) const {
    if (!doc.is_object()) fail_shape("the top level is not an object");
    for (const auto& [key, unused] : doc.items()) {
      if (key != "version" && key != "secrets") fail_shape(fmt::format("unknown key \"{}\"", key));
    }
    const auto version = doc.find("version");
    if (version == doc.end() || !version->is_number_integer()) {
      fail_shape("\"version\" is missing or not an integer");
    }
    if (version->get<long long>() != kFileFormatVersion) {
      throw keychain_error(fmt::format(
          "{} has format version {}, but this sbx reads version {}; it was probably written by a "
          "newer sbx. Nothing was changed.",
          name_, version->get<long long>(), kFileFormatVersion));
    }
    const auto list = doc.find("secrets");
    if (list == doc.end() || !list->is_array()) fail_shape("\"secrets\" is missing or not a list");

    std::vector<stored_secret> entries;
    entries.reserve(list->size());
    for (std::size_t i = 0; i < list->size(); ++i) {
      const json& entry = (*list)[i];
      if (!entry.is_object()) fail_shape(fmt::format("secrets[{}] is not an object", i));
      for (const auto& [key, unused] : entry.items()) {
        if (key != "scope" && key != "service" && key != "value") {
          fail_shape(fmt::format("secrets[{}] has the unknown key \"{}\"", i, key));
        }
      }
      for (const char* key : {"scope", "service", "value"}) {
        if (!entry.contains(key) || !entry[key].is_string()) {
          fail_shape(fmt::format("secrets[{}].{} is missing or not a string", i, key));
        }
      }
      stored_secret parsed{entry["scope"].get<std::string>(), entry["service"].get<std::string>(),
                           secret{entry["value"].get<std::string>()}};
      if (parsed.service.empty()) fail_shape(fmt::format("secrets[{}].service is empty", i));
      const bool duplicate = std::any_of(entries.begin(), entries.end(), [&](const auto& seen) {
        return seen.scope == parsed.scope && seen.service == parsed.service;
      });
      if (duplicate) {
        fail_shape(fmt::format("the {} appears twice",
                               detail::describe_secret(parsed.scope, parsed.service)));
      }
      entries.push_back(std::move(parsed));
    }
    return entries;
  }

  void ensure_directory() const {
    const fs::path directory = file_.parent_path().empty() ? fs::path(".") : file_.parent_path();
    if (fs::exists(directory)) return;
    std::error_code error;
    fs::create_directories(directory.parent_path(), error);
    if (::mkdir(directory.c_str(), kDirectoryMode) != 0 && errno != EEXIST) {
      throw keychain_error(
          fmt::format("cannot create the directory {}: {}", directory.string(), errno_text(errno)));
    }
  }

  // Serialises read-modify-write between processes (two `sbx secret set` at once). A lock file
  // rather than secrets.json itself, because rename() replaces the inode a lock would sit on.
  file_descriptor lock_for_update() const {
    const fs::path lock_path = fs::path(file_) += ".lock";
    file_descriptor fd(
        ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, kFileMode));
    if (fd.get() < 0) {
      throw keychain_error(
          fmt::format("cannot open the lock file {}: {}", lock_path.string(), errno_text(errno)));
    }
    while (::flock(fd.get(), LOCK_EX) != 0) {
      if (errno != EINTR) {
        throw keychain_error(
            fmt::format("cannot lock {}: {}", lock_path.string(), errno_text(errno)));
      }
    }
    return fd;
  }

  void write(const std::vector<stored_secret>& entries) const {
    wiped_json doc;
    doc.get() = {{"version", kFileFormatVersion}, {"secrets", json::array()}};
    for (const auto& entry : entries) {
      doc.get()["secrets"].push_back({{"scope", entry.scope},
                                      {"service", entry.service},
                                      {"value", std::string(entry.value.reveal())}});
    }
    wiped_string text;
    text.get() = doc.get().dump(2);
    text.get() += '\n';

    static std::atomic<unsigned> temporary_counter{0};
    fs::path temporary;
    int raw_fd = -1;
    for (int attempt = 0; attempt < kTemporaryNameAttempts && raw_fd < 0; ++attempt) {
      temporary = fs::path(file_) += fmt::format(".tmp-{}-{}", ::getpid(), temporary_counter++);
      // O_EXCL with 0600: the file is never, even for an instant, readable by anyone else.
      raw_fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                      kFileMode);
      if (raw_fd < 0 && errno != EEXIST) break;
    }
    if (raw_fd < 0) {
      throw keychain_error(
          fmt::format("cannot create a temporary file next to {}: {}. {} is unchanged.", name_,
                      errno_text(errno), name_));
    }
    file_descriptor fd(raw_fd);
    const auto fail = [&](std::string_view step, int error) {
      ::unlink(temporary.c_str());
      throw keychain_error(fmt::format("cannot {} {}: {}. {} is unchanged.", step,
                                       temporary.string(), errno_text(error), name_));
    };
    // A umask such as 0277 would otherwise leave the owner unable to read the keys back.
    if (::fchmod(fd.get(), kFileMode) != 0) fail("set the mode of", errno);
    std::size_t written = 0;
    while (written < text.get().size()) {
      const ssize_t n = ::write(fd.get(), text.get().data() + written, text.get().size() - written);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail("write", errno);
      written += static_cast<std::size_t>(n);
    }
    // Without fsync before rename a crash can leave an empty secrets.json after the rename.
    if (::fsync(fd.get()) != 0) fail("flush", errno);
    if (fd.close() != 0) fail("close", errno);
    if (::rename(temporary.c_str(), file_.c_str()) != 0) fail("rename", errno);

    const fs::path directory = file_.parent_path().empty() ? fs::path(".") : file_.parent_path();
    const file_descriptor dir_fd(::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    // The rename itself is durable only once the directory is flushed; failing that is not worth
    // reporting, the new file is already in place.
    if (dir_fd.get() >= 0) (void)::fsync(dir_fd.get());
  }

  fs::path file_;
  std::string name_;
};

}  // namespace

std::unique_ptr<secret_store> open_file_store(const std::filesystem::path& file) {
  return std::make_unique<json_file_store>(file);
}

}  // namespace sbx::keychain
