// aTLS tests over real sockets on 127.0.0.1: the three modes, every attestation check with its
// negative case (bad, missing, lifted and replayed documents, missing or malformed nonces, TLS
// 1.2, extra certificates), the certificate profile, frames and their limits, timeouts,
// concurrency and shutdown. Peers that aTLS itself would never produce are built directly on
// OpenSSL here ("raw" peers). The issuer and validator are the deterministic fakes of
// tests/atls_fakes.h.
#include "keywarden/crypto/atls.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "keywarden/crypto/sha256.h"
#include "src/crypto/atls_internal.h"
#include "tests/atls_fakes.h"

namespace keywarden::crypto {
namespace {

using ::keywarden::atls_fakes::FakeIssuer;
using ::keywarden::atls_fakes::FakeMacKey;
using ::keywarden::atls_fakes::FakeValidator;
using ::testing::HasSubstr;
using namespace std::chrono_literals;
using namespace std::string_literals;

constexpr std::chrono::milliseconds kTimeout = 10s;

// The raw OpenSSL peers below write with write(2) and could die of SIGPIPE when aTLS closes a
// refused connection; aTLS itself never raises it (its sockets send with MSG_NOSIGNAL).
const bool kSigpipeIgnored = [] { return signal(SIGPIPE, SIG_IGN) != SIG_ERR; }();

std::string Msg(const absl::Status& status) { return StatusMessage(status); }

// FuncIssuer issues through a function: the misbehaving issuers of the negative tests.
class FuncIssuer : public AttestationIssuer {
 public:
  using Fn = std::function<absl::StatusOr<std::string>(std::span<const uint8_t>,
                                                       std::span<const uint8_t>)>;
  explicit FuncIssuer(Fn fn) : fn_(std::move(fn)) {}
  absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                    std::span<const uint8_t> tls_key_hash) override {
    std::lock_guard<std::mutex> lock(mu_);
    calls_++;
    return fn_(nonce, tls_key_hash);
  }
  int calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }

 private:
  std::mutex mu_;
  Fn fn_;
  int calls_ = 0;  // guarded by mu_
};

using Bytes = std::vector<uint8_t>;
Bytes ToBytes(std::span<const uint8_t> s) { return {s.begin(), s.end()}; }

// LiftingIssuer: a relay that gets genuine documents for the current nonce but bound to the
// key of the first connection it saw (a document lifted from another connection).
std::shared_ptr<FuncIssuer> LiftingIssuer(std::shared_ptr<FakeIssuer> genuine) {
  auto first_key = std::make_shared<std::optional<Bytes>>();
  return std::make_shared<FuncIssuer>(
      [genuine, first_key](std::span<const uint8_t> nonce, std::span<const uint8_t> key) {
        if (!first_key->has_value()) *first_key = ToBytes(key);
        return genuine->Make(nonce, **first_key);
      });
}

// ReplayIssuer: binds the current key but always the nonce of the first connection.
std::shared_ptr<FuncIssuer> ReplayIssuer(std::shared_ptr<FakeIssuer> genuine) {
  auto first_nonce = std::make_shared<std::optional<Bytes>>();
  return std::make_shared<FuncIssuer>(
      [genuine, first_nonce](std::span<const uint8_t> nonce, std::span<const uint8_t> key) {
        if (!first_nonce->has_value()) *first_nonce = ToBytes(nonce);
        return genuine->Make(**first_nonce, key);
      });
}

// VerbatimReplayIssuer: returns the first document it ever issued, unchanged.
std::shared_ptr<FuncIssuer> VerbatimReplayIssuer(std::shared_ptr<FakeIssuer> genuine) {
  auto first = std::make_shared<std::optional<std::string>>();
  return std::make_shared<FuncIssuer>(
      [genuine, first](std::span<const uint8_t> nonce,
                       std::span<const uint8_t> key) -> absl::StatusOr<std::string> {
        if (!first->has_value()) {
          auto doc = genuine->Make(nonce, key);
          if (!doc.ok()) return doc.status();
          *first = *doc;
        }
        return **first;
      });
}

// TamperingIssuer: a genuine document with one byte of its identity flipped.
std::shared_ptr<FuncIssuer> TamperingIssuer(std::shared_ptr<FakeIssuer> genuine) {
  return std::make_shared<FuncIssuer>(
      [genuine](std::span<const uint8_t> nonce,
                std::span<const uint8_t> key) -> absl::StatusOr<std::string> {
        auto doc = genuine->Make(nonce, key);
        if (!doc.ok()) return doc.status();
        (*doc)[atls_fakes::kMagic.size() + 1] ^= 0x01;
        return doc;
      });
}

// --- The fixture: a server with a small set of methods and a record of its failures ---------

class AtlsTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
  }

  // StartServer starts a server with `options` (attestation set by the caller).
  void StartServer(AtlsServerOptions options) {
    options.on_handshake_failure = [this](std::string_view, const absl::Status& status) {
      std::lock_guard<std::mutex> lock(mu_);
      failures_.push_back(status);
      cv_.notify_all();
    };
    auto server = AtlsServer::Start(
        std::move(options),
        [this](std::string_view method, std::string_view request,
               const PeerInfo& peer) -> absl::StatusOr<std::string> {
          handler_calls_.fetch_add(1);
          {
            std::lock_guard<std::mutex> lock(mu_);
            last_peer_ = peer;
          }
          if (method == "echo") return std::string(request);
          if (method == "whoami") return peer.identity;
          if (method == "sleep") {
            std::this_thread::sleep_for(std::chrono::milliseconds(std::stoi(std::string(request))));
            return std::string("slept");
          }
          if (method == "big") return std::string(std::stoul(std::string(request)), 'x');
          if (method == "fail") return NotFoundError("no record \"{}\"", request);
          return MakeStatus(absl::StatusCode::kUnimplemented, "no method");
        });
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // PlainServer: the server attests, clients are not asked for certificates.
  void StartPlainServer() {
    AtlsServerOptions options;
    options.issuer = server_issuer_;
    StartServer(std::move(options));
  }
  // MutualServer: the server attests and validates clients.
  void StartMutualServer(std::shared_ptr<AttestationIssuer> issuer = nullptr) {
    AtlsServerOptions options;
    options.issuer = issuer != nullptr ? issuer : server_issuer_;
    options.client_validator = client_checker_;
    StartServer(std::move(options));
  }

  std::unique_ptr<AtlsClient> NewClient(std::shared_ptr<AttestationIssuer> issuer,
                                        std::shared_ptr<AttestationValidator> validator,
                                        size_t max_frame = kAtlsDefaultMaxFrameSize) {
    AtlsClientOptions options;
    options.issuer = std::move(issuer);
    options.server_validator = std::move(validator);
    options.accept_unattested_server = options.server_validator == nullptr;
    options.max_frame_size = max_frame;
    auto client = AtlsClient::New(std::move(options));
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }
  // PlainClient validates the server and does not attest.
  std::unique_ptr<AtlsClient> PlainClient() { return NewClient(nullptr, server_checker_); }
  // MutualClient attests and validates the server.
  std::unique_ptr<AtlsClient> MutualClient(std::shared_ptr<AttestationIssuer> issuer = nullptr) {
    return NewClient(issuer != nullptr ? issuer : client_issuer_, server_checker_);
  }

  // NextFailure waits for the server's next handshake failure.
  absl::Status NextFailure() {
    std::unique_lock<std::mutex> lock(mu_);
    if (!cv_.wait_for(lock, kTimeout, [&] { return failures_.size() > failures_seen_; })) {
      return InternalError("the server reported no handshake failure");
    }
    return failures_[failures_seen_++];
  }
  size_t failure_count() {
    std::lock_guard<std::mutex> lock(mu_);
    return failures_.size();
  }
  PeerInfo last_peer() {
    std::lock_guard<std::mutex> lock(mu_);
    return last_peer_;
  }

  const SecretBytes mac_key_ = FakeMacKey();
  // The server's issuer and the validator clients use for it.
  std::shared_ptr<FakeIssuer> server_issuer_ = std::make_shared<FakeIssuer>("server-1", mac_key_);
  std::shared_ptr<FakeValidator> server_checker_ = std::make_shared<FakeValidator>(mac_key_);
  // The client's issuer and the validator the server uses for it.
  std::shared_ptr<FakeIssuer> client_issuer_ = std::make_shared<FakeIssuer>("node-7", mac_key_);
  std::shared_ptr<FakeValidator> client_checker_ = std::make_shared<FakeValidator>(mac_key_);

  std::unique_ptr<AtlsServer> server_;
  std::atomic<int> handler_calls_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<absl::Status> failures_;  // guarded by mu_
  size_t failures_seen_ = 0;            // guarded by mu_
  PeerInfo last_peer_;                  // guarded by mu_
};

// --- Modes ------------------------------------------------------------------------------------

TEST_F(AtlsTest, PlainModeRoundTripSeveralCallsPerConnection) {
  StartPlainServer();
  auto client = PlainClient();
  auto conn = client->Connect(server_->endpoint(), kTimeout);
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_TRUE((*conn)->peer().attested);
  EXPECT_EQ((*conn)->peer().identity, "server-1");
  EXPECT_FALSE((*conn)->peer().document.empty());
  for (const std::string& request : std::vector<std::string>{"one", "", std::string(70'000, 'z')}) {
    auto response = (*conn)->Call("echo", request, kTimeout);
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(*response, request);
  }
  // The server did not ask this client to attest.
  EXPECT_FALSE(last_peer().attested);
  EXPECT_TRUE(last_peer().identity.empty());
  EXPECT_THAT(last_peer().address, HasSubstr("127.0.0.1:"));
  EXPECT_EQ(server_issuer_->issued(), 1);
  EXPECT_EQ(client_checker_->calls(), 0);

  // A handler's error reaches the client with its code and message; the connection survives.
  auto failed = (*conn)->Call("fail", "k-1", kTimeout);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Msg(failed.status()), "no record \"k-1\"");
  EXPECT_EQ(*(*conn)->Call("echo", "after", kTimeout), "after");
  EXPECT_EQ(handler_calls_.load(), 5);
}

TEST_F(AtlsTest, MutualModeBothSidesSeeTheVerifiedPeer) {
  StartMutualServer();
  auto client = MutualClient();
  auto conn = client->Connect(server_->endpoint(), kTimeout);
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_EQ((*conn)->peer().identity, "server-1");
  auto who = (*conn)->Call("whoami", "", kTimeout);
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "node-7");
  const PeerInfo peer = last_peer();
  EXPECT_TRUE(peer.attested);
  EXPECT_EQ(peer.identity, "node-7");
  EXPECT_FALSE(peer.document.empty());
  // The key hash the handler sees is the one the client's document was checked against.
  ASSERT_EQ(client_checker_->key_hashes().size(), 1u);
  EXPECT_EQ(ToBytes(peer.tls_key_hash), client_checker_->key_hashes()[0]);
  EXPECT_EQ(client_issuer_->issued(), 1);
  EXPECT_EQ(server_issuer_->issued(), 1);
}

TEST_F(AtlsTest, JoinModeServerWithoutIssuerValidatesAttestingClient) {
  AtlsServerOptions options;
  options.client_validator = client_checker_;
  StartServer(std::move(options));
  auto client = NewClient(client_issuer_, nullptr);  // accept_unattested_server
  auto conn = client->Connect(server_->endpoint(), kTimeout);
  ASSERT_TRUE(conn.ok()) << conn.status();
  EXPECT_FALSE((*conn)->peer().attested);
  EXPECT_EQ(*(*conn)->Call("whoami", "", kTimeout), "node-7");
  EXPECT_EQ(client_checker_->calls(), 1);
}

// A join-mode server carries no document, so it may reuse its certificate across connections;
// the attesting client still gets a fresh key and the server a fresh nonce every time.
TEST_F(AtlsTest, JoinModeServerReusesItsCertificateButClientsKeysAndNoncesAreFresh) {
  AtlsServerOptions options;
  options.client_validator = client_checker_;
  StartServer(std::move(options));
  auto client = NewClient(client_issuer_, nullptr);
  std::set<Bytes> server_keys;
  constexpr int kConnections = 4;
  for (int i = 0; i < kConnections; ++i) {
    auto conn = client->Connect(server_->endpoint(), kTimeout);
    ASSERT_TRUE(conn.ok()) << conn.status();
    ASSERT_TRUE((*conn)->Call("echo", "x", kTimeout).ok());
    const auto& hash = (*conn)->peer().tls_key_hash;
    server_keys.insert(Bytes(hash.begin(), hash.end()));
  }
  ASSERT_EQ(server_keys.size(), 1u);
  EXPECT_NE(*server_keys.begin(), Bytes(kAtlsKeyHashSize, 0));  // a real key's hash
  const auto nonces = client_checker_->nonces();
  const auto keys = client_checker_->key_hashes();
  ASSERT_EQ(nonces.size(), static_cast<size_t>(kConnections));
  EXPECT_EQ(std::set<Bytes>(nonces.begin(), nonces.end()).size(), nonces.size());
  EXPECT_EQ(std::set<Bytes>(keys.begin(), keys.end()).size(), keys.size());
}

