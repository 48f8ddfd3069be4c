#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "config/config.hpp"
#include "test_support.hpp"

using sbx::config::load_from_string;
using sbx::config::service;
using sbx::config::test::load_error;
using strings = std::vector<std::string>;

namespace {

bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

// A config text with one service; `body` is the service's JSON object.
std::string with_service(std::string_view name, std::string_view body) {
  return std::string(R"({"services": {")") + std::string(name) + "\": " + std::string(body) + "}}";
}

}  // namespace

TEST_CASE("the built-in catalogue is the contract's table") {
  auto s = load_from_string("{}", "test.json");
  struct expected {
    std::string name;
    strings hosts;
    strings headers;
    strings env;
  };
  // Hosts, header forms and env vars as each provider's official SDK or CLI sends them (sources in
  // README, "Built-in services").
  const std::string bearer = "Authorization: Bearer {secret}";
  const std::vector<expected> table = {
      {"openai", {"api.openai.com"}, {bearer}, {"OPENAI_API_KEY", "CODEX_API_KEY"}},
      {"anthropic", {"api.anthropic.com"}, {"x-api-key: {secret}", bearer}, {"ANTHROPIC_API_KEY"}},
      {"google",
       {"generativelanguage.googleapis.com", "aiplatform.googleapis.com",
        "vertexai.googleapis.com"},
       {"x-goog-api-key: {secret}"},
       {"GEMINI_API_KEY", "GOOGLE_API_KEY"}},
      {"github",
       {"api.github.com", "github.com", "raw.githubusercontent.com", "gist.github.com",
        "api.githubcopilot.com"},
       {bearer},
       {"GH_TOKEN", "GITHUB_TOKEN"}},
      {"groq", {"api.groq.com"}, {bearer}, {"GROQ_API_KEY"}},
      {"mistral", {"api.mistral.ai"}, {bearer}, {"MISTRAL_API_KEY"}},
      {"xai", {"api.x.ai"}, {bearer}, {"XAI_API_KEY"}},
      {"openrouter", {"openrouter.ai"}, {bearer}, {"OPENROUTER_API_KEY"}},
      {"cursor", {"api2.cursor.sh"}, {bearer}, {"CURSOR_API_KEY"}},
      {"factory", {"api.factory.ai", "app.factory.ai"}, {bearer}, {"FACTORY_API_KEY"}},
      {"nebius",
       {"api.tokenfactory.nebius.com", "api.studio.nebius.com", "api.studio.nebius.ai"},
       {bearer},
       {"NEBIUS_API_KEY"}},
      {"deepseek", {"api.deepseek.com"}, {bearer}, {"DEEPSEEK_API_KEY"}},
      {"together", {"api.together.xyz"}, {bearer}, {"TOGETHER_API_KEY"}},
      {"fireworks", {"api.fireworks.ai"}, {bearer}, {"FIREWORKS_API_KEY"}},
      {"cerebras", {"api.cerebras.ai"}, {bearer}, {"CEREBRAS_API_KEY"}},
      {"perplexity", {"api.perplexity.ai"}, {bearer}, {"PERPLEXITY_API_KEY"}},
      {"cohere", {"api.cohere.com", "api.cohere.ai"}, {bearer}, {"CO_API_KEY", "COHERE_API_KEY"}},
      {"huggingface",
       {"huggingface.co", "router.huggingface.co", "api-inference.huggingface.co"},
       {bearer},
       {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}},
      {"voyage", {"api.voyageai.com"}, {bearer}, {"VOYAGE_API_KEY"}},
  };
  REQUIRE(s.services.size() == table.size());
  for (std::size_t i = 0; i < table.size(); ++i) {
    CAPTURE(table[i].name);
    const service& svc = s.services[i];
    CHECK(svc.name == table[i].name);
    CHECK(svc.hosts == table[i].hosts);
    CHECK(svc.headers == table[i].headers);
    CHECK(svc.env == table[i].env);
  }
}

TEST_CASE("services are found by name and by host, ignoring case and a trailing dot") {
  auto s = load_from_string("{}", "test.json");
  REQUIRE(s.find_service("OpenAI") != nullptr);
  CHECK(s.find_service("OpenAI")->name == "openai");
  CHECK(s.find_service("nope") == nullptr);
  CHECK(s.find_service("") == nullptr);

  REQUIRE(s.service_for_host("API.ANTHROPIC.COM.") != nullptr);
  CHECK(s.service_for_host("API.ANTHROPIC.COM.")->name == "anthropic");
  REQUIRE(s.service_for_host("github.com") != nullptr);
  CHECK(s.service_for_host("github.com")->name == "github");
  CHECK(s.service_for_host("aiplatform.googleapis.com")->name == "google");
  CHECK(s.service_for_host("anthropic.com") == nullptr);
  CHECK(s.service_for_host("evil-api.openai.com") == nullptr);
  CHECK(s.service_for_host("") == nullptr);
}

TEST_CASE("a service with a built-in name replaces it in place") {
  auto s = load_from_string(
      with_service("OpenAI", R"({"hosts": ["llm.example.com"], "header": "X-Key: {secret}"})"),
      "test.json");
  REQUIRE(s.services.size() == 19);
  CHECK(s.services[0].name == "openai");
  CHECK(s.services[0].hosts == strings{"llm.example.com"});
  CHECK(s.services[0].headers == strings{"X-Key: {secret}"});
  CHECK(s.services[0].env.empty());
  CHECK(s.service_for_host("api.openai.com") == nullptr);
  CHECK(s.service_for_host("llm.example.com")->name == "openai");
}

