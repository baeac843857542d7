// The GCP Cloud KMS KEK provider end to end, through kms://gcp URIs, OpenKekProvider and
// WrapDek/UnwrapDek, against tests/gcp_kms_standin.py: a stand-in for Cloud KMS's REST API and
// Google's OAuth token endpoint, used because no emulator of Cloud KMS exists. The stand-in
// verifies the service-account JWT (RS256 signature with the account's public key, iss, aud,
// scope, iat/exp), issues expiring tokens, and encrypts with real AES-256-GCM under the request's
// additional authenticated data, checking and sending the CRC32C fields; tests/gcp_kms_standin.h
// starts it. The service-account keys (RSA 2048) are generated once per suite. Untested against
// the live service: docs/byok-gcp.md.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <barrier>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "keywarden/byok/byok.h"
#include "keywarden/byok/gcp.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"
#include "tests/gcp_kms_standin.h"
#include "tests/subprocess.h"

namespace keywarden::byok {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

using StandIn = keywarden::testing::GcpKmsStandIn;
constexpr const char* kKeyRingName = StandIn::kKeyRingName;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

std::string PemMiddleLine(const std::string& pem) {
  size_t start = 0;
  for (int line = 0; line < 5; ++line) start = pem.find('\n', start) + 1;
  return pem.substr(start, pem.find('\n', start) - start);
}

class GcpStandinTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    account_key_ = new StandIn::RsaPem(StandIn::GenerateRsa2048());
    rogue_key_ = new StandIn::RsaPem(StandIn::GenerateRsa2048());
  }
  static void TearDownTestSuite() {
    delete account_key_;
    delete rogue_key_;
  }

  void SetUp() override {
    ASSERT_NE(standin_.port(), 0);
    base_ = standin_.endpoint();
    ASSERT_TRUE(standin_.Start(*account_key_));
  }

  // KeyFile is a service-account key file as Google issues it, for `private_pem`.
  std::string KeyFile(const std::string& private_pem,
                      std::string_view client_email = StandIn::kClientEmail) const {
    return standin_.KeyFile(private_pem, client_email);
  }

  std::string Uri(std::string_view key = "kek", std::string credentials = "") const {
    return standin_.Uri(key, std::move(credentials));
  }

  std::unique_ptr<KekProvider> Open(const std::string& uri,
                                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto provider = OpenKekProvider(uri, {.timeout = timeout});
    EXPECT_TRUE(provider.ok()) << provider.status();
    return provider.ok() ? *std::move(provider) : nullptr;
  }

  nlohmann::json Control(const nlohmann::json& settings) { return standin_.Control(settings); }
  nlohmann::json Stats() { return standin_.Stats(); }
  int Count(const char* what) { return standin_.Count(what); }

  // ExpectNoSecret checks that a message names none of the secrets in play.
  void ExpectNoSecret(const absl::Status& status, const SecretBytes* dek = nullptr) {
    const std::string message = Message(status);
    EXPECT_THAT(message, Not(HasSubstr(PemMiddleLine(account_key_->private_pem))));
    EXPECT_THAT(message, Not(HasSubstr(PemMiddleLine(rogue_key_->private_pem))));
    EXPECT_THAT(message, Not(HasSubstr("PRIVATE KEY")));
    EXPECT_THAT(message, Not(HasSubstr("ya29.")));  // the stand-in's tokens
    EXPECT_THAT(message, Not(HasSubstr("assertion")));
    if (dek != nullptr) {
      EXPECT_THAT(message,
                  Not(HasSubstr(crypto::HexEncode(dek->Reveal(InsecureSecretAccess::Get())))));
      EXPECT_THAT(message,
                  Not(HasSubstr(crypto::Base64Encode(dek->Reveal(InsecureSecretAccess::Get())))));
    }
  }

  static SecretBytes Dek(size_t size) {
    auto dek = crypto::RandomSecret(size);
    EXPECT_TRUE(dek.ok());
    return dek.ok() ? *std::move(dek) : SecretBytes();
  }

  static bool Equal(const SecretBytes& a, const SecretBytes& b) {
    const auto x = a.Reveal(InsecureSecretAccess::Get());
    const auto y = b.Reveal(InsecureSecretAccess::Get());
    return std::equal(x.begin(), x.end(), y.begin(), y.end());
  }

  static inline StandIn::RsaPem* account_key_ = nullptr;
  static inline StandIn::RsaPem* rogue_key_ = nullptr;
  // dir_ holds the key files the tests write beside the stand-in's own.
  testing::TempDir dir_{"kw-gcp"};
  std::string base_;
  StandIn standin_;
};