TEST(AtlsOptionsTest, RefusesConfigurationsThatAttestNothing) {
  const auto handler = [](std::string_view, std::string_view,
                          const PeerInfo&) -> absl::StatusOr<std::string> { return ""; };
  const SecretBytes key = FakeMacKey();
  auto issuer = std::make_shared<FakeIssuer>("x", key);
  auto validator = std::make_shared<FakeValidator>(key);

  EXPECT_EQ(AtlsServer::Start(AtlsServerOptions{}, handler).status().code(),
            absl::StatusCode::kInvalidArgument);
  AtlsServerOptions server;
  server.issuer = issuer;
  server.worker_threads = 0;
  EXPECT_EQ(AtlsServer::Start(server, handler).status().code(), absl::StatusCode::kInvalidArgument);
  server.worker_threads = 1;
  server.max_frame_size = 10;
  EXPECT_EQ(AtlsServer::Start(server, handler).status().code(), absl::StatusCode::kInvalidArgument);
  server.max_frame_size = kAtlsDefaultMaxFrameSize;
  server.handshake_timeout = 0ms;
  EXPECT_EQ(AtlsServer::Start(server, handler).status().code(), absl::StatusCode::kInvalidArgument);
  server.handshake_timeout = 1s;
  EXPECT_EQ(AtlsServer::Start(server, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  auto started = AtlsServer::Start(server, handler);
  ASSERT_TRUE(started.ok()) << started.status();
  EXPECT_NE((*started)->port(), 0);

  EXPECT_EQ(AtlsClient::New(AtlsClientOptions{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  AtlsClientOptions client;
  client.issuer = issuer;  // attests, but would trust any server
  auto refused = AtlsClient::New(client);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(refused.status()), HasSubstr("accept_unattested_server"));
  client.accept_unattested_server = true;
  EXPECT_TRUE(AtlsClient::New(client).ok());
  client.server_validator = validator;
  client.max_frame_size = kAtlsDefaultMaxFrameSize * 1024;
  EXPECT_EQ(AtlsClient::New(client).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AtlsTest, EveryConnectionHasFreshNoncesAndFreshKeys) {
  StartMutualServer();
  auto client = MutualClient();
  constexpr int kConnections = 6;
  for (int i = 0; i < kConnections; ++i) {
    auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
    ASSERT_TRUE(response.ok()) << response.status();
  }
  for (const auto* validator : {server_checker_.get(), client_checker_.get()}) {
    const auto nonces = validator->nonces();
    const auto keys = validator->key_hashes();
    ASSERT_EQ(nonces.size(), static_cast<size_t>(kConnections));
    EXPECT_EQ(std::set<Bytes>(nonces.begin(), nonces.end()).size(), nonces.size());
    EXPECT_EQ(std::set<Bytes>(keys.begin(), keys.end()).size(), keys.size());
    for (const auto& nonce : nonces) EXPECT_EQ(nonce.size(), kAtlsNonceSize);
  }
}

// --- The server's attestation, checked by the client -----------------------------------------

TEST_F(AtlsTest, ServerWithBadDocumentFailsHandshakeAndHandlerNeverRuns) {
  AtlsServerOptions options;
  options.issuer = TamperingIssuer(server_issuer_);
  StartServer(std::move(options));
  auto client = PlainClient();
  auto response = client->Call(server_->endpoint(), "echo", "secret request", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("attestation of the server failed"));
  EXPECT_THAT(Msg(response.status()), HasSubstr("MAC does not verify"));
  // The client aborted inside the handshake: the server saw its alert, never a request.
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kPermissionDenied) << failure;
  EXPECT_THAT(Msg(failure), HasSubstr("bad certificate"));
  EXPECT_EQ(handler_calls_.load(), 0);
}

TEST_F(AtlsTest, ServerWithoutDocumentIsRefusedByValidatingClient) {
  AtlsServerOptions options;
  options.client_validator = client_checker_;  // join-mode server: no issuer
  StartServer(std::move(options));
  auto response = MutualClient()->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("carries no attestation document"));
  EXPECT_EQ(handler_calls_.load(), 0);
  EXPECT_EQ(client_issuer_->issued(), 0);  // the client gave nothing away
}

TEST_F(AtlsTest, ServerDocumentLiftedFromAnotherConnectionIsRefused) {
  AtlsServerOptions options;
  options.issuer = LiftingIssuer(server_issuer_);
  StartServer(std::move(options));
  auto client = PlainClient();
  // First connection: the key is the one the document binds.
  ASSERT_TRUE(client->Call(server_->endpoint(), "echo", "x", kTimeout).ok());
  // Second: a genuine document for this nonce, but bound to the first connection's key.
  auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("binds another TLS key"));
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, ServerDocumentWithReplayedNonceIsRefused) {
  AtlsServerOptions options;
  options.issuer = ReplayIssuer(server_issuer_);
  StartServer(std::move(options));
  auto client = PlainClient();
  ASSERT_TRUE(client->Call(server_->endpoint(), "echo", "x", kTimeout).ok());
  auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("binds another nonce"));
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, ServerReplayingAWholeOldDocumentIsRefused) {
  AtlsServerOptions options;
  options.issuer = VerbatimReplayIssuer(server_issuer_);
  StartServer(std::move(options));
  auto client = PlainClient();
  ASSERT_TRUE(client->Call(server_->endpoint(), "echo", "x", kTimeout).ok());
  auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, ServerIssuerFailureAbortsTheHandshake) {
  AtlsServerOptions options;
  options.issuer = std::make_shared<FuncIssuer>(
      [](std::span<const uint8_t>, std::span<const uint8_t>) -> absl::StatusOr<std::string> {
        return UnavailableError("tpm unreachable");
      });
  StartServer(std::move(options));
  auto response = PlainClient()->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(response.status()), HasSubstr("internal error"));
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(failure), HasSubstr("tpm unreachable"));
  EXPECT_EQ(server_checker_->calls(), 0);
}

TEST_F(AtlsTest, ServerIssuerReturningAnOversizeDocumentIsRefusedLocally) {
  AtlsServerOptions options;
  options.issuer = std::make_shared<FuncIssuer>(
      [](std::span<const uint8_t>, std::span<const uint8_t>) -> absl::StatusOr<std::string> {
        return std::string(kAtlsMaxDocumentSize + 1, 'd');
      });
  StartServer(std::move(options));
  EXPECT_FALSE(PlainClient()->Call(server_->endpoint(), "echo", "x", kTimeout).ok());
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(Msg(failure), HasSubstr("limit"));
}

// --- The client's attestation, checked by the server (mutual mode) ---------------------------

