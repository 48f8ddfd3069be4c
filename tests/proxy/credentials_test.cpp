#include <doctest/doctest.h>

#include <map>
#include <string>

#include "proxy/detail/credentials.hpp"

using namespace sbx;
using namespace sbx::proxy::detail;
namespace http = boost::beast::http;

namespace {

config::service anthropic() {
  return {"anthropic",
          {"api.anthropic.com"},
          {"x-api-key: {secret}", "Authorization: Bearer {secret}"},
          {"ANTHROPIC_API_KEY"}};
}

std::string field(const http::fields& f, std::string_view name) {
  auto v = f[name];
  return std::string(v.data(), v.size());
}

// A hand-written fake of the store interface: a map, with a counter of list() calls.
class fake_store : public keychain::secret_store {
 public:
  std::map<std::pair<std::string, std::string>, std::string> values;
  int lists = 0;
  std::optional<keychain::secret> get(std::string_view scope, std::string_view service) override {
    auto it = values.find({std::string(scope), std::string(service)});
    if (it == values.end()) return std::nullopt;
    return keychain::secret{it->second};
  }
  void set(std::string_view scope, std::string_view service, const keychain::secret& v) override {
    values[{std::string(scope), std::string(service)}] = std::string(v.reveal());
  }
  bool remove(std::string_view scope, std::string_view service) override {
    return values.erase({std::string(scope), std::string(service)}) > 0;
  }
  std::vector<keychain::stored_secret> list(std::optional<std::string_view>,
                                            std::optional<std::string_view>) override {
    ++lists;
    std::vector<keychain::stored_secret> out;
    for (auto& [k, v] : values)
      out.push_back({k.first, k.second, keychain::secret{v}});
    return out;
  }
  std::string_view kind() const override { return "fake"; }
};

}  // namespace

TEST_CASE("inject_credential rewrites the form the client sent, in that form") {
  const keychain::secret key{"sk-ant-real-key-0123456789"};
  SUBCASE("x-api-key placeholder") {
    http::fields f;
    f.set("x-api-key", "proxy-managed");
    auto out = inject_credential(f, anthropic(), key);
    CHECK(out.status == injection_status::injected);
    CHECK(out.forms_rewritten == 1);
    CHECK_FALSE(out.default_added);
    CHECK(field(f, "x-api-key") == "sk-ant-real-key-0123456789");
    CHECK(f.count(http::field::authorization) == 0);
  }
  SUBCASE("Authorization: Bearer placeholder (Anthropic SDK 1.x)") {
    http::fields f;
    f.set(http::field::authorization, "Bearer proxy-managed");
    auto out = inject_credential(f, anthropic(), key);
    CHECK(out.forms_rewritten == 1);
    CHECK(field(f, "Authorization") == "Bearer sk-ant-real-key-0123456789");
    CHECK(f.count("x-api-key") == 0);
  }
  SUBCASE("neither form: the default form is added") {
    http::fields f;
    f.set(http::field::content_type, "application/json");
    auto out = inject_credential(f, anthropic(), key);
    CHECK(out.forms_rewritten == 0);
    CHECK(out.default_added);
    CHECK(field(f, "x-api-key") == "sk-ant-real-key-0123456789");
  }
  SUBCASE("both forms, and duplicates: each ends up once with the real key") {
    http::fields f;
    f.insert("x-api-key", "proxy-managed");
    f.insert("X-Api-Key", "another-placeholder");
    f.insert(http::field::authorization, "Bearer proxy-managed");
    auto out = inject_credential(f, anthropic(), key);
    CHECK(out.forms_rewritten == 2);
    CHECK(f.count("x-api-key") == 1);
    CHECK(f.count(http::field::authorization) == 1);
    CHECK(field(f, "x-api-key") == "sk-ant-real-key-0123456789");
    CHECK(field(f, "authorization") == "Bearer sk-ant-real-key-0123456789");
    for (auto const& h : f)
      CHECK(std::string_view(h.value().data(), h.value().size()).find("proxy-managed") ==
            std::string_view::npos);
  }
  SUBCASE("a real key sent by the client is replaced too") {
    http::fields f;
    f.set(http::field::authorization, "Bearer sk-someone-elses");
    inject_credential(f, anthropic(), key);
    CHECK(field(f, "authorization") == "Bearer sk-ant-real-key-0123456789");
  }
}

TEST_CASE("inject_credential keeps template text around the secret") {
  config::service svc{"custom", {"api.custom.test"}, {"X-Token: tok={secret};v=2"}, {}};
  http::fields f;
  inject_credential(f, svc, keychain::secret{"abc"});
  CHECK(field(f, "X-Token") == "tok=abc;v=2");
}

TEST_CASE("credential_cache: sandbox secret wins, global is the fallback, refresh sees changes") {
  auto store = std::make_shared<fake_store>();
  store->values[{"", "openai"}] = "sk-global";
  store->values[{"dev", "openai"}] = "sk-dev";
  credential_cache cache(store);
  CHECK(cache.find("", "openai") == nullptr);  // nothing loaded before the first refresh
  cache.refresh();
  CHECK(cache.size() == 2);
  REQUIRE(cache.find("", "openai"));
  CHECK(cache.find("", "openai")->reveal() == "sk-global");
  CHECK(cache.find("dev", "openai")->reveal() == "sk-dev");
  CHECK(cache.find("ci", "openai")->reveal() == "sk-global");
  CHECK(cache.find("dev", "anthropic") == nullptr);

  auto held = cache.find("dev", "openai");  // a request in flight keeps its snapshot
  store->values.erase({"dev", "openai"});
  store->values[{"", "openai"}] = "sk-global-2";
  cache.refresh();
  CHECK(held->reveal() == "sk-dev");
  CHECK(cache.find("dev", "openai")->reveal() == "sk-global-2");
}

TEST_CASE("credential_cache skips stored values that could forge headers") {
  auto store = std::make_shared<fake_store>();
  store->values[{"", "openai"}] = "sk-bad\r\nX-Evil: 1";
  credential_cache cache(store);
  cache.refresh();
  CHECK(cache.find("", "openai") == nullptr);
}
