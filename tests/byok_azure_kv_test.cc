// The Azure Key Vault KEK provider end to end, through kms://azure URIs, OpenKekProvider and
// WrapDek / UnwrapDek, against tests/azure_kv_standin.py.
//
// No Azure Key Vault emulator exists, so the peer is a STAND-IN: a small Python server that fakes
// the logic the provider depends on, as Microsoft documents it — the Entra ID client-credentials
// token endpoint (tenant, client id, secret and scope checked; tokens that expire) and Key Vault's
// wrapkey / unwrapkey (bearer token and api-version checked; real RSA-OAEP-256 and AES key wrap
// with python3-cryptography, so wrapping is real cryptography), started by
// tests/azure_kv_standin.h. It is not Azure: passing here
// says nothing about the live service beyond what its documentation promises
// (docs/byok-azure-kv.md, "What is tested").
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "keywarden/byok/azure_kv.h"
#include "keywarden/byok/byok.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "tests/azure_kv_standin.h"

namespace keywarden::byok {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using namespace std::chrono_literals;

using StandIn = keywarden::testing::AzureKvStandIn;
constexpr const char* kTenant = StandIn::kTenant;
constexpr const char* kClientId = StandIn::kClientId;
constexpr const char* kClientSecret = StandIn::kClientSecret;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

SecretBytes RandomDek(size_t size) {
  auto dek = crypto::RandomSecret(size);
  EXPECT_TRUE(dek.ok());
  return dek.ok() ? *std::move(dek) : SecretBytes(size);
}

bool SameBytes(const SecretBytes& a, const SecretBytes& b) {
  const auto x = a.Reveal(InsecureSecretAccess::Get());
  const auto y = b.Reveal(InsecureSecretAccess::Get());
  return std::equal(x.begin(), x.end(), y.begin(), y.end());
}

class AzureKeyVaultE2eTest : public ::testing::Test {
 protected:
  void SetUp() override { RegisterAllProviders(); }
  void Start(StandIn::Options options) { ASSERT_TRUE(standin_.Start(std::move(options))); }
  void Start() { Start(StandIn::Options()); }
  // Open returns the provider of the stand-in's key `key` (kms://azure through the registry).
  std::unique_ptr<KekProvider> Open(std::string_view key) const {
    auto provider = OpenKekProvider(standin_.Uri(key), {.timeout = 10s});
    EXPECT_TRUE(provider.ok()) << provider.status();
    return provider.ok() ? *std::move(provider) : nullptr;
  }
  // ExpectNoSecrets checks that a message carries neither the client secret (raw or
  // form-encoded) nor a bearer token.
  static void ExpectNoSecrets(const absl::Status& status) {
    const std::string message = Message(status);
    EXPECT_THAT(message, Not(HasSubstr("st4nd.in")));
    EXPECT_THAT(message, Not(HasSubstr("Kw8Q")));
    EXPECT_THAT(message, Not(HasSubstr("Bearer")));
    EXPECT_THAT(message, Not(HasSubstr("eyJ")));  // the stand-in's tokens start so
  }
  StandIn standin_;
};

TEST_F(AzureKeyVaultE2eTest, RoundTripsThroughTheUriWithOneToken) {
  Start();
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  EXPECT_EQ(provider->kek_id(), "azure-kv:kwtest.vault.azure.net/keys/kek");
  EXPECT_EQ(standin_.Stat("token_requests"), 0) << "no request before the first Wrap/Unwrap";

  // RSA-2048 with OAEP-SHA-256 takes up to 190 bytes: the binding plaintext is 81 + DEK bytes.
  for (size_t size : {1, 16, 32, 64, 109}) {
    const std::string id = fmt::format("disk-{}", size);
    const SecretBytes dek = RandomDek(size);
    auto stored = WrapDek(*provider, id, dek);
    ASSERT_TRUE(stored.ok()) << stored.status();
    auto back = UnwrapDek(*provider, id, *stored);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(SameBytes(*back, dek)) << size;
    // The provider's ciphertext names the version the wrap used.
    auto outer = DecodeWrappedDek(*stored);
    ASSERT_TRUE(outer.ok());
    EXPECT_EQ(outer->kek_id, provider->kek_id());
    auto inner = azure_kv::DecodeCiphertext(outer->wrapped);
    ASSERT_TRUE(inner.ok()) << inner.status();
    EXPECT_EQ(inner->algorithm, azure_kv::Algorithm::kRsaOaep256);
    EXPECT_EQ(inner->key_version.size(), 32u);
    EXPECT_EQ(inner->wrapped.size(), 256u);
    // A blob copied to another id is refused (the binding inside the plaintext).
    EXPECT_EQ(UnwrapDek(*provider, id + "-copy", *stored).status().code(),
              absl::StatusCode::kPermissionDenied);
  }
  EXPECT_EQ(standin_.Stat("tokens_issued"), 1);
  EXPECT_EQ(standin_.Stat("unauthorized"), 0);

  // Too long for the key: Key Vault's 400 on wrapkey is INVALID_ARGUMENT.
  auto big = WrapDek(*provider, "big", RandomDek(256));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument) << big.status();
  ExpectNoSecrets(big.status());
}