TEST_F(AtlsTest, MutualModeRefusesClientWithoutCertificate) {
  StartMutualServer();
  auto client = NewClient(nullptr, server_checker_);  // validates, does not attest
  auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("refused this client"));
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kPermissionDenied) << failure;
  EXPECT_THAT(Msg(failure), HasSubstr("presented no certificate"));
  EXPECT_EQ(handler_calls_.load(), 0);
  EXPECT_EQ(client_checker_->calls(), 0);
}

TEST_F(AtlsTest, MutualModeRefusesClientWithBadDocument) {
  StartMutualServer();
  auto response = MutualClient(TamperingIssuer(client_issuer_))
                      ->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("bad certificate"));
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(failure), HasSubstr("attestation of the client failed"));
  EXPECT_THAT(Msg(failure), HasSubstr("MAC does not verify"));
  EXPECT_EQ(handler_calls_.load(), 0);
}

TEST_F(AtlsTest, MutualModeRefusesClientDocumentLiftedFromAnotherConnection) {
  StartMutualServer();
  auto client = MutualClient(LiftingIssuer(client_issuer_));
  ASSERT_TRUE(client->Call(server_->endpoint(), "echo", "x", kTimeout).ok());
  auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  const absl::Status failure = NextFailure();
  EXPECT_THAT(Msg(failure), HasSubstr("binds another TLS key"));
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, MutualModeRefusesClientDocumentWithReplayedNonce) {
  StartMutualServer();
  auto client = MutualClient(ReplayIssuer(client_issuer_));
  ASSERT_TRUE(client->Call(server_->endpoint(), "echo", "x", kTimeout).ok());
  auto response = client->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  const absl::Status failure = NextFailure();
  EXPECT_THAT(Msg(failure), HasSubstr("binds another nonce"));
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, ClientIssuerFailureIsReportedToTheCaller) {
  StartMutualServer();
  auto failing = std::make_shared<FuncIssuer>(
      [](std::span<const uint8_t>, std::span<const uint8_t>) -> absl::StatusOr<std::string> {
        return FailedPreconditionError("tpm locked out");
      });
  auto response = MutualClient(failing)->Call(server_->endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Msg(response.status()), HasSubstr("tpm locked out"));
  EXPECT_EQ(handler_calls_.load(), 0);
}

// --- Raw OpenSSL peers --------------------------------------------------------------------------

using internal::PkeyPtr;
using internal::SslCtxPtr;
using internal::SslPtr;
using internal::UniqueFd;
using internal::X509Ptr;

struct KeyCert {
  PkeyPtr key;
  X509Ptr cert;
};

KeyCert NewKeyCert(const std::string* document) {
  auto key = internal::GenerateAtlsKey();
  EXPECT_TRUE(key.ok());
  auto cert = internal::MakeAtlsCertificate(key->get(), document);
  EXPECT_TRUE(cert.ok()) << cert.status();
  return {*std::move(key), *std::move(cert)};
}

void SetTimeouts(int fd) {
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

// ListenLoopback returns a listening blocking socket on 127.0.0.1 and its port.
std::pair<UniqueFd, uint16_t> ListenLoopback() {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(listen(fd.get(), 16), 0);
  socklen_t size = sizeof(addr);
  getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &size);
  return {std::move(fd), ntohs(addr.sin_port)};
}

UniqueFd ConnectLoopback(uint16_t port) {
  UniqueFd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(port);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  SetTimeouts(fd.get());
  return fd;
}

// AddRawNonce sends a nonce of (uintptr_t)arg bytes (at most 64).
int AddRawNonce(SSL*, unsigned int, unsigned int, const unsigned char** out, size_t* out_size,
                X509*, size_t, int*, void* arg) {
  static const std::array<uint8_t, 64> kNonce = {7, 7, 7};
  *out = kNonce.data();
  *out_size = reinterpret_cast<uintptr_t>(arg);
  return 1;
}

int AcceptAnyCertificate(X509_STORE_CTX*, void*) { return 1; }

// RawCtx returns a bare OpenSSL context: TLS up to `max_version`, no verification, optionally
// a certificate, optionally sending a client nonce of `nonce_size` bytes.
SslCtxPtr RawCtx(bool server, int max_version, const KeyCert* identity, size_t nonce_size = 0) {
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_NONE, nullptr);
  SSL_CTX_set_cert_verify_callback(ctx.get(), AcceptAnyCertificate, nullptr);
  if (identity != nullptr) {
    EXPECT_EQ(SSL_CTX_use_certificate(ctx.get(), identity->cert.get()), 1);
    EXPECT_EQ(SSL_CTX_use_PrivateKey(ctx.get(), identity->key.get()), 1);
  }
  if (nonce_size > 0) {
    EXPECT_EQ(SSL_CTX_add_custom_ext(
                  ctx.get(), kAtlsClientNonceExtension, SSL_EXT_CLIENT_HELLO, AddRawNonce, nullptr,
                  reinterpret_cast<void*>(uintptr_t{nonce_size}), nullptr, nullptr),
              1);
  }
  return ctx;
}

struct RawOutcome {
  bool handshake_ok = false;
  bool got_response = false;
  bool session_resumable = true;
};

// RawClientExchange connects with `ctx`, handshakes, sends one "echo" request and reads.
RawOutcome RawClientExchange(SSL_CTX* ctx, uint16_t port) {
  RawOutcome outcome;
  UniqueFd fd = ConnectLoopback(port);
  SslPtr ssl(SSL_new(ctx));
  SSL_set_fd(ssl.get(), fd.get());
  if (SSL_connect(ssl.get()) != 1) return outcome;
  outcome.handshake_ok = true;
  const std::string payload = *internal::EncodeRpcRequest("echo", "raw");
  const auto header = internal::FrameHeader(static_cast<uint32_t>(payload.size()));
  std::string frame(header.begin(), header.end());
  frame += payload;
  if (SSL_write(ssl.get(), frame.data(), static_cast<int>(frame.size())) <= 0) return outcome;
  char buf[64];
  outcome.got_response = SSL_read(ssl.get(), buf, sizeof(buf)) > 0;
  outcome.session_resumable = SSL_SESSION_is_resumable(SSL_get0_session(ssl.get())) == 1;
  SSL_shutdown(ssl.get());
  return outcome;
}

// RawServerOnce serves one connection with `ctx` on a thread and records whether the handshake
// finished and whether the client sent application data.
class RawServerOnce {
 public:
  explicit RawServerOnce(SslCtxPtr ctx) : ctx_(std::move(ctx)) {
    auto [fd, port] = ListenLoopback();
    listen_ = std::move(fd);
    port_ = port;
    thread_ = std::thread([this] { Run(); });
  }
  ~RawServerOnce() { Wait(); }
  std::string endpoint() const { return fmt::format("127.0.0.1:{}", port_); }
  // handshake_ok and got_application_data wait for the connection to end.
  bool handshake_ok() {
    Wait();
    return handshake_ok_;
  }
  bool got_application_data() {
    Wait();
    return got_data_;
  }

