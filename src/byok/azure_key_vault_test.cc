// The Azure Key Vault KEK provider without a server: requests built and responses parsed as in
// Microsoft's published examples (tests/data/azure_kv/, README there), base64url against
// RFC 4648, kms://azure URIs and their errors, and the provider's ciphertext format with its
// negative cases. tests/byok_azure_kv_test.cc runs the provider against a stand-in server.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "keywarden/byok/azure_kv.h"
#include "keywarden/byok/byok.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "tests/subprocess.h"

namespace keywarden::byok {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace azure_kv;  // NOLINT(build/namespaces)

nlohmann::json LoadData(std::string_view name) {
  const auto path = std::filesystem::path(KEYWARDEN_SOURCE_DIR) / "tests/data/azure_kv" / name;
  const auto text = keywarden::testing::ReadFile(path);
  EXPECT_TRUE(text.has_value()) << path;
  auto json = nlohmann::json::parse(text.value_or("null"), nullptr, false);
  EXPECT_TRUE(json.is_object()) << path;
  return json;
}

SecretBytes Secret(std::string_view s) {
  return SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

std::string Text(const SecretBytes& secret) {
  const auto bytes = secret.Reveal(InsecureSecretAccess::Get());
  return std::string(bytes.begin(), bytes.end());
}

std::vector<uint8_t> Bytes(const SecretBytes& secret) {
  const auto bytes = secret.Reveal(InsecureSecretAccess::Get());
  return {bytes.begin(), bytes.end()};
}

std::vector<uint8_t> FromB64Url(std::string_view text) {
  auto bytes = Base64UrlDecode(text);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.value_or(std::vector<uint8_t>{});
}

std::string Message(const absl::Status& status) { return std::string(status.message()); }

// ---- base64url (RFC 4648 §5) ----

TEST(AzureKeyVaultBase64Url, MatchesRfc4648Vectors) {
  const auto data = LoadData("rfc4648-base64url.json");
  ASSERT_EQ(data["vectors"].size(), 10u);
  for (const auto& v : data["vectors"]) {
    auto bytes = crypto::HexDecode(v["hex"].get<std::string>());
    ASSERT_TRUE(bytes.ok());
    const std::string url = v["base64url_unpadded"];
    EXPECT_EQ(Base64UrlEncode(*bytes), url) << v["hex"];
    EXPECT_EQ(FromB64Url(url), *bytes) << url;
    // Padded base64url is accepted too (the RFC's text with the §5 alphabet).
    std::string padded = v["base64"];
    for (char& c : padded) c = c == '+' ? '-' : c == '/' ? '_' : c;
    EXPECT_EQ(FromB64Url(padded), *bytes) << padded;
  }
  // '/' of the standard alphabet is '_' in base64url (the vectors above only exercise '+').
  const std::vector<uint8_t> ones = {0xff, 0xff, 0xff};
  EXPECT_EQ(Base64UrlEncode(ones), "____");
}

TEST(AzureKeyVaultBase64Url, RefusesMalformedText) {
  for (std::string_view bad :
       {"FPucA9l+", "FPuc/w", "Zg=", "Zg===", "Z", "Zh", "Zm9vY", "Zm 9v", "Zg==Zg", "Zm9v\n"}) {
    EXPECT_FALSE(Base64UrlDecode(bad).ok()) << bad;
  }
}

// ---- Entra ID token request and response ----

TEST(AzureKeyVaultToken, RequestBodyMatchesMicrosoftsExample) {
  const auto data = LoadData("token-request-example.json");
  const auto& request = data["request"];
  const SecretBytes body = TokenRequestBody(request["client_id"].get<std::string>(),
                                            Secret(request["client_secret"].get<std::string>()),
                                            request["scope"].get<std::string>());
  EXPECT_EQ(Text(body), request["body"].get<std::string>());
}

TEST(AzureKeyVaultToken, RequestBodyPercentEncodesTheSecret) {
  const SecretBytes body =
      TokenRequestBody("c-1", Secret("a+b/c=d&e f~g.h_i-j%"), "https://vault.azure.net/.default");
  EXPECT_EQ(Text(body),
            "client_id=c-1&scope=https%3A%2F%2Fvault.azure.net%2F.default"
            "&client_secret=a%2Bb%2Fc%3Dd%26e%20f~g.h_i-j%25&grant_type=client_credentials");
}

TEST(AzureKeyVaultToken, ParsesMicrosoftsSuccessResponse) {
  const auto data = LoadData("token-request-example.json");
  auto token = ParseTokenResponse(data["success_response"].dump());
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(Text(token->token), data["success_response"]["access_token"].get<std::string>());
  EXPECT_EQ(token->expires_in, std::chrono::seconds(3599));
  // A v1-style string expires_in is read too.
  auto v1 = ParseTokenResponse(R"({"token_type":"bearer","expires_in":"3599","access_token":"t"})");
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(v1->expires_in, std::chrono::seconds(3599));
}

TEST(AzureKeyVaultToken, RefusesMalformedResponsesWithoutQuotingTheToken) {
  const auto data = LoadData("token-request-example.json");
  EXPECT_FALSE(ParseTokenResponse(data["error_response"].dump()).ok());
  for (std::string_view bad : {
           R"(not json)",
           R"([])",
           R"({"expires_in":3599,"access_token":"SECRETTOKEN"})",
           R"({"token_type":"mac","expires_in":3599,"access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","expires_in":0,"access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","expires_in":-5,"access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","expires_in":86401,"access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","expires_in":"12x","access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","expires_in":1.5,"access_token":"SECRETTOKEN"})",
           R"({"token_type":"Bearer","expires_in":3599})",
           R"({"token_type":"Bearer","expires_in":3599,"access_token":""})",
           R"({"token_type":"Bearer","expires_in":3599,"access_token":"SECRET TOKEN"})",
           R"({"token_type":"Bearer","expires_in":3599,"access_token":"SECRETTOKEN\r\nX: y"})",
       }) {
    auto token = ParseTokenResponse(bad);
    ASSERT_FALSE(token.ok()) << bad;
    EXPECT_EQ(token.status().code(), absl::StatusCode::kUnavailable) << bad;
    EXPECT_THAT(Message(token.status()), Not(HasSubstr("SECRET"))) << bad;
  }
}

TEST(AzureKeyVaultToken, CacheLifetimeEndsShortlyBeforeExpiry) {
  using std::chrono::milliseconds, std::chrono::seconds;
  EXPECT_EQ(TokenCacheLifetime(seconds(3599)), seconds(3599 - 300));
  EXPECT_EQ(TokenCacheLifetime(seconds(86400)), seconds(86400 - 300));
  EXPECT_EQ(TokenCacheLifetime(seconds(1200)), seconds(900));
  EXPECT_EQ(TokenCacheLifetime(seconds(2)), milliseconds(1500));
  EXPECT_EQ(TokenCacheLifetime(seconds(1)), milliseconds(750));
}

// ---- Key Vault wrapkey / unwrapkey ----

class AzureKeyVaultExample : public ::testing::TestWithParam<std::string> {};

TEST_P(AzureKeyVaultExample, RequestAndResponseMatchThePublishedExample) {
  const auto example = LoadData(GetParam() + "-example.json");
  const auto& p = example["parameters"];
  const std::string operation = GetParam() == "wrapKey" ? "wrapkey" : "unwrapkey";
  EXPECT_EQ(p["api-version"].get<std::string>(), kApiVersion);

  auto endpoint = http::ParseEndpoint(p["vaultBaseUrl"].get<std::string>());
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  EXPECT_EQ(endpoint->Url(KeyOperationPath(p["key-name"].get<std::string>(),
                                           p["key-version"].get<std::string>(), operation)),
            fmt::format("https://myvault.vault.azure.net/keys/sdktestkey/"
                        "0698c2156c1a4e1da5b6bab6f6422fd6/{}?api-version=7.4",
                        operation));

  // The body, built from the example's decoded value, is the example's body.
  const auto& parameters = p["parameters"];
  const auto value = FromB64Url(parameters["value"].get<std::string>());
  const SecretBytes body =
      KeyOperationBody(parameters["alg"].get<std::string>(), SecretBytes(value));
  EXPECT_EQ(nlohmann::json::parse(Text(body), nullptr, false), parameters);
  EXPECT_THAT(Text(body), Not(HasSubstr("=")));

  // The response: the kid's version and the decoded value.
  const auto& response = example["responses"]["200"]["body"];
  auto result = ParseKeyOperationResult(response.dump(), "sdktestkey");
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->key_version, "0698c2156c1a4e1da5b6bab6f6422fd6");
  EXPECT_EQ(Bytes(result->value), FromB64Url(response["value"].get<std::string>()));
  // Key Vault names are case-insensitive.
  EXPECT_TRUE(ParseKeyOperationResult(response.dump(), "SDKTestKey").ok());
}

INSTANTIATE_TEST_SUITE_P(Examples, AzureKeyVaultExample, ::testing::Values("wrapKey", "unwrapKey"));

TEST(AzureKeyVaultRequest, WrapNamesTheCurrentVersionWithAnEmptySegment) {
  EXPECT_EQ(KeyOperationPath("kek", "", "wrapkey"), "/keys/kek//wrapkey?api-version=7.4");
  // The wrapped and unwrapped examples are each other's inverse.
  const auto wrap = LoadData("wrapKey-example.json");
  const auto unwrap = LoadData("unwrapKey-example.json");
  EXPECT_EQ(wrap["responses"]["200"]["body"]["value"], unwrap["parameters"]["parameters"]["value"]);
  EXPECT_EQ(unwrap["responses"]["200"]["body"]["value"], wrap["parameters"]["parameters"]["value"]);
}

TEST(AzureKeyVaultRequest, RefusesMalformedResults) {
  const std::string kid = "https://myvault.vault.azure.net/keys/sdktestkey/0698c2156c1a4e1da5b6";
  for (const std::string& bad : std::vector<std::string>{
           "not json",
           R"({"value":"AAEC"})",
           R"({"kid":"https://myvault.vault.azure.net/keys/otherkey/0698","value":"AAEC"})",
           R"({"kid":"https://myvault.vault.azure.net/keys/sdktestkey","value":"AAEC"})",
           R"({"kid":"https://myvault.vault.azure.net/keys/sdktestkey/","value":"AAEC"})",
           R"({"kid":"https://myvault.vault.azure.net/keys/sdktestkey/ab/cd","value":"AAEC"})",
           R"({"kid":"https://myvault.vault.azure.net/keys/sdktestkey/ab-cd","value":"AAEC"})",
           R"({"kid":"https://myvault.vault.azure.net/secrets/sdktestkey/abcd","value":"AAEC"})",
           R"({"kid":")" + kid + R"("})",
           R"({"kid":")" + kid + R"(","value":""})",
           R"({"kid":")" + kid + R"(","value":"AA+C"})",
           R"({"kid":")" + kid + R"(","value":7})",
       }) {
    auto result = ParseKeyOperationResult(bad, "sdktestkey");
    ASSERT_FALSE(result.ok()) << bad;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << bad;
  }
}

// ---- The provider's ciphertext format ----

TEST(AzureKeyVaultCiphertext, EncodesTheDocumentedLayout) {
  auto bytes = EncodeCiphertext({Algorithm::kRsaOaep256, "0a9F", {0xde, 0xad}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, (std::vector<uint8_t>{1, 1, 4, '0', 'a', '9', 'F', 0xde, 0xad}));
  auto decoded = DecodeCiphertext(*bytes);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->algorithm, Algorithm::kRsaOaep256);
  EXPECT_EQ(decoded->key_version, "0a9F");
  EXPECT_EQ(decoded->wrapped, (std::vector<uint8_t>{0xde, 0xad}));

  auto kw = EncodeCiphertext({Algorithm::kA256Kw, std::string(64, 'f'), std::vector<uint8_t>(40)});
  ASSERT_TRUE(kw.ok());
  EXPECT_EQ((*kw)[1], 2);
  EXPECT_EQ(DecodeCiphertext(*kw)->algorithm, Algorithm::kA256Kw);
}

TEST(AzureKeyVaultCiphertext, RefusesToEncodeOutOfRangeFields) {
  EXPECT_FALSE(EncodeCiphertext({Algorithm::kRsaOaep256, "", {1}}).ok());
  EXPECT_FALSE(EncodeCiphertext({Algorithm::kRsaOaep256, std::string(65, 'a'), {1}}).ok());
  EXPECT_FALSE(EncodeCiphertext({Algorithm::kRsaOaep256, "ab/c", {1}}).ok());
  EXPECT_FALSE(EncodeCiphertext({Algorithm::kRsaOaep256, "abc", {}}).ok());
  EXPECT_FALSE(
      EncodeCiphertext({Algorithm::kRsaOaep256, "abc", std::vector<uint8_t>(kMaxWrappedSize)})
          .ok());
  EXPECT_FALSE(EncodeCiphertext({static_cast<Algorithm>(3), "abc", {1}}).ok());
}

void ExpectRefused(std::span<const uint8_t> bytes, std::string_view why) {
  auto decoded = DecodeCiphertext(bytes);
  ASSERT_FALSE(decoded.ok()) << why;
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kPermissionDenied) << why;
  EXPECT_THAT(Message(decoded.status()), HasSubstr(why));
}