TEST_F(AzureKeyVaultE2eTest, UnwrapUsesTheKeyVersionTheWrapUsed) {
  Start();
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek1 = RandomDek(32), dek2 = RandomDek(32);
  auto blob1 = WrapDek(*provider, "vol", dek1);
  ASSERT_TRUE(blob1.ok()) << blob1.status();
  const auto rotated = standin_.Control("POST", "/_test/rotate/kek");
  ASSERT_TRUE(rotated.is_object());
  auto blob2 = WrapDek(*provider, "vol", dek2);
  ASSERT_TRUE(blob2.ok()) << blob2.status();

  const auto version = [](const std::vector<uint8_t>& blob) {
    return azure_kv::DecodeCiphertext(DecodeWrappedDek(blob)->wrapped)->key_version;
  };
  EXPECT_NE(version(*blob1), version(*blob2));
  EXPECT_EQ(version(*blob2), rotated["version"].get<std::string>());
  auto back1 = UnwrapDek(*provider, "vol", *blob1);
  auto back2 = UnwrapDek(*provider, "vol", *blob2);
  ASSERT_TRUE(back1.ok()) << back1.status();
  ASSERT_TRUE(back2.ok()) << back2.status();
  EXPECT_TRUE(SameBytes(*back1, dek1));
  EXPECT_TRUE(SameBytes(*back2, dek2));
}

TEST_F(AzureKeyVaultE2eTest, RefreshesTheTokenAfterExpiry) {
  Start({.token_lifetime = 2});
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek = RandomDek(32);
  auto blob = WrapDek(*provider, "vol", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  ASSERT_TRUE(UnwrapDek(*provider, "vol", *blob).ok());
  EXPECT_EQ(standin_.Stat("tokens_issued"), 1);

  // The 2-second token is used for 1.5 s, then fetched again before the vault would refuse it.
  std::this_thread::sleep_for(2200ms);
  auto again = UnwrapDek(*provider, "vol", *blob);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameBytes(*again, dek));
  EXPECT_EQ(standin_.Stat("tokens_issued"), 2);
  EXPECT_EQ(standin_.Stat("unauthorized"), 0);
}