 private:
  void Wait() {
    if (thread_.joinable()) thread_.join();
  }

  void Run() {
    pollfd p{listen_.get(), POLLIN, 0};
    if (poll(&p, 1, 10'000) != 1) return;
    UniqueFd fd(accept(listen_.get(), nullptr, nullptr));
    SetTimeouts(fd.get());
    SslPtr ssl(SSL_new(ctx_.get()));
    SSL_set_fd(ssl.get(), fd.get());
    if (SSL_accept(ssl.get()) != 1) return;
    handshake_ok_ = true;
    char buf[16];
    got_data_ = SSL_read(ssl.get(), buf, sizeof(buf)) > 0;
  }

  SslCtxPtr ctx_;
  UniqueFd listen_;
  uint16_t port_ = 0;
  std::thread thread_;
  bool handshake_ok_ = false;
  bool got_data_ = false;
};

TEST_F(AtlsTest, ServerRefusesClientWithoutNonce) {
  StartPlainServer();
  auto ctx = RawCtx(/*server=*/false, TLS1_3_VERSION, nullptr, /*nonce_size=*/0);
  const RawOutcome outcome = RawClientExchange(ctx.get(), server_->port());
  EXPECT_FALSE(outcome.handshake_ok);
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(failure), HasSubstr("sent no aTLS nonce"));
  EXPECT_EQ(server_issuer_->issued(), 0);
}

TEST_F(AtlsTest, ServerRefusesNonceOfWrongLength) {
  StartPlainServer();
  auto ctx = RawCtx(/*server=*/false, TLS1_3_VERSION, nullptr, /*nonce_size=*/16);
  EXPECT_FALSE(RawClientExchange(ctx.get(), server_->port()).handshake_ok);
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(failure), HasSubstr("holds 16 bytes"));
  EXPECT_EQ(server_issuer_->issued(), 0);
}

TEST_F(AtlsTest, ServerAcceptsWellFormedRawClientWithoutResumption) {
  // The positive control for the two tests above, and: no session can be resumed.
  StartPlainServer();
  auto ctx = RawCtx(/*server=*/false, TLS1_3_VERSION, nullptr, kAtlsNonceSize);
  const RawOutcome outcome = RawClientExchange(ctx.get(), server_->port());
  EXPECT_TRUE(outcome.handshake_ok);
  EXPECT_TRUE(outcome.got_response);
  EXPECT_FALSE(outcome.session_resumable);
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, ServerRefusesTls12Client) {
  StartPlainServer();
  auto ctx = RawCtx(/*server=*/false, TLS1_2_VERSION, nullptr);
  EXPECT_FALSE(RawClientExchange(ctx.get(), server_->port()).handshake_ok);
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(failure), HasSubstr("unsupported protocol"));
  EXPECT_EQ(server_issuer_->issued(), 0);
  EXPECT_EQ(handler_calls_.load(), 0);
}

TEST_F(AtlsTest, MutualModeRefusesRawClientCertificateWithoutDocument) {
  StartMutualServer();
  const KeyCert identity = NewKeyCert(nullptr);
  auto ctx = RawCtx(/*server=*/false, TLS1_3_VERSION, &identity, kAtlsNonceSize);
  const RawOutcome outcome = RawClientExchange(ctx.get(), server_->port());
  EXPECT_FALSE(outcome.got_response);
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(failure), HasSubstr("client's certificate carries no attestation document"));
  EXPECT_EQ(handler_calls_.load(), 0);
  EXPECT_EQ(client_checker_->calls(), 0);
}

TEST_F(AtlsTest, ClientRefusesTls12Server) {
  const KeyCert identity = NewKeyCert(nullptr);
  RawServerOnce raw(RawCtx(/*server=*/true, TLS1_2_VERSION, &identity));
  auto response = PlainClient()->Call(raw.endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(response.status()), HasSubstr("protocol version"));
  EXPECT_FALSE(raw.handshake_ok());
  EXPECT_EQ(server_checker_->calls(), 0);
}

TEST_F(AtlsTest, ClientRefusesServerSendingTwoCertificates) {
  KeyCert identity = NewKeyCert(nullptr);
  const KeyCert extra = NewKeyCert(nullptr);
  auto ctx = RawCtx(/*server=*/true, TLS1_3_VERSION, &identity);
  ASSERT_EQ(SSL_CTX_add1_chain_cert(ctx.get(), extra.cert.get()), 1);
  RawServerOnce raw(std::move(ctx));
  auto response = NewClient(client_issuer_, nullptr)->Call(raw.endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("sent 2 certificates"));
  EXPECT_FALSE(raw.handshake_ok());
  EXPECT_FALSE(raw.got_application_data());
}

TEST_F(AtlsTest, ClientSendsNothingToServerReplayingStolenKeyAndDocument) {
  // An attacker holding an old connection's key, certificate and document (genuine, bound to
  // that key, but to an old nonce) replays them: the client refuses inside the handshake and
  // the raw server never receives application data.
  auto key = internal::GenerateAtlsKey();
  ASSERT_TRUE(key.ok());
  const auto key_hash = *internal::SpkiSha256(key->get());
  const std::array<uint8_t, kAtlsNonceSize> old_nonce{1, 2, 3};
  const std::string document = *server_issuer_->Make(old_nonce, key_hash);
  KeyCert stolen{*std::move(key), nullptr};
  stolen.cert = *internal::MakeAtlsCertificate(stolen.key.get(), &document);
  RawServerOnce raw(RawCtx(/*server=*/true, TLS1_3_VERSION, &stolen));
  auto response = PlainClient()->Call(raw.endpoint(), "echo", "secret", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("binds another nonce"));
  EXPECT_FALSE(raw.handshake_ok());
  EXPECT_FALSE(raw.got_application_data());
  EXPECT_EQ(server_checker_->calls(), 1);  // the refusal came from the document check
}

