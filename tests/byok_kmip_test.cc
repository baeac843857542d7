// The KMIP KEK provider against a real PyKMIP server (tests/pykmip.h): round trips, tampered and
// misdirected blobs, TLS authentication failures both ways, an unreachable or silent server,
// connection reuse across a server restart, and concurrent callers.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "keywarden/byok/kmip.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"
#include "tests/pykmip.h"

namespace keywarden::byok {
namespace {

using ::testing::AnyOf;
using ::testing::HasSubstr;
using testing::PyKmipServer;

SecretBytes Secret(size_t size) {
  auto secret = crypto::RandomSecret(size);
  EXPECT_TRUE(secret.ok()) << secret.status();
  return std::move(*secret);
}

bool Same(const SecretBytes& a, const SecretBytes& b) {
  const auto access = InsecureSecretAccess::Get();
  return crypto::ConstantTimeEquals(a.Reveal(access), b.Reveal(access));
}

class KmipProviderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(server_.Start());
    ASSERT_TRUE(server_.CreateAesKey(256, &uid_));
  }

  std::unique_ptr<KekProvider> Provider(const KmipConfig& config, RemoteOptions options = {}) {
    auto provider = NewKmipProvider(config, options);
    EXPECT_TRUE(provider.ok()) << provider.status();
    return provider.ok() ? std::move(*provider) : nullptr;
  }

  PyKmipServer server_;
  std::string uid_;
};

TEST_F(KmipProviderTest, WrapUnwrapRoundTrip) {
  auto kek = Provider(server_.Config(uid_));
  ASSERT_NE(kek, nullptr);
  EXPECT_EQ(kek->kek_id(), "kmip:" + uid_);
  EXPECT_THAT(kek->Describe(), HasSubstr(server_.endpoint()));
  EXPECT_THAT(kek->Describe(), HasSubstr(uid_));
  for (size_t size : {1, 32, 81, 512}) {
    SCOPED_TRACE(size);
    const SecretBytes dek = Secret(size);
    auto wrapped = kek->Wrap(dek);
    ASSERT_TRUE(wrapped.ok()) << wrapped.status() << "\n" << server_.LogTail();
    EXPECT_EQ(wrapped->size(), 1 + 12 + size + 16);
    EXPECT_EQ((*wrapped)[0], 0x01);
    auto unwrapped = kek->Unwrap(*wrapped);
    ASSERT_TRUE(unwrapped.ok()) << unwrapped.status() << "\n" << server_.LogTail();
    EXPECT_TRUE(Same(*unwrapped, dek));
  }
}

