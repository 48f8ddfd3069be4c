#include "cli/common.hpp"

#include <algorithm>
#include <chrono>
#include <utility>

#include <fmt/format.h>

#include "config/config.hpp"
#include "proxy/control_client.hpp"

namespace sbx::cli {

state open_state() {
  auto dir = config::ensure_state_dir();
  auto db = store::state_db::open(dir / "policy.db");
  if (auto preset = db.preset_name(); !preset || preset->empty()) {
    db.replace_presets(config::preset_rules(config::default_preset), config::default_preset);
  }
  return state{std::move(dir), std::move(db)};
}

std::filesystem::path control_socket_path(const std::filesystem::path& state_dir) {
  return state_dir / "sbx.sock";
}

void notify_rules_changed(const std::filesystem::path& state_dir) {
  // A short timeout: the rule change is already committed, and the proxy's own poll of
  // rules_version picks it up within a second even if this request is lost.
  (void)proxy::control_request(control_socket_path(state_dir), "POST", "/v1/reload", {},
                               std::chrono::milliseconds(1000));
}

void require_sandbox(store::state_db& db, std::string_view name) {
  if (!db.token_hash(name)) {
    throw failure(
        fmt::format("no sandbox named \"{}\"; create it with `sbx sandbox add {}` or see "
                    "`sbx sandbox ls`",
                    name, name));
  }
}

std::string or_dash(std::string_view text) {
  return text.empty() ? "-" : std::string(text);
}

text_table::text_table(std::vector<std::string> headers) : headers_(std::move(headers)) {}

void text_table::add_row(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

void text_table::print(std::FILE* out) const {
  std::vector<std::size_t> widths(headers_.size());
  for (std::size_t c = 0; c < headers_.size(); ++c)
    widths[c] = headers_[c].size();
  for (const auto& row : rows_) {
    for (std::size_t c = 0; c < row.size(); ++c)
      widths[c] = std::max(widths[c], row[c].size());
  }
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line.append(widths[c] - row[c].size() + 2, ' ');
    }
    line += '\n';
    std::fputs(line.c_str(), out);
  };
  print_row(headers_);
  for (const auto& row : rows_)
    print_row(row);
}

}  // namespace sbx::cli