TEST_F(AzureKeyVaultE2eTest, RefetchesTheTokenAfterA401) {
  Start();
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek = RandomDek(32);
  auto blob = WrapDek(*provider, "vol", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  // A token the vault no longer accepts (401) is dropped, and the call made again once.
  standin_.Control("POST", "/_test/revoke");
  auto after_revoke = UnwrapDek(*provider, "vol", *blob);
  ASSERT_TRUE(after_revoke.ok()) << after_revoke.status();
  EXPECT_TRUE(SameBytes(*after_revoke, dek));
  EXPECT_EQ(standin_.Stat("unauthorized"), 1);
  EXPECT_EQ(standin_.Stat("tokens_issued"), 2);
}

TEST_F(AzureKeyVaultE2eTest, RefusedCredentialsArePermissionDeniedWithoutLeaks) {
  Start();
  struct Case {
    std::string uri;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {standin_.Uri("kek", "wrong-secret-value"), "invalid_client, AADSTS7000215"},
      {standin_.Uri("kek", kClientSecret, "other-tenant"), "AADSTS90002"},
      {standin_.Uri("kek", kClientSecret, kTenant, "00000000-0000-0000-0000-000000000000"),
       "unauthorized_client, AADSTS700016"},
  };
  for (const Case& c : cases) {
    auto provider = OpenKekProvider(c.uri, {.timeout = 10s});
    ASSERT_TRUE(provider.ok()) << provider.status();
    auto wrapped = WrapDek(**provider, "vol", RandomDek(32));
    ASSERT_EQ(wrapped.status().code(), absl::StatusCode::kPermissionDenied) << wrapped.status();
    EXPECT_THAT(Message(wrapped.status()), HasSubstr(c.expect));
    EXPECT_THAT(Message(wrapped.status()), Not(HasSubstr("wrong-secret")));
    ExpectNoSecrets(wrapped.status());
    EXPECT_THAT((*provider)->Describe(), Not(HasSubstr("secret")));
    EXPECT_THAT(RedactUri(c.uri), Not(HasSubstr("secret-value")));
  }
  EXPECT_EQ(standin_.Stat("tokens_issued"), 0);
  EXPECT_EQ(standin_.Stat("token_refused"), 3);
  EXPECT_THAT(standin_.Log(), Not(HasSubstr("st4nd.in")));
}

TEST_F(AzureKeyVaultE2eTest, TheManagedHsmScopeIsNotTheVaultScope) {
  // A vault URI against a Managed HSM's login: the token request names the vault scope, which
  // the stand-in (playing a Managed HSM tenant) refuses with invalid_scope.
  Start({.managed_hsm = true});
  std::string uri = standin_.Uri("aeskek");
  uri.replace(uri.find("managedhsm.azure.net"), 20, "vault.azure.net");
  uri.erase(uri.find("&algorithm=A256KW"));
  auto provider = OpenKekProvider(uri, {.timeout = 10s});
  ASSERT_TRUE(provider.ok()) << provider.status();
  auto wrapped = (*provider)->Wrap(RandomDek(32));
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kPermissionDenied) << wrapped.status();
  EXPECT_THAT(Message(wrapped.status()), HasSubstr("invalid_scope"));
}

TEST_F(AzureKeyVaultE2eTest, ManagedHsmAesKeyWrapRoundTripsAndRefusesTampering) {
  Start({.managed_hsm = true});
  auto provider = Open("aeskek");
  ASSERT_NE(provider, nullptr);
  EXPECT_EQ(provider->kek_id(), "azure-kv:kwtest.managedhsm.azure.net/keys/aeskek");
  for (size_t size : {1, 7, 8, 32, 255, 256}) {
    const SecretBytes dek = RandomDek(size);
    auto stored = WrapDek(*provider, "hsm-vol", dek);
    ASSERT_TRUE(stored.ok()) << stored.status();
    auto back = UnwrapDek(*provider, "hsm-vol", *stored);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(SameBytes(*back, dek)) << size;
    auto inner = azure_kv::DecodeCiphertext(DecodeWrappedDek(*stored)->wrapped);
    ASSERT_TRUE(inner.ok());
    EXPECT_EQ(inner->algorithm, azure_kv::Algorithm::kA256Kw);
    EXPECT_EQ(inner->wrapped.size() % 8, 0u);
    // Flip the last byte of the AES key wrap: RFC 3394's integrity check fails at the HSM.
    auto tampered = *stored;
    tampered.back() ^= 0x01;
    auto refused = UnwrapDek(*provider, "hsm-vol", tampered);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  }
  auto other = Open("aesother");
  ASSERT_NE(other, nullptr);
  auto blob = WrapDek(*provider, "hsm-vol", RandomDek(32));
  ASSERT_TRUE(blob.ok());
  auto inner = azure_kv::DecodeCiphertext(DecodeWrappedDek(*blob)->wrapped);
  ASSERT_TRUE(inner.ok());
  // The same wrapped bytes under the other key's current version: refused by the crypto.
  inner->key_version =
      standin_.Control("POST", "/_test/rotate/aesother")["version"].get<std::string>();
  auto swapped = other->Unwrap(*azure_kv::EncodeCiphertext(*inner));
  EXPECT_EQ(swapped.status().code(), absl::StatusCode::kPermissionDenied) << swapped.status();
}