TEST_CASE("a service with a new name is added after the built-in ones") {
  auto s = load_from_string(with_service("internal-llm", R"({
    "hosts": ["LLM.Internal.Example.", "llm2.internal.example"],
    "headers": ["X-Api-Key:{secret}", "Authorization:   Token {secret}  "],
    "env": ["INTERNAL_LLM_KEY"]
  })"),
                            "test.json");
  REQUIRE(s.services.size() == 20);
  const auto& svc = s.services.back();
  CHECK(svc.name == "internal-llm");
  CHECK(svc.hosts == strings{"llm.internal.example", "llm2.internal.example"});
  CHECK(svc.headers == strings{"X-Api-Key: {secret}", "Authorization: Token {secret}"});
  CHECK(svc.env == strings{"INTERNAL_LLM_KEY"});
  CHECK(s.service_for_host("llm.internal.example.")->name == "internal-llm");
  CHECK(s.find_service("openai") != nullptr);
}

TEST_CASE("header templates must be \"Name: value\" with {secret}") {
  auto error_for = [](std::string_view header) {
    return load_error(with_service(
        "x", std::string(R"({"hosts": ["x.example"], "header": ")") + std::string(header) + "\"}"));
  };
  CHECK(error_for("X-Key: {secret}").empty());
  CHECK(error_for("Authorization: Bearer") ==
        "test.json: services.x.header: \"Authorization: Bearer\" has no {secret} placeholder in "
        "its value");
  CHECK(contains(error_for("{secret}: value"), "is not a valid header name"));
  CHECK(contains(error_for("Bearer {secret}"), "must have the form \"Name: value with {secret}\""));
  CHECK(contains(error_for("Bad Name: {secret}"), "\"Bad Name\" is not a valid header name"));
  CHECK(contains(error_for(": {secret}"), "is not a valid header name"));
  CHECK(contains(error_for("Host: {secret}"), "a credential cannot go in the Host header"));
  CHECK(contains(error_for("proxy-authorization: Basic {secret}"), "cannot go in"));
  CHECK(contains(error_for("X-Key: {secret}\\r\\nX-Evil: 1"), "contains a control character"));

  auto both = load_error(with_service(
      "x", R"({"hosts": ["x.example"], "header": "A: {secret}", "headers": ["B: {secret}"]})"));
  CHECK(contains(both, "services.x: give either \"header\" or \"headers\", not both"));
  CHECK(contains(load_error(with_service("x", R"({"hosts": ["x.example"]})")),
                 "services.x: \"header\" is missing"));
  CHECK(contains(load_error(with_service("x", R"({"hosts": ["x.example"], "headers": []})")),
                 "services.x.headers must list at least one header form"));
  CHECK(contains(
      load_error(with_service(
          "x",
          R"({"hosts": ["x.example"], "headers": ["X-Key: {secret}", "x-key: v2 {secret}"]})")),
      "services.x.headers[1]: two header forms use the header name x-key"));
}

TEST_CASE("service hosts are exact host names") {
  auto error_for = [](std::string_view hosts) {
    return load_error(with_service(
        "x", std::string(R"({"header": "X-Key: {secret}", "hosts": )") + std::string(hosts) + "}"));
  };
  CHECK(contains(error_for(R"(["*.example.com"])"),
                 "services.x.hosts[0]: \"*.example.com\": wildcards are not allowed"));
  CHECK(contains(error_for(R"(["**"])"), "wildcards are not allowed"));
  CHECK(contains(error_for(R"(["https://x.example"])"), "not a URL"));
  CHECK(contains(error_for(R"(["x.example:443"])"), "without a port"));
  CHECK(contains(error_for(R"(["a..example"])"), "empty label"));
  CHECK(contains(error_for(R"(["a b.example"])"), "' ' is not allowed in a host name"));
  CHECK(contains(error_for(R"(["ok.example", "OK.example."])"),
                 "services.x.hosts[1]: \"ok.example\" is listed twice"));
  CHECK(contains(error_for("[]"), "services.x.hosts must list at least one host"));
  CHECK(contains(load_error(with_service("x", R"({"header": "X-Key: {secret}"})")),
                 "services.x.hosts is missing"));
}

TEST_CASE("service names and env variable names are checked") {
  auto body = R"({"hosts": ["x.example"], "header": "X-Key: {secret}"})";
  CHECK(contains(load_error(with_service("my service", body)),
                 "services.my service: a service name"));
  CHECK(contains(load_error(with_service("", body)), "a service name"));
  CHECK(load_error(with_service("my_service-2", body)).empty());
  CHECK(contains(load_error(R"({"services": {"Foo": )" + std::string(body) + R"(, "foo": )" +
                            std::string(body) + "}}"),
                 "service \"foo\" is defined twice"));
  CHECK(contains(
      load_error(with_service(
          "x", R"({"hosts": ["x.example"], "header": "X-Key: {secret}", "env": ["1ABC"]})")),
      "services.x.env[0]: \"1ABC\" is not an environment variable name"));
}

TEST_CASE("a host belongs to one service only") {
  auto error = load_error(
      with_service("mine", R"({"hosts": ["API.github.com"], "header": "X-Key: {secret}"})"));
  CHECK(error.starts_with("test.json: "));
  CHECK(contains(error,
                 "host \"api.github.com\" is listed by both services \"github\" and \"mine\""));

  // Moving a host is possible by overriding its old service without it.
  auto s = load_from_string(R"({"services": {
    "github": {"hosts": ["github.com"], "header": "Authorization: Bearer {secret}"},
    "mine": {"hosts": ["api.github.com"], "header": "X-Key: {secret}"}
  }})",
                            "test.json");
  CHECK(s.service_for_host("api.github.com")->name == "mine");
}