TEST(AzureKeyVaultCiphertext, RefusesTruncatedWrongVersionAndTamperedHeaders) {
  const std::vector<uint8_t> good = *EncodeCiphertext({Algorithm::kRsaOaep256, "v1", {7, 8, 9}});
  ExpectRefused({}, "empty");
  for (size_t n = 1; n < 3; ++n) ExpectRefused(std::span(good).first(n), "truncated (header)");
  ExpectRefused(std::span(good).first(4), "truncated (key version)");
  ExpectRefused(std::span(good).first(5), "truncated (no wrapped key)");
  for (uint8_t format : {0, 2, 0xff}) {
    auto bytes = good;
    bytes[0] = format;
    ExpectRefused(bytes, "format version");
  }
  for (uint8_t algorithm : {0, 3, 0xff}) {
    auto bytes = good;
    bytes[1] = algorithm;
    ExpectRefused(bytes, "unknown algorithm");
  }
  {
    auto bytes = good;
    bytes[2] = 0;  // an empty key version
    ExpectRefused(bytes, "malformed key version");
  }
  {
    auto bytes = good;
    bytes[2] = 200;  // longer than what follows
    ExpectRefused(bytes, "truncated (key version)");
  }
  for (uint8_t c : std::initializer_list<uint8_t>{'/', '.', '-', ' ', 0, 0x80}) {
    auto bytes = good;
    bytes[3] = c;
    ExpectRefused(bytes, "malformed key version");
  }
  ExpectRefused(std::vector<uint8_t>(kMaxWrappedSize + 1, 1), "limit");
}