TEST_F(KmipProviderTest, RejectsBadPlaintextSizes) {
  auto kek = Provider(server_.Config(uid_));
  ASSERT_NE(kek, nullptr);
  EXPECT_EQ(kek->Wrap(SecretBytes()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(kek->Wrap(Secret(513)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(KmipProviderTest, CiphertextDiffersPerCall) {
  auto kek = Provider(server_.Config(uid_));
  ASSERT_NE(kek, nullptr);
  const SecretBytes dek = Secret(32);
  auto a = kek->Wrap(dek);
  auto b = kek->Wrap(dek);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_NE(*a, *b);
  // Fresh nonce, so the ciphertexts differ too, not only the nonces.
  EXPECT_NE(std::vector<uint8_t>(a->begin() + 13, a->end()),
            std::vector<uint8_t>(b->begin() + 13, b->end()));
}

TEST_F(KmipProviderTest, TamperedBlobRefused) {
  auto kek = Provider(server_.Config(uid_));
  ASSERT_NE(kek, nullptr);
  const SecretBytes dek = Secret(32);
  auto wrapped = kek->Wrap(dek);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  // Version byte, nonce, ciphertext (first and last byte), tag.
  for (size_t at : {size_t{0}, size_t{1}, size_t{12}, size_t{13}, size_t{44}, size_t{45},
                    wrapped->size() - 1}) {
    SCOPED_TRACE(at);
    std::vector<uint8_t> bad = *wrapped;
    bad[at] ^= 0x01;
    auto unwrapped = kek->Unwrap(bad);
    ASSERT_FALSE(unwrapped.ok());
    EXPECT_EQ(unwrapped.status().code(), absl::StatusCode::kPermissionDenied) << unwrapped.status();
  }
  // Truncated (tag cut) and extended.
  std::vector<uint8_t> shorter(wrapped->begin(), wrapped->end() - 1);
  EXPECT_EQ(kek->Unwrap(shorter).status().code(), absl::StatusCode::kPermissionDenied);
  std::vector<uint8_t> longer = *wrapped;
  longer.push_back(0);
  EXPECT_EQ(kek->Unwrap(longer).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(kek->Unwrap(std::vector<uint8_t>(5, 1)).status().code(),
            absl::StatusCode::kPermissionDenied);
  // The untouched blob still unwraps: refusals left the provider usable.
  auto unwrapped = kek->Unwrap(*wrapped);
  ASSERT_TRUE(unwrapped.ok()) << unwrapped.status();
  EXPECT_TRUE(Same(*unwrapped, dek));
}

TEST_F(KmipProviderTest, BlobOfAnotherKeyRefused) {
  std::string other_uid;
  ASSERT_TRUE(server_.CreateAesKey(256, &other_uid));
  auto kek = Provider(server_.Config(uid_));
  auto other = Provider(server_.Config(other_uid));
  ASSERT_NE(kek, nullptr);
  ASSERT_NE(other, nullptr);
  auto wrapped = kek->Wrap(Secret(32));
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  auto unwrapped = other->Unwrap(*wrapped);
  ASSERT_FALSE(unwrapped.ok());
  std::cout << "refused as expected: " << unwrapped.status() << "\n";
  EXPECT_EQ(unwrapped.status().code(), absl::StatusCode::kPermissionDenied) << unwrapped.status();
  EXPECT_THAT(StatusMessage(unwrapped.status()), HasSubstr("KMIP Decrypt"));
}

TEST_F(KmipProviderTest, UnknownKeyIsNotFound) {
  auto kek = Provider(server_.Config("no-such-key-4711"));
  ASSERT_NE(kek, nullptr);
  auto wrapped = kek->Wrap(Secret(32));
  ASSERT_FALSE(wrapped.ok());
  std::cout << "refused as expected: " << wrapped.status() << "\n";
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kNotFound) << wrapped.status();
  EXPECT_THAT(StatusMessage(wrapped.status()), HasSubstr("Item Not Found"));
}

TEST_F(KmipProviderTest, ServerDownIsUnavailableWithinTimeout) {
  const RemoteOptions options{.timeout = std::chrono::milliseconds(1000)};
  auto kek = Provider(server_.Config(uid_), options);
  ASSERT_NE(kek, nullptr);
  auto wrapped = kek->Wrap(Secret(32));
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  ASSERT_TRUE(server_.Stop());
  const auto start = std::chrono::steady_clock::now();
  auto unwrapped = kek->Unwrap(*wrapped);
  auto again = kek->Wrap(Secret(32));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(unwrapped.ok());
  EXPECT_EQ(unwrapped.status().code(), absl::StatusCode::kUnavailable) << unwrapped.status();
  EXPECT_EQ(again.status().code(), absl::StatusCode::kUnavailable) << again.status();
  // Two calls, each bounded by the timeout (here refused at once).
  EXPECT_LT(elapsed, 2 * options.timeout + std::chrono::seconds(1));
}

TEST_F(KmipProviderTest, SilentServerTimesOut) {
  // A listener that never accepts: TCP connects (the kernel completes it), TLS never answers.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 8), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  KmipConfig config = server_.Config(uid_);
  config.endpoint = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  const RemoteOptions options{.timeout = std::chrono::milliseconds(500)};
  auto kek = Provider(config, options);
  ASSERT_NE(kek, nullptr);
  const auto start = std::chrono::steady_clock::now();
  auto wrapped = kek->Wrap(Secret(32));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  close(fd);
  ASSERT_FALSE(wrapped.ok());
  std::cout << "refused as expected: " << wrapped.status() << "\n";
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(StatusMessage(wrapped.status()), HasSubstr("timed out"));
  EXPECT_GE(elapsed, options.timeout);
  EXPECT_LT(elapsed, options.timeout + std::chrono::seconds(2));
}

TEST_F(KmipProviderTest, PooledConnectionSurvivesServerRestart) {
  auto kek = Provider(server_.Config(uid_));
  ASSERT_NE(kek, nullptr);
  const SecretBytes dek = Secret(32);
  auto wrapped = kek->Wrap(dek);  // leaves a connection in the pool
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  // Killed and restarted within the pool's 5-second idle limit, so the next call takes the dead
  // pooled connection, fails on it and retries on a fresh one.
  ASSERT_TRUE(server_.Kill());
  ASSERT_TRUE(server_.Start());  // same port, same database: the key is still there
  auto unwrapped = kek->Unwrap(*wrapped);
  ASSERT_TRUE(unwrapped.ok()) << unwrapped.status() << "\n" << server_.LogTail();
  EXPECT_TRUE(Same(*unwrapped, dek));
}

TEST_F(KmipProviderTest, ClientCertificateOfAnotherCaRefused) {
  KmipConfig config = server_.Config(uid_);
  config.client_cert = server_.files().other_client_cert.string();
  config.client_key = server_.files().other_client_key.string();
  auto kek = Provider(config);
  ASSERT_NE(kek, nullptr);
  auto wrapped = kek->Wrap(Secret(32));
  ASSERT_FALSE(wrapped.ok());
  std::cout << "refused as expected: " << wrapped.status() << "\n";
  EXPECT_THAT(wrapped.status().code(),
              AnyOf(absl::StatusCode::kUnavailable, absl::StatusCode::kPermissionDenied))
      << wrapped.status();
  EXPECT_THAT(StatusMessage(wrapped.status()), HasSubstr(server_.endpoint()));
  EXPECT_THAT(StatusMessage(wrapped.status()), HasSubstr("refused the client certificate"));
}

TEST_F(KmipProviderTest, ServerOfAnotherCaRefused) {
  KmipConfig config = server_.Config(uid_);
  config.server_ca = server_.files().other_ca_cert.string();
  auto kek = Provider(config);
  ASSERT_NE(kek, nullptr);
  auto wrapped = kek->Wrap(Secret(32));
  ASSERT_FALSE(wrapped.ok());
  std::cout << "refused as expected: " << wrapped.status() << "\n";
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(StatusMessage(wrapped.status()), HasSubstr("certificate"));
}

TEST_F(KmipProviderTest, ServerCertificateMustNameTheHost) {
  // The server certificate names IP:127.0.0.1 only; "localhost" resolves there but is not named.
  KmipConfig config = server_.Config(uid_);
  config.endpoint = "localhost:" + std::to_string(server_.port());
  auto kek = Provider(config);
  ASSERT_NE(kek, nullptr);
  auto wrapped = kek->Wrap(Secret(32));
  ASSERT_FALSE(wrapped.ok());
  std::cout << "refused as expected: " << wrapped.status() << "\n";
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(StatusMessage(wrapped.status()), HasSubstr("mismatch"));
}

TEST_F(KmipProviderTest, ConcurrentCallers) {
  auto kek = Provider(server_.Config(uid_));
  ASSERT_NE(kek, nullptr);
  constexpr int kThreads = 4;
  constexpr int kRounds = 5;
  std::atomic<int> good{0};
  std::vector<std::string> failures(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        const SecretBytes dek = Secret(32);
        auto wrapped = kek->Wrap(dek);
        if (!wrapped.ok()) {
          failures[t] = StatusMessage(wrapped.status());
          return;
        }
        auto unwrapped = kek->Unwrap(*wrapped);
        if (!unwrapped.ok() || !Same(*unwrapped, dek)) {
          failures[t] = unwrapped.ok() ? "different DEK" : StatusMessage(unwrapped.status());
          return;
        }
        ++good;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], "") << "thread " << t;
  EXPECT_EQ(good.load(), kThreads * kRounds);
}

// The URI form through the registry, and the provider under the wrapped-DEK format of
// docs/formats/wrapped-dek.md (the DEK id bound in).
TEST_F(KmipProviderTest, OpenedByUriUnderTheWrappedDekFormat) {
  RegisterKmip();
  const KmipConfig c = server_.Config(uid_);
  const std::string uri = "kms://kmip?endpoint=" + c.endpoint + "&keyID=" + c.key_id +
                          "&clientCert=" + c.client_cert + "&clientKey=" + c.client_key +
                          "&serverCA=" + c.server_ca;
  auto kek = OpenKekProvider(uri);
  ASSERT_TRUE(kek.ok()) << kek.status();
  EXPECT_EQ((*kek)->kek_id(), "kmip:" + uid_);
  const SecretBytes dek = Secret(32);
  auto stored = WrapDek(**kek, "volume-1", dek);
  ASSERT_TRUE(stored.ok()) << stored.status();
  auto unwrapped = UnwrapDek(**kek, "volume-1", *stored);
  ASSERT_TRUE(unwrapped.ok()) << unwrapped.status();
  EXPECT_TRUE(Same(*unwrapped, dek));
  auto moved = UnwrapDek(**kek, "volume-2", *stored);
  ASSERT_FALSE(moved.ok());
  EXPECT_EQ(moved.status().code(), absl::StatusCode::kPermissionDenied) << moved.status();

  for (const std::string& bad : {uri.substr(0, uri.find("&serverCA")), uri + "&extra=1"}) {
    auto opened = OpenKekProvider(bad);
    EXPECT_EQ(opened.status().code(), absl::StatusCode::kInvalidArgument) << opened.status();
  }
}

TEST_F(KmipProviderTest, BadConfigurationIsInvalidArgument) {
  const KmipConfig good = server_.Config(uid_);
  auto code = [](const KmipConfig& config) { return NewKmipProvider(config).status().code(); };
  for (const char* endpoint : {"", "127.0.0.1", "127.0.0.1:", ":5696", "127.0.0.1:0",
                               "127.0.0.1:65536", "127.0.0.1:56x", "[::1]5696", "::1:5696"}) {
    KmipConfig config = good;
    config.endpoint = endpoint;
    EXPECT_EQ(code(config), absl::StatusCode::kInvalidArgument) << endpoint;
  }
  KmipConfig config = good;
  config.endpoint = "[::1]:5696";
  EXPECT_TRUE(NewKmipProvider(config).ok());
  config = good;
  config.key_id = "";
  EXPECT_EQ(code(config), absl::StatusCode::kInvalidArgument);
  config = good;
  config.client_cert = "/nonexistent/client.crt";
  EXPECT_EQ(code(config), absl::StatusCode::kInvalidArgument);
  config = good;
  config.client_key = server_.files().other_client_key.string();  // not the certificate's key
  EXPECT_EQ(code(config), absl::StatusCode::kInvalidArgument);
  config = good;
  config.server_ca = "/nonexistent/ca.crt";
  EXPECT_EQ(code(config), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      NewKmipProvider(good, RemoteOptions{.timeout = std::chrono::milliseconds(0)}).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keywarden::byok