TEST_F(GcpStandinTest, RoundTripThroughUriWithOneToken) {
  RegisterAllProviders();
  auto provider = Open(Uri());
  ASSERT_NE(provider, nullptr);
  EXPECT_EQ(provider->kek_id(), std::string("gcp-kms:") + kKeyRingName + "/cryptoKeys/kek");
  // Opening sends nothing.
  EXPECT_EQ(Count("token_requests"), 0);

  for (size_t size : {1, 16, 32, 64, 256}) {
    const SecretBytes dek = Dek(size);
    const std::string id = "disk-" + std::to_string(size);
    auto blob = WrapDek(*provider, id, dek);
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto back = UnwrapDek(*provider, id, *blob);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(Equal(*back, dek));
    // A blob copied to another id is refused (the binding, checked by UnwrapDek).
    EXPECT_EQ(UnwrapDek(*provider, id + "-copy", *blob).status().code(),
              absl::StatusCode::kPermissionDenied);
  }
  const nlohmann::json stats = Stats();
  EXPECT_EQ(stats["token_requests"], 1);  // one token for every call
  EXPECT_EQ(stats["encrypt_requests"], 5);
  EXPECT_EQ(stats["decrypt_requests"], 10);
  EXPECT_EQ(stats["unauthenticated"], 0);
  EXPECT_THAT(standin_.Log(), Not(HasSubstr("Traceback")));
}

TEST_F(GcpStandinTest, InlineCredentialsJsonAndBase64) {
  RegisterAllProviders();
  const std::string json = KeyFile(account_key_->private_pem);
  const std::vector<uint8_t> bytes(json.begin(), json.end());
  std::string percent;
  for (const char c : json) percent += fmt::format("%{:02X}", static_cast<unsigned char>(c));
  for (const std::string& credentials :
       {"credentials=" + percent, "credentials=" + gcp::Base64UrlEncode(bytes)}) {
    auto provider = Open(Uri("kek", credentials));
    ASSERT_NE(provider, nullptr);
    const SecretBytes dek = Dek(32);
    auto blob = WrapDek(*provider, "inline", dek);
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto back = UnwrapDek(*provider, "inline", *blob);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_TRUE(Equal(*back, dek));
  }
}