// ---- URIs and the provider's configuration ----

constexpr char kSecret[] = "Qx8~super.secret+value/with=chars";

// Uri makes a kms://azure URI; `extra` is appended verbatim.
std::string Uri(std::string_view extra = "", std::string_view vault_type = "vault.azure.net") {
  return fmt::format(
      "kms://azure?tenantID=72f988bf-86f1-41af-91ab-2d7cd011db47"
      "&clientID=535fb089-9ff3-47b6-9bfb-4f1264799865&clientSecret={}&vaultName=kw-vault"
      "&vaultType={}&keyName=kek{}",
      "Qx8~super.secret+value%2Fwith%3Dchars", vault_type, extra);
}

class AzureKeyVaultUri : public ::testing::Test {
 protected:
  void SetUp() override { RegisterAllProviders(); }
};

TEST_F(AzureKeyVaultUri, OpensWithConstellationsParameters) {
  auto provider = OpenKekProvider(Uri());
  ASSERT_TRUE(provider.ok()) << provider.status();
  EXPECT_EQ((*provider)->kek_id(), "azure-kv:kw-vault.vault.azure.net/keys/kek");
  EXPECT_THAT((*provider)->Describe(), Not(HasSubstr("secret")));
  EXPECT_THAT((*provider)->Describe(), HasSubstr("kw-vault.vault.azure.net"));

  auto hsm = OpenKekProvider(Uri("&algorithm=A256KW", "managedhsm.azure.net"));
  ASSERT_TRUE(hsm.ok()) << hsm.status();
  EXPECT_EQ((*hsm)->kek_id(), "azure-kv:kw-vault.managedhsm.azure.net/keys/kek");
  for (std::string_view type : {"vault.azure.cn", "vault.usgovcloudapi.net",
                                "vault.microsoftazure.de", "managedhsm.azure.net"}) {
    EXPECT_TRUE(OpenKekProvider(Uri("", type)).ok()) << type;
  }
  // The endpoint overrides do not change the KEK id.
  auto local = OpenKekProvider(
      Uri("&endpoint=http://127.0.0.1:8443&authEndpoint=http://localhost:8444/login"));
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ((*local)->kek_id(), "azure-kv:kw-vault.vault.azure.net/keys/kek");
  EXPECT_THAT((*local)->Describe(), HasSubstr("http://127.0.0.1:8443"));
}