TEST_F(AtlsTest, ClientDoesNotAttestWhenServerOmitsItsNonce) {
  // A server that asks for a client certificate but sends no nonce gets nothing issued.
  const KeyCert identity = NewKeyCert(nullptr);
  auto ctx = RawCtx(/*server=*/true, TLS1_3_VERSION, &identity);
  SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  RawServerOnce raw(std::move(ctx));
  auto response = NewClient(client_issuer_, nullptr)->Call(raw.endpoint(), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(Msg(response.status()), HasSubstr("without an aTLS nonce"));
  EXPECT_EQ(client_issuer_->issued(), 0);
  EXPECT_FALSE(raw.handshake_ok());
}

// --- Certificate profile ----------------------------------------------------------------------

// Der returns the DER of an ASN.1 object through its i2d function.
template <typename T>
std::string Der(T* object, int (*i2d)(const T*, unsigned char**)) {
  unsigned char* der = nullptr;
  const int size = i2d(object, &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(size));
  OPENSSL_free(der);
  return out;
}

std::string DerOctetString(const std::string& content) {
  ASN1_OCTET_STRING* s = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING_set(s, reinterpret_cast<const unsigned char*>(content.data()),
                        static_cast<int>(content.size()));
  std::string out = Der<ASN1_OCTET_STRING>(s, i2d_ASN1_OCTET_STRING);
  ASN1_OCTET_STRING_free(s);
  return out;
}

// AddRawExtension adds the document extension with `extn_value` (raw) to `cert` and re-signs.
void AddRawExtension(const KeyCert& kc, const std::string& extn_value, bool critical) {
  ASN1_OBJECT* oid = OBJ_txt2obj(kAtlsDocumentOid, 1);
  ASN1_OCTET_STRING* data = ASN1_OCTET_STRING_new();
  ASN1_OCTET_STRING_set(data, reinterpret_cast<const unsigned char*>(extn_value.data()),
                        static_cast<int>(extn_value.size()));
  X509_EXTENSION* ext = X509_EXTENSION_create_by_OBJ(nullptr, oid, critical ? 1 : 0, data);
  ASSERT_EQ(X509_add_ext(kc.cert.get(), ext, -1), 1);
  ASSERT_GT(X509_sign(kc.cert.get(), kc.key.get(), EVP_sha256()), 0);
  X509_EXTENSION_free(ext);
  ASN1_OCTET_STRING_free(data);
  ASN1_OBJECT_free(oid);
}

// Reparsed returns `cert` after a DER round trip, as a peer would receive it.
X509Ptr Reparsed(X509* cert) {
  const std::string der = Der<X509>(cert, i2d_X509);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  return X509Ptr(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

TEST(AtlsCertificateTest, CarriesTheDocumentInTheProfile) {
  const std::string document = "document bytes \x00\x01"s;
  const KeyCert kc = NewKeyCert(&document);
  X509Ptr cert = Reparsed(kc.cert.get());
  ASSERT_NE(cert, nullptr);
  auto contents = internal::ParseAtlsCertificate(cert.get());
  ASSERT_TRUE(contents.ok()) << contents.status();
  ASSERT_TRUE(contents->document.has_value());
  EXPECT_EQ(*contents->document, document);
  // The key hash the issuer binds is that of the certificate's SubjectPublicKeyInfo.
  EXPECT_EQ(contents->key_hash, *internal::SpkiSha256(kc.key.get()));
  const std::string spki = Der<X509_PUBKEY>(X509_get_X509_PUBKEY(cert.get()), i2d_X509_PUBKEY);
  EXPECT_EQ(contents->key_hash, Sha256({std::span<const uint8_t>(
                                    reinterpret_cast<const uint8_t*>(spki.data()), spki.size())}));
  // Self-signed X.509 v3, non-critical extension, short validity around now.
  EXPECT_EQ(X509_get_version(cert.get()), X509_VERSION_3);
  EXPECT_EQ(X509_verify(cert.get(), X509_get0_pubkey(cert.get())), 1);
  EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert.get()), X509_get_issuer_name(cert.get())), 0);
  ASN1_OBJECT* oid = OBJ_txt2obj(kAtlsDocumentOid, 1);
  const int index = X509_get_ext_by_OBJ(cert.get(), oid, -1);
  ASN1_OBJECT_free(oid);
  ASSERT_GE(index, 0);
  EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(cert.get(), index)), 0);
  EXPECT_LT(X509_cmp_current_time(X509_get0_notBefore(cert.get())), 0);
  EXPECT_GT(X509_cmp_current_time(X509_get0_notAfter(cert.get())), 0);
  int days = 0, seconds = 0;
  ASSERT_EQ(ASN1_TIME_diff(&days, &seconds, X509_get0_notBefore(cert.get()),
                           X509_get0_notAfter(cert.get())),
            1);
  EXPECT_EQ(days, 0);
  EXPECT_LE(seconds, 3600);
}

TEST(AtlsCertificateTest, SerialsAreRandomAndPositive) {
  std::set<std::string> serials;
  for (int i = 0; i < 16; ++i) {
    const KeyCert kc = NewKeyCert(nullptr);
    const ASN1_INTEGER* serial = X509_get0_serialNumber(kc.cert.get());
    EXPECT_EQ(ASN1_STRING_type(serial), V_ASN1_INTEGER);  // not V_ASN1_NEG_INTEGER
    serials.insert(Der<ASN1_INTEGER>(const_cast<ASN1_INTEGER*>(serial), i2d_ASN1_INTEGER));
  }
  EXPECT_EQ(serials.size(), 16u);
}