TEST_F(AzureKeyVaultE2eTest, TamperedBlobsAreRefused) {
  Start();
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  auto stored = WrapDek(*provider, "vol", RandomDek(32));
  ASSERT_TRUE(stored.ok()) << stored.status();
  const std::vector<uint8_t> wrapped = DecodeWrappedDek(*stored)->wrapped;
  const size_t header = 3 + 32;  // format, algorithm, version length, 32-character version
  ASSERT_EQ(wrapped.size(), header + 256);
  // Bytes of the RSA ciphertext (first, middle, last), and header bytes.
  for (size_t at : {header, header + 1, header + 128, header + 255, size_t{0}, size_t{1}, size_t{2},
                    size_t{3}, header - 1}) {
    auto tampered = wrapped;
    tampered[at] ^= 0x01;
    auto result = provider->Unwrap(tampered);
    ASSERT_FALSE(result.ok()) << at;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied)
        << at << ": " << result.status();
    ExpectNoSecrets(result.status());
  }
  // Through the stored form as well: the last byte is the RSA ciphertext's.
  auto tampered = *stored;
  tampered.back() ^= 0x80;
  auto result = UnwrapDek(*provider, "vol", tampered);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
  EXPECT_THAT(Message(result.status()), HasSubstr("tampered, or made under another key"));
  // Truncated ciphertexts.
  for (size_t n : {size_t{1}, size_t{10}, header, header + 100}) {
    auto truncated = provider->Unwrap(std::span(wrapped).first(n));
    EXPECT_EQ(truncated.status().code(), absl::StatusCode::kPermissionDenied) << n;
  }
}

TEST_F(AzureKeyVaultE2eTest, ABlobUnderAnotherKeyIsRefused) {
  Start();
  auto kek = Open("kek");
  auto other = Open("other");
  ASSERT_TRUE(kek && other);
  auto stored = WrapDek(*kek, "vol", RandomDek(32));
  ASSERT_TRUE(stored.ok()) << stored.status();
  // The stored form names kek's id: refused before the provider is asked.
  auto by_id = UnwrapDek(*other, "vol", *stored);
  EXPECT_EQ(by_id.status().code(), absl::StatusCode::kFailedPrecondition) << by_id.status();
  // The provider ciphertext sent to the other key: its version is unknown there (404)...
  const auto wrapped = DecodeWrappedDek(*stored)->wrapped;
  auto by_version = other->Unwrap(wrapped);
  EXPECT_EQ(by_version.status().code(), absl::StatusCode::kPermissionDenied) << by_version.status();
  EXPECT_THAT(Message(by_version.status()), HasSubstr("not found"));
  // ...and under the other key's own version, RSA-OAEP decryption fails (400).
  auto inner = azure_kv::DecodeCiphertext(wrapped);
  ASSERT_TRUE(inner.ok());
  auto probe = WrapDek(*other, "probe", RandomDek(16));
  ASSERT_TRUE(probe.ok());
  inner->key_version = azure_kv::DecodeCiphertext(DecodeWrappedDek(*probe)->wrapped)->key_version;
  auto by_crypto = other->Unwrap(*azure_kv::EncodeCiphertext(*inner));
  EXPECT_EQ(by_crypto.status().code(), absl::StatusCode::kPermissionDenied) << by_crypto.status();
  EXPECT_THAT(Message(by_crypto.status()), HasSubstr("unwrapkey refused the ciphertext"));
}

TEST_F(AzureKeyVaultE2eTest, RetriesThrottlingThenGivesUpUnavailable) {
  Start();
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  // Two 429s, then success: within the bound of three attempts.
  standin_.Fail("vault", 2, 429);
  auto ok = WrapDek(*provider, "vol", RandomDek(32));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(standin_.Stat("injected_failures"), 2);
  // Three 503s: UNAVAILABLE.
  standin_.Fail("vault", 3, 503);
  auto down = UnwrapDek(*provider, "vol", *ok);
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  EXPECT_THAT(Message(down.status()), HasSubstr("503"));
  EXPECT_EQ(standin_.Stat("injected_failures"), 5);
  // The token endpoint too: three 429s on a fresh provider.
  auto fresh = Open("kek");
  ASSERT_NE(fresh, nullptr);
  standin_.Fail("token", 3, 429);
  auto no_token = fresh->Wrap(RandomDek(32));
  EXPECT_EQ(no_token.status().code(), absl::StatusCode::kUnavailable) << no_token.status();
  ExpectNoSecrets(no_token.status());
  // Afterwards both work again.
  EXPECT_TRUE(UnwrapDek(*provider, "vol", *ok).ok());
  EXPECT_TRUE(fresh->Wrap(RandomDek(32)).ok());
}