TEST_F(AzureKeyVaultUri, RedactsTheClientSecret) {
  const std::string redacted = RedactUri(Uri());
  EXPECT_THAT(redacted, HasSubstr("clientSecret=***"));
  EXPECT_THAT(redacted, Not(HasSubstr("secret+value")));
  EXPECT_THAT(redacted, HasSubstr("keyName=kek"));
}

TEST_F(AzureKeyVaultUri, NamesTheMissingOrUnknownParameterWithoutQuotingTheSecret) {
  for (std::string_view name :
       {"tenantID", "clientID", "clientSecret", "vaultName", "vaultType", "keyName"}) {
    // Drop `name=...` from the URI.
    std::string uri = Uri();
    const size_t at = uri.find(std::string(name) + "=");
    const size_t end = uri.find('&', at);
    uri.erase(at, end == std::string::npos ? std::string::npos : end - at + 1);
    if (uri.back() == '&') uri.pop_back();
    auto provider = OpenKekProvider(uri);
    ASSERT_FALSE(provider.ok()) << name;
    EXPECT_EQ(provider.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(provider.status()), HasSubstr(std::string(name) + "="));
    EXPECT_THAT(Message(provider.status()), Not(HasSubstr("secret+value")));
  }
  auto unknown = OpenKekProvider(Uri("&keyVersion=abc"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(Message(unknown.status()), HasSubstr("keyVersion"));
  EXPECT_THAT(Message(unknown.status()), Not(HasSubstr("secret+value")));
}

TEST_F(AzureKeyVaultUri, RefusesBadValues) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {Uri("", "vault.example.com"), "unknown vault type"},
      {Uri("", "vault.azure.net.evil.com"), "unknown vault type"},
      {Uri("&algorithm=A256KW"), "Managed HSM"},
      {Uri("&algorithm=RSA1_5"), "algorithm"},
      {Uri("&endpoint=http://vault.example.com"), "loopback"},
      {Uri("&authEndpoint=http://login.example.com"), "loopback"},
      {Uri("&endpoint=ftp://127.0.0.1"), "https://"},
      {Uri("&authEndpoint=https://user@login.example.com"), "user info"},
  };
  for (const auto& [uri, why] : cases) {
    auto provider = OpenKekProvider(uri);
    ASSERT_FALSE(provider.ok()) << uri;
    EXPECT_EQ(provider.status().code(), absl::StatusCode::kInvalidArgument) << uri;
    EXPECT_THAT(Message(provider.status()), HasSubstr(why)) << uri;
    EXPECT_THAT(Message(provider.status()), Not(HasSubstr("secret+value"))) << uri;
  }
  AzureKeyVaultConfig good;
  good.tenant_id = "contoso.onmicrosoft.com";
  good.client_id = "535fb089-9ff3-47b6-9bfb-4f1264799865";
  good.client_secret = Secret(kSecret);
  good.vault_name = "kw-vault";
  good.key_name = "kek";
  const auto with = [&](auto change) {
    AzureKeyVaultConfig config{good.tenant_id,  good.client_id,  good.client_secret.Clone(),
                               good.vault_name, good.vault_type, good.key_name,
                               good.algorithm,  good.endpoint,   good.auth_endpoint};
    change(config);
    return NewAzureKeyVaultProvider(std::move(config), {}).status();
  };
  EXPECT_TRUE(with([](AzureKeyVaultConfig&) {}).ok());
  const std::vector<std::function<void(AzureKeyVaultConfig&)>> bad = {
      [](auto& c) { c.tenant_id = ""; },
      [](auto& c) { c.tenant_id = "a/b"; },
      [](auto& c) { c.tenant_id = "t?x=1"; },
      [](auto& c) { c.client_id = ""; },
      [](auto& c) { c.client_id = "a b"; },
      [](auto& c) { c.client_secret = SecretBytes(); },
      [](auto& c) { c.client_secret = SecretBytes(1025); },
      [](auto& c) { c.vault_name = "kv"; },
      [](auto& c) { c.vault_name = "1vault"; },
      [](auto& c) { c.vault_name = "vault-"; },
      [](auto& c) { c.vault_name = "va--ult"; },
      [](auto& c) { c.vault_name = "vault.name"; },
      [](auto& c) { c.vault_name = std::string(25, 'v'); },
      [](auto& c) { c.key_name = ""; },
      [](auto& c) { c.key_name = "a/b"; },
      [](auto& c) { c.key_name = "a_b"; },
      [](auto& c) { c.key_name = std::string(128, 'k'); },
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    const absl::Status status = with(bad[i]);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << i;
    EXPECT_THAT(Message(status), Not(HasSubstr("secret+value"))) << i;
  }
}

