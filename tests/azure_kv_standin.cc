// Azure Key Vault stand-in peer. See azure_kv_standin.h.
#include "tests/azure_kv_standin.h"

#include <fmt/format.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <utility>

#include "src/byok/http.h"

namespace keywarden::testing {
namespace {

using namespace std::chrono_literals;

// UriEncode percent-encodes a URI parameter value (RFC 3986 unreserved characters kept).
std::string UriEncode(std::string_view value) {
  std::string out;
  for (char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(c);
    } else {
      out += fmt::format("%{:02X}", u);
    }
  }
  return out;
}

}  // namespace

AzureKvStandIn::AzureKvStandIn() : dir_("kw-azkv-standin"), port_(ReservedPort::Reserve()) {}

AzureKvStandIn::~AzureKvStandIn() { Stop(); }

void AzureKvStandIn::Stop() { server_.Kill(); }

std::string AzureKvStandIn::Log() const { return server_.Log(); }

std::string AzureKvStandIn::vault_type() const {
  return options_.managed_hsm ? "managedhsm.azure.net" : "vault.azure.net";
}

std::string AzureKvStandIn::vault_host() const {
  return fmt::format("{}.{}", kVaultName, vault_type());
}

std::string AzureKvStandIn::endpoint() const { return fmt::format("http://127.0.0.1:{}", port()); }

::testing::AssertionResult AzureKvStandIn::Start(Options options) {
  if (port() == 0) return ::testing::AssertionFailure() << "no port reserved";
  if (server_.pid() > 0) return ::testing::AssertionFailure() << "the stand-in already runs";
  options_ = std::move(options);
  if (options_.keys.empty()) {
    options_.keys = options_.managed_hsm ? std::vector<std::string>{"aeskek:oct", "aesother:oct"}
                                         : std::vector<std::string>{"kek:rsa", "other:rsa"};
  }
  const std::string python =
      std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  std::vector<std::string> argv = {
      python,
      (std::filesystem::path(KEYWARDEN_SOURCE_DIR) / "tests/azure_kv_standin.py").string(),
      "--port",
      std::to_string(port()),
      "--tenant",
      kTenant,
      "--client-id",
      kClientId,
      "--vault-host",
      vault_host(),
      "--scope",
      fmt::format("https://{}/.default", vault_type()),
      "--token-lifetime",
      std::to_string(options_.token_lifetime)};
  for (const std::string& key : options_.keys) {
    argv.push_back("--key");
    argv.push_back(key);
  }
  BackgroundOptions background;
  background.log = dir_ / "standin.log";
  background.env_overrides = {{"AZKV_STANDIN_CLIENT_SECRET", kClientSecret}};
  if (auto started = server_.Start(argv, background); !started) {
    return started << " (needs python3 with python3-cryptography)";
  }
  return WaitForPort(server_, port(), "azure_kv_standin", 30s);
}

std::string AzureKvStandIn::Uri(std::string_view key, std::string_view secret,
                                std::string_view tenant, std::string_view client) const {
  return fmt::format(
      "kms://azure?tenantID={}&clientID={}&clientSecret={}&vaultName={}&vaultType={}"
      "&keyName={}&endpoint={}&authEndpoint={}{}",
      tenant, client, UriEncode(secret), kVaultName, vault_type(), key, endpoint(), endpoint(),
      options_.managed_hsm ? "&algorithm=A256KW" : "");
}

nlohmann::json AzureKvStandIn::Control(std::string_view method, std::string_view path,
                                       const nlohmann::json& body) const {
  auto client = byok::http::Client::New(10s);
  if (!client.ok()) {
    ADD_FAILURE() << "http client: " << client.status();
    return nullptr;
  }
  const std::string text = body.dump();
  byok::http::Request request;
  request.method = std::string(method);
  request.url = endpoint() + std::string(path);
  request.headers = {{"Content-Type", "application/json"}};
  request.body = {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
  auto response = (*client)->Send(request);
  if (!response.ok() || response->status != 200) {
    ADD_FAILURE() << path << ": "
                  << (response.ok() ? response->body : std::string(response.status().message()));
    return nullptr;
  }
  return nlohmann::json::parse(response->body, nullptr, false);
}

int AzureKvStandIn::Stat(std::string_view name) const {
  const auto stats = Control("GET", "/_test/stats");
  return stats.is_object() ? stats.value(std::string(name), -1) : -1;
}

void AzureKvStandIn::Fail(std::string_view target, int count, int status) const {
  Control("POST", "/_test/fail", {{"target", target}, {"count", count}, {"status", status}});
}

}  // namespace keywarden::testing