TEST_F(AzureKeyVaultE2eTest, AKilledServerIsUnavailable) {
  Start();
  auto provider = Open("kek");
  auto fresh = Open("kek");
  ASSERT_TRUE(provider && fresh);
  auto stored = WrapDek(*provider, "vol", RandomDek(32));
  ASSERT_TRUE(stored.ok()) << stored.status();
  standin_.Stop();
  // With a cached token (the vault is gone) and without one (the login host is gone).
  auto unwrap = UnwrapDek(*provider, "vol", *stored);
  EXPECT_EQ(unwrap.status().code(), absl::StatusCode::kUnavailable) << unwrap.status();
  auto wrap = WrapDek(*provider, "vol2", RandomDek(32));
  EXPECT_EQ(wrap.status().code(), absl::StatusCode::kUnavailable) << wrap.status();
  auto no_token = WrapDek(*fresh, "vol2", RandomDek(32));
  EXPECT_EQ(no_token.status().code(), absl::StatusCode::kUnavailable) << no_token.status();
  for (const absl::Status& s : {unwrap.status(), wrap.status(), no_token.status()}) {
    ExpectNoSecrets(s);
  }
}

TEST_F(AzureKeyVaultE2eTest, ConcurrentWrapsShareOneTokenFetch) {
  Start();
  auto provider = Open("kek");
  ASSERT_NE(provider, nullptr);
  constexpr int kThreads = 8;
  std::barrier start(kThreads);
  std::vector<absl::Status> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string id = fmt::format("vol-{}", t);
      const SecretBytes dek = RandomDek(32);
      start.arrive_and_wait();
      auto stored = WrapDek(*provider, id, dek);
      if (!stored.ok()) {
        results[t] = stored.status();
        return;
      }
      auto back = UnwrapDek(*provider, id, *stored);
      results[t] = !back.ok()               ? back.status()
                   : !SameBytes(*back, dek) ? absl::InternalError("another DEK came back")
                                            : absl::OkStatus();
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(results[t].ok()) << t << ": " << results[t];
  EXPECT_EQ(standin_.Stat("token_requests"), 1);
  EXPECT_EQ(standin_.Stat("tokens_issued"), 1);
  EXPECT_EQ(standin_.Stat("wrapkey"), kThreads);
  EXPECT_EQ(standin_.Stat("unwrapkey"), kThreads);
}

TEST_F(AzureKeyVaultE2eTest, TheStandInChecksTokensAndApiVersions) {
  // The provider's tests above mean something only if the stand-in refuses what Key Vault
  // refuses: no token, a made-up token, another api-version.
  Start();
  auto client = http::Client::New(10s);
  ASSERT_TRUE(client.ok());
  const std::string body = R"({"alg":"RSA-OAEP-256","value":"AAECAwQFBgcICQoLDA0ODw"})";
  const auto send = [&](std::string_view path, std::string_view token) {
    http::Request request;
    request.method = "POST";
    request.url = standin_.endpoint() + std::string(path);
    request.headers = {{"Content-Type", "application/json"}};
    if (!token.empty()) request.headers.emplace_back("Authorization", std::string(token));
    request.body = {reinterpret_cast<const uint8_t*>(body.data()), body.size()};
    auto response = (*client)->Send(request);
    return response.ok() ? response->status : 0L;
  };
  EXPECT_EQ(send("/keys/kek//wrapkey?api-version=7.4", ""), 401);
  EXPECT_EQ(send("/keys/kek//wrapkey?api-version=7.4", "Bearer eyJmadeup"), 401);
  // A real token (fetched through the provider's own request builder) with a wrong api-version.
  const std::string_view secret = kClientSecret;
  const SecretBytes form = azure_kv::TokenRequestBody(
      kClientId,
      SecretBytes(
          std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size())),
      "https://vault.azure.net/.default");
  http::Request token_request;
  token_request.method = "POST";
  token_request.url = standin_.endpoint() + "/" + kTenant + "/oauth2/v2.0/token";
  token_request.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
  token_request.body = form.Reveal(InsecureSecretAccess::Get());
  auto token_response = (*client)->Send(token_request);
  ASSERT_TRUE(token_response.ok() && token_response->status == 200);
  auto token = azure_kv::ParseTokenResponse(token_response->body);
  ASSERT_TRUE(token.ok()) << token.status();
  const auto value = token->token.Reveal(InsecureSecretAccess::Get());
  const std::string bearer = "Bearer " + std::string(value.begin(), value.end());
  EXPECT_EQ(send("/keys/kek//wrapkey?api-version=7.4", bearer), 200);
  EXPECT_EQ(send("/keys/kek//wrapkey?api-version=7.3", bearer), 400);
  EXPECT_EQ(send("/keys/kek//wrapkey", bearer), 400);
  EXPECT_EQ(send("/keys/nokey//wrapkey?api-version=7.4", bearer), 404);
}

}  // namespace
}  // namespace keywarden::byok