TEST(AtlsCertificateTest, ParsesDerAndRefusesWhatIsNotOneCertificate) {
  const std::string document = "doc";
  const KeyCert kc = NewKeyCert(&document);
  const std::string der = Der<X509>(kc.cert.get(), i2d_X509);
  const auto bytes = [](const std::string& s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  auto contents = internal::ParseAtlsCertificateDer(bytes(der));
  ASSERT_TRUE(contents.ok()) << contents.status();
  EXPECT_EQ(contents->document, document);
  for (const std::string& bad : {der.substr(0, der.size() - 1), der + "x", ""s, "garbage"s}) {
    EXPECT_EQ(internal::ParseAtlsCertificateDer(bytes(bad)).status().code(),
              absl::StatusCode::kPermissionDenied);
  }
}

TEST(AtlsCertificateTest, WithoutDocumentHasNoExtension) {
  const KeyCert kc = NewKeyCert(nullptr);
  auto contents = internal::ParseAtlsCertificate(kc.cert.get());
  ASSERT_TRUE(contents.ok());
  EXPECT_FALSE(contents->document.has_value());
}

TEST(AtlsCertificateTest, MakeRefusesOversizeDocument) {
  auto key = internal::GenerateAtlsKey();
  const std::string document(kAtlsMaxDocumentSize + 1, 'd');
  EXPECT_EQ(internal::MakeAtlsCertificate(key->get(), &document).status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string largest(kAtlsMaxDocumentSize, 'd');
  EXPECT_TRUE(internal::MakeAtlsCertificate(key->get(), &largest).ok());
}

void ExpectRefused(X509* cert, std::string_view why) {
  X509Ptr received = Reparsed(cert);
  ASSERT_NE(received, nullptr);
  auto contents = internal::ParseAtlsCertificate(received.get());
  EXPECT_EQ(contents.status().code(), absl::StatusCode::kPermissionDenied) << why;
  EXPECT_THAT(Msg(contents.status()), HasSubstr(std::string(why)));
}

TEST(AtlsCertificateTest, ParseRefusesEveryProfileViolation) {
  const std::string document = "doc";
  {
    const KeyCert kc = NewKeyCert(&document);
    AddRawExtension(kc, DerOctetString("second"), false);
    ExpectRefused(kc.cert.get(), "twice");
  }
  {
    const KeyCert kc = NewKeyCert(nullptr);
    AddRawExtension(kc, DerOctetString(document), /*critical=*/true);
    ExpectRefused(kc.cert.get(), "critical");
  }
  {
    const KeyCert kc = NewKeyCert(nullptr);
    AddRawExtension(kc, "\x02\x01\x05", false);  // INTEGER 5, not an OCTET STRING
    ExpectRefused(kc.cert.get(), "not one DER OCTET STRING");
  }
  {
    const KeyCert kc = NewKeyCert(nullptr);
    AddRawExtension(kc, DerOctetString(document) + "X", false);  // trailing byte
    ExpectRefused(kc.cert.get(), "not one DER OCTET STRING");
  }
  {
    const KeyCert kc = NewKeyCert(nullptr);
    AddRawExtension(kc, DerOctetString(document).substr(0, 3), false);  // truncated
    ExpectRefused(kc.cert.get(), "not one DER OCTET STRING");
  }
  {
    const KeyCert kc = NewKeyCert(nullptr);
    AddRawExtension(kc, DerOctetString(std::string(kAtlsMaxDocumentSize + 1, 'd')), false);
    ExpectRefused(kc.cert.get(), "exceeds");
  }
  for (const char* curve : {"P-384", "ED25519"}) {
    PkeyPtr key(std::string_view(curve) == "ED25519" ? EVP_PKEY_Q_keygen(nullptr, nullptr, curve)
                                                     : EVP_EC_gen(curve));
    ASSERT_NE(key, nullptr) << curve;
    X509Ptr cert(X509_new());
    X509_set_version(cert.get(), X509_VERSION_3);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 60);
    X509_set_pubkey(cert.get(), key.get());
    ASSERT_GT(X509_sign(cert.get(), key.get(),
                        std::string_view(curve) == "ED25519" ? nullptr : EVP_sha384()),
              0);
    ExpectRefused(cert.get(), "not ECDSA P-256");
  }
}

// --- Frames -------------------------------------------------------------------------------------

TEST(AtlsFrameTest, RequestCodec) {
  auto payload = internal::EncodeRpcRequest("join", "body\0bytes"s);
  ASSERT_TRUE(payload.ok());
  EXPECT_EQ(*payload, "\x04join" + "body\0bytes"s);
  auto request = internal::DecodeRpcRequest(*payload);
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(request->method, "join");
  EXPECT_EQ(request->body, "body\0bytes"s);

  EXPECT_FALSE(internal::EncodeRpcRequest("", "x").ok());
  EXPECT_FALSE(internal::EncodeRpcRequest(std::string(256, 'm'), "x").ok());
  EXPECT_TRUE(internal::EncodeRpcRequest(std::string(255, 'm'), "x").ok());
  for (const std::string& bad : {""s, "\x00"s, "\x05join"s}) {
    EXPECT_EQ(internal::DecodeRpcRequest(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(internal::FrameHeader(0x01020304), (std::array<uint8_t, 4>{0x01, 0x02, 0x03, 0x04}));
}

TEST(AtlsFrameTest, ResponseCodec) {
  auto ok = internal::DecodeRpcResponse(internal::EncodeRpcResponse(std::string("yes"), 1024));
  ASSERT_TRUE(ok.ok());
  EXPECT_TRUE(ok->status.ok());
  EXPECT_EQ(ok->body, "yes");

  auto error =
      internal::DecodeRpcResponse(internal::EncodeRpcResponse(NotFoundError("missing"), 1024));
  ASSERT_TRUE(error.ok());
  EXPECT_EQ(error->status.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Msg(error->status), "missing");

  // Too large for the frame: replaced by RESOURCE_EXHAUSTED; long messages are cut.
  auto big = internal::DecodeRpcResponse(internal::EncodeRpcResponse(std::string(100, 'x'), 64));
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->status.code(), absl::StatusCode::kResourceExhausted);
  const std::string long_message(10'000, 'm');
  EXPECT_EQ(internal::EncodeRpcResponse(InternalError("{}", long_message), 1 << 20).size(),
            1 + internal::kMaxErrorMessageSize);

  for (const std::string& bad : {""s, "\x11oops"s, "\x05" + std::string(5000, 'm')}) {
    EXPECT_EQ(internal::DecodeRpcResponse(bad).status().code(), absl::StatusCode::kDataLoss);
  }
}

TEST_F(AtlsTest, OversizeRequestIsRefusedBeforeSending) {
  StartPlainServer();
  auto conn = *PlainClient()->Connect(server_->endpoint(), kTimeout);
  auto response = conn->Call("echo", std::string(kAtlsDefaultMaxFrameSize, 'x'), kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(response.status()), HasSubstr("exceeds the 1048576-byte frame limit"));
  EXPECT_EQ(*conn->Call("echo", "still usable", kTimeout), "still usable");
  EXPECT_EQ(handler_calls_.load(), 1);
}

TEST_F(AtlsTest, ServerRefusesFrameAboveItsLimit) {
  AtlsServerOptions options;
  options.issuer = server_issuer_;
  options.max_frame_size = 64 * 1024;
  StartServer(std::move(options));
  auto client = PlainClient();  // 1 MiB limit: it will send what the server refuses
  auto response = client->Call(server_->endpoint(), "echo", std::string(100'000, 'x'), kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(response.status()), HasSubstr("exceeds the 65536-byte limit"));
  EXPECT_EQ(handler_calls_.load(), 0);
  // Just under the limit works.
  EXPECT_TRUE(client->Call(server_->endpoint(), "echo", std::string(60'000, 'x'), kTimeout).ok());
}

TEST_F(AtlsTest, OversizeResponsesAreClearErrors) {
  StartPlainServer();
  auto response = PlainClient()->Call(server_->endpoint(), "big", "2000000", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(response.status()), HasSubstr("response of 2000000 bytes exceeds"));

  auto small_client = NewClient(nullptr, server_checker_, /*max_frame=*/1024);
  response = small_client->Call(server_->endpoint(), "big", "2000", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(response.status()), HasSubstr("response frame of 2001 bytes exceeds"));
  EXPECT_TRUE(small_client->Call(server_->endpoint(), "big", "1000", kTimeout).ok());
}

// --- Connection errors and timeouts -------------------------------------------------------------

TEST_F(AtlsTest, ConnectFailuresAreUnavailable) {
  uint16_t port;
  {
    auto [fd, p] = ListenLoopback();
    port = p;
  }  // closed: nothing listens there now
  auto response = PlainClient()->Call(fmt::format("127.0.0.1:{}", port), "echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(response.status()), HasSubstr("refused"));
}

TEST_F(AtlsTest, MalformedEndpointsAreInvalidArguments) {
  auto client = PlainClient();
  for (const char* endpoint : {"localhost", "::1:80", "127.0.0.1:0", "127.0.0.1:65536",
                               "127.0.0.1:8x", "[::1]80", ":80", "[::1]:"}) {
    EXPECT_EQ(client->Call(endpoint, "echo", "x", kTimeout).status().code(),
              absl::StatusCode::kInvalidArgument)
        << endpoint;
  }
}

TEST_F(AtlsTest, SilentServerTimesOutTheHandshake) {
  auto [fd, port] = ListenLoopback();  // the kernel accepts; nobody speaks TLS
  auto response = PlainClient()->Call(fmt::format("127.0.0.1:{}", port), "echo", "x", 300ms);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Msg(response.status()), HasSubstr("TLS handshake timed out"));
}

TEST_F(AtlsTest, SilentClientTimesOutOnTheServer) {
  AtlsServerOptions options;
  options.issuer = server_issuer_;
  options.handshake_timeout = 300ms;
  StartServer(std::move(options));
  UniqueFd silent = ConnectLoopback(server_->port());
  const absl::Status failure = NextFailure();
  EXPECT_EQ(failure.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(server_issuer_->issued(), 0);
}

TEST_F(AtlsTest, SlowHandlerHitsTheCallTimeout) {
  StartPlainServer();
  auto response = PlainClient()->Call(server_->endpoint(), "sleep", "1000", 300ms);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(Msg(response.status()), HasSubstr("timed out"));
}

TEST_F(AtlsTest, IdleConnectionIsClosedByTheServer) {
  AtlsServerOptions options;
  options.issuer = server_issuer_;
  options.idle_timeout = 200ms;
  StartServer(std::move(options));
  auto conn = *PlainClient()->Connect(server_->endpoint(), kTimeout);
  ASSERT_TRUE(conn->Call("echo", "x", kTimeout).ok());
  std::this_thread::sleep_for(800ms);
  auto response = conn->Call("echo", "x", kTimeout);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(conn->Call("echo", "x", kTimeout).status().code(), absl::StatusCode::kUnavailable);
}

// --- Concurrency and shutdown
// ---------------------------------------------------------------------

TEST_F(AtlsTest, ManyConcurrentClientsInMutualMode) {
  AtlsServerOptions options;
  options.issuer = server_issuer_;
  options.client_validator = client_checker_;
  options.worker_threads = 4;
  StartServer(std::move(options));
  constexpr int kThreads = 16;
  constexpr int kCallsPerThread = 6;
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto issuer = std::make_shared<FakeIssuer>(fmt::format("node-{}", t), mac_key_);
      auto client = MutualClient(issuer);
      std::unique_ptr<AtlsConnection> kept;
      for (int i = 0; i < kCallsPerThread; ++i) {
        // Half the calls on fresh connections, half on one kept connection.
        absl::StatusOr<std::string> who;
        if (i % 2 == 0) {
          who = client->Call(server_->endpoint(), "whoami", "", kTimeout);
        } else {
          if (kept == nullptr) kept = *client->Connect(server_->endpoint(), kTimeout);
          who = kept->Call("whoami", "", kTimeout);
          if (i == kCallsPerThread - 1) kept.reset();
        }
        if (who.ok() && *who == fmt::format("node-{}", t)) ok.fetch_add(1);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok.load(), kThreads * kCallsPerThread);
  EXPECT_EQ(handler_calls_.load(), kThreads * kCallsPerThread);
  EXPECT_EQ(failure_count(), 0u);
}

TEST_F(AtlsTest, MaxConnectionsHoldsNewClientsUntilOneCloses) {
  AtlsServerOptions options;
  options.issuer = server_issuer_;
  options.worker_threads = 2;
  options.max_connections = 2;
  StartServer(std::move(options));
  auto client = PlainClient();
  auto first = *client->Connect(server_->endpoint(), kTimeout);
  auto second = *client->Connect(server_->endpoint(), kTimeout);
  ASSERT_TRUE(first->Call("echo", "1", kTimeout).ok());
  ASSERT_TRUE(second->Call("echo", "2", kTimeout).ok());
  // Both idle connections count against the bound: a third client is not served.
  auto refused = client->Call(server_->endpoint(), "echo", "3", 300ms);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDeadlineExceeded) << refused.status();
  // Once one closes, the server accepts again.
  first.reset();
  auto served = client->Call(server_->endpoint(), "echo", "4", kTimeout);
  ASSERT_TRUE(served.ok()) << served.status();
  EXPECT_EQ(*served, "4");
  EXPECT_EQ(*second->Call("echo", "5", kTimeout), "5");
}

TEST_F(AtlsTest, ShutdownWithClientsConnected) {
  AtlsServerOptions options;
  options.issuer = server_issuer_;
  options.worker_threads = 6;
  StartServer(std::move(options));
  auto client = PlainClient();
  std::vector<std::unique_ptr<AtlsConnection>> idle;
  for (int i = 0; i < 3; ++i) {
    idle.push_back(*client->Connect(server_->endpoint(), kTimeout));
    ASSERT_TRUE(idle.back()->Call("echo", "x", kTimeout).ok());
  }
  // One connection mid-handshake (a silent TCP client) and one call in a handler.
  UniqueFd silent = ConnectLoopback(server_->port());
  absl::StatusOr<std::string> in_flight;
  std::thread caller(
      [&] { in_flight = client->Call(server_->endpoint(), "sleep", "300", kTimeout); });
  while (handler_calls_.load() < 4) std::this_thread::sleep_for(1ms);

  server_->Shutdown();
  caller.join();
  // The running handler finished; its answer may or may not have made it out.
  EXPECT_TRUE(in_flight.ok() || in_flight.status().code() == absl::StatusCode::kUnavailable)
      << in_flight.status();
  for (auto& conn : idle) {
    EXPECT_EQ(conn->Call("echo", "x", kTimeout).status().code(), absl::StatusCode::kUnavailable);
  }
  EXPECT_EQ(client->Call(server_->endpoint(), "echo", "x", 2s).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(failure_count(), 0u);  // connections cut by Shutdown are not handshake failures
  server_->Shutdown();             // idempotent
}

}  // namespace
}  // namespace keywarden::crypto