// ---- The provider before any request ----

// Provider returns one pointed at a loopback port where nothing listens: any request it sends
// fails UNAVAILABLE, so another answer proves it decided locally.
std::unique_ptr<KekProvider> Provider(int port, std::string algorithm = "RSA-OAEP-256") {
  AzureKeyVaultConfig config;
  config.tenant_id = "kw-tenant";
  config.client_id = "kw-client";
  config.client_secret = Secret(kSecret);
  config.vault_name = "kwtest";
  config.vault_type = algorithm == "A256KW" ? "managedhsm.azure.net" : "vault.azure.net";
  config.key_name = "kek";
  config.algorithm = std::move(algorithm);
  config.endpoint = fmt::format("http://127.0.0.1:{}", port);
  config.auth_endpoint = config.endpoint;
  auto provider = NewAzureKeyVaultProvider(std::move(config), {std::chrono::seconds(5)});
  EXPECT_TRUE(provider.ok()) << provider.status();
  return provider.ok() ? *std::move(provider) : nullptr;
}

TEST(AzureKeyVaultProvider, ChecksInputAndCiphertextsBeforeAnyRequest) {
  auto port = keywarden::testing::ReservedPort::Reserve();
  auto provider = Provider(port.port());
  ASSERT_NE(provider, nullptr);
  EXPECT_EQ(provider->Wrap(SecretBytes()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(provider->Wrap(SecretBytes(513)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(provider->Unwrap({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(provider->Unwrap(std::vector<uint8_t>(kMaxWrappedSize + 1, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);

  const std::vector<uint8_t> good =
      *EncodeCiphertext({Algorithm::kRsaOaep256, "abc", std::vector<uint8_t>(256, 7)});
  for (size_t n : {size_t{1}, size_t{3}, size_t{5}, size_t{6}}) {
    auto r = provider->Unwrap(std::span(good).first(n));
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << n << r.status();
    EXPECT_THAT(Message(r.status()), HasSubstr("truncated")) << n;
  }
  auto wrong_version = good;
  wrong_version[0] = 9;
  auto r = provider->Unwrap(wrong_version);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(r.status()), HasSubstr("format version 9"));

  // A blob made with A256KW (a Managed HSM AES key) is not sent to an RSA key.
  const std::vector<uint8_t> kw =
      *EncodeCiphertext({Algorithm::kA256Kw, "abc", std::vector<uint8_t>(40, 7)});
  r = provider->Unwrap(kw);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Message(r.status()), HasSubstr("made with A256KW; this key uses RSA-OAEP-256"));
  auto hsm = Provider(port.port(), "A256KW");
  ASSERT_NE(hsm, nullptr);
  EXPECT_EQ(hsm->Unwrap(good).status().code(), absl::StatusCode::kPermissionDenied);

  // A well-formed request goes out, and nothing answers: UNAVAILABLE, no secret in the message.
  auto wrapped = provider->Wrap(Secret("0123456789abcdef"));
  ASSERT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(Message(wrapped.status()), Not(HasSubstr("super.secret")));
  EXPECT_EQ(provider->Unwrap(good).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace keywarden::byok