TEST_F(GcpStandinTest, TokenIsRefreshedBeforeExpiryAndAfter401) {
  RegisterAllProviders();
  Control({{"token_lifetime", 2}});
  auto provider = Open(Uri());
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek = Dek(32);
  auto blob = WrapDek(*provider, "refresh", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(Count("token_requests"), 1);
  // The 2-second token expires (the provider refreshes a quarter of the lifetime early).
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  auto back = UnwrapDek(*provider, "refresh", *blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(Equal(*back, dek));
  EXPECT_EQ(Count("token_requests"), 2);
  EXPECT_EQ(Count("unauthenticated"), 0);  // refreshed before KMS refused it

  // A token revoked early: the 401 makes the provider fetch another and retry once.
  Control({{"token_lifetime", 3600}, {"revoke_tokens", true}});
  back = UnwrapDek(*provider, "refresh", *blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(Count("token_requests"), 3);
  EXPECT_EQ(Count("unauthenticated"), 1);
}

TEST_F(GcpStandinTest, UnknownKeyIsPermissionDeniedWithoutSecrets) {
  RegisterAllProviders();
  auto good = Open(Uri("kek"));
  auto unknown = Open(Uri("no-such-key"));
  ASSERT_TRUE(good != nullptr && unknown != nullptr);
  const SecretBytes dek = Dek(32);
  auto wrapped = unknown->Wrap(dek);
  ASSERT_FALSE(wrapped.ok());
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kPermissionDenied) << wrapped.status();
  EXPECT_THAT(Message(wrapped.status()), HasSubstr("cryptoKeys/no-such-key"));
  EXPECT_THAT(Message(wrapped.status()), HasSubstr("PERMISSION_DENIED"));
  ExpectNoSecret(wrapped.status(), &dek);

  auto blob = good->Wrap(dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto unwrapped = unknown->Unwrap(*blob);
  ASSERT_FALSE(unwrapped.ok());
  EXPECT_EQ(unwrapped.status().code(), absl::StatusCode::kPermissionDenied);
  ExpectNoSecret(unwrapped.status(), &dek);
  const nlohmann::json stats = Stats();
  ASSERT_FALSE(stats["issued_tokens"].empty());
  for (const auto& token : stats["issued_tokens"]) {
    EXPECT_THAT(Message(wrapped.status()), Not(HasSubstr(token.get<std::string>())));
    EXPECT_THAT(Message(unwrapped.status()), Not(HasSubstr(token.get<std::string>())));
  }
}

TEST_F(GcpStandinTest, TokenRequestOfAnotherKeyOrAccountIsRefused) {
  RegisterAllProviders();
  // Signed with a key the stand-in does not know: "Invalid JWT Signature."
  dir_.WriteFile("rogue.json", KeyFile(rogue_key_->private_pem));
  auto rogue =
      Open(fmt::format("kms://gcp?projectID=kw-test&location=global&keyRing=kw-ring&keyName=kek&"
                       "credentialsPath={}&endpoint={}",
                       (dir_ / "rogue.json").string(), base_));
  // The right key under another account name (the JWT's iss).
  dir_.WriteFile("other.json",
                 KeyFile(account_key_->private_pem, "someone@else.iam.gserviceaccount.com"));
  auto other =
      Open(fmt::format("kms://gcp?projectID=kw-test&location=global&keyRing=kw-ring&keyName=kek&"
                       "credentialsPath={}&endpoint={}",
                       (dir_ / "other.json").string(), base_));
  ASSERT_TRUE(rogue != nullptr && other != nullptr);
  const SecretBytes dek = Dek(32);
  for (KekProvider* provider : {rogue.get(), other.get()}) {
    auto wrapped = provider->Wrap(dek);
    ASSERT_FALSE(wrapped.ok());
    EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kPermissionDenied) << wrapped.status();
    EXPECT_THAT(Message(wrapped.status()), HasSubstr("invalid_grant"));
    ExpectNoSecret(wrapped.status(), &dek);
  }
  EXPECT_EQ(Count("encrypt_requests"), 0);
}

TEST_F(GcpStandinTest, ServerDownIsUnavailable) {
  RegisterAllProviders();
  auto provider = Open(Uri(), std::chrono::seconds(3));
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek = Dek(32);
  auto blob = WrapDek(*provider, "down", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  standin_.Stop();
  auto wrapped = WrapDek(*provider, "down-2", dek);
  ASSERT_FALSE(wrapped.ok());
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  ExpectNoSecret(wrapped.status(), &dek);
  auto unwrapped = UnwrapDek(*provider, "down", *blob);
  ASSERT_FALSE(unwrapped.ok());
  EXPECT_EQ(unwrapped.status().code(), absl::StatusCode::kUnavailable) << unwrapped.status();

  // A fresh provider fails at the token endpoint, also UNAVAILABLE.
  auto fresh = Open(Uri(), std::chrono::seconds(3));
  ASSERT_NE(fresh, nullptr);
  EXPECT_EQ(fresh->Wrap(dek).status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(GcpStandinTest, TamperedOrForeignCiphertextIsRefused) {
  RegisterAllProviders();
  auto provider = Open(Uri("kek"));
  auto other = Open(Uri("other"));
  ASSERT_TRUE(provider != nullptr && other != nullptr);
  const SecretBytes dek = Dek(32);
  auto blob = WrapDek(*provider, "tamper", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto decoded = DecodeWrappedDek(*blob);
  ASSERT_TRUE(decoded.ok());
  const size_t size = decoded->wrapped.size();
  for (size_t i : {size_t{0}, size_t{11}, size_t{12}, size / 2, size - 17, size - 1}) {
    WrappedDek changed = *decoded;
    changed.wrapped[i] ^= 0x04;
    auto result = UnwrapDek(*provider, "tamper", EncodeWrappedDek(changed));
    ASSERT_FALSE(result.ok()) << i;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << result.status();
    ExpectNoSecret(result.status(), &dek);
  }
  WrappedDek truncated = *decoded;
  truncated.wrapped.resize(size - 1);
  EXPECT_EQ(UnwrapDek(*provider, "tamper", EncodeWrappedDek(truncated)).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Another KMS key's ciphertext: KMS refuses it (its kek_id differs too, which UnwrapDek
  // checks first, so the provider is asked directly).
  auto foreign = other->Unwrap(decoded->wrapped);
  ASSERT_FALSE(foreign.ok());
  EXPECT_EQ(foreign.status().code(), absl::StatusCode::kPermissionDenied) << foreign.status();
  EXPECT_EQ(UnwrapDek(*other, "tamper", *blob).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // The original still unwraps.
  auto back = UnwrapDek(*provider, "tamper", *blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(Equal(*back, dek));
}

TEST_F(GcpStandinTest, ResponsesFailingTheirCrc32cAreRefused) {
  RegisterAllProviders();
  auto provider = Open(Uri());
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek = Dek(32);
  auto blob = WrapDek(*provider, "crc", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();

  Control({{"corrupt", "encrypt"}});
  auto wrapped = WrapDek(*provider, "crc-2", dek);
  ASSERT_FALSE(wrapped.ok());
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(Message(wrapped.status()), HasSubstr("ciphertextCrc32c"));
  EXPECT_EQ(Count("encrypt_requests"), 1 + 3);  // retried, bounded

  Control({{"corrupt", "decrypt"}});
  auto unwrapped = UnwrapDek(*provider, "crc", *blob);
  ASSERT_FALSE(unwrapped.ok());
  EXPECT_EQ(unwrapped.status().code(), absl::StatusCode::kUnavailable) << unwrapped.status();
  EXPECT_THAT(Message(unwrapped.status()), HasSubstr("plaintextCrc32c"));
  ExpectNoSecret(unwrapped.status(), &dek);
  EXPECT_EQ(Count("decrypt_requests"), 3);

  // KMS not confirming that it checked our plaintext CRC32C: refused too.
  Control({{"corrupt", "none"}, {"unverified", true}});
  wrapped = WrapDek(*provider, "crc-3", dek);
  ASSERT_FALSE(wrapped.ok());
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(Message(wrapped.status()), HasSubstr("did not verify"));

  Control({{"unverified", false}});
  auto back = UnwrapDek(*provider, "crc", *blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(Equal(*back, dek));
}

TEST_F(GcpStandinTest, TransientErrorsAreRetriedABoundedNumberOfTimes) {
  RegisterAllProviders();
  auto provider = Open(Uri());
  ASSERT_NE(provider, nullptr);
  const SecretBytes dek = Dek(32);
  Control({{"fail_next", 2}});  // two 503s, then success
  auto blob = WrapDek(*provider, "retry", dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(Count("encrypt_requests"), 3);

  Control({{"fail_next", 10}});
  auto failed = UnwrapDek(*provider, "retry", *blob);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable) << failed.status();
  EXPECT_THAT(Message(failed.status()), HasSubstr("503"));
  EXPECT_EQ(Count("decrypt_requests"), 3);
}

TEST_F(GcpStandinTest, ConcurrentThreadsShareOneTokenFetch) {
  RegisterAllProviders();
  // The token answer takes a while, so that all threads ask while the first fetch is running.
  Control({{"token_delay", 0.5}});
  auto provider = Open(Uri());
  ASSERT_NE(provider, nullptr);
  constexpr int kThreads = 8;
  std::barrier start(kThreads);
  std::vector<absl::Status> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const SecretBytes dek = Dek(32);
      const std::string id = "thread-" + std::to_string(t);
      start.arrive_and_wait();
      for (int round = 0; round < 3; ++round) {
        auto blob = WrapDek(*provider, id, dek);
        if (!blob.ok()) {
          results[t] = blob.status();
          return;
        }
        auto back = UnwrapDek(*provider, id, *blob);
        if (!back.ok()) {
          results[t] = back.status();
          return;
        }
        if (!Equal(*back, dek)) {
          results[t] = absl::InternalError("another DEK came back");
          return;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_TRUE(results[t].ok()) << t << ": " << results[t];
  const nlohmann::json stats = Stats();
  EXPECT_EQ(stats["token_requests"], 1);
  EXPECT_EQ(stats["encrypt_requests"], kThreads * 3);
  EXPECT_EQ(stats["decrypt_requests"], kThreads * 3);
}

}  // namespace
}  // namespace keywarden::byok
