// Integration tests of the TPM behind aTLS: a node (swtpm) attests to a server in join mode
// (only the client attests) and the server's TpmValidator decides. Real TLS, real TPM.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "attest.pb.h"
#include "keywarden/attest/release.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/random.h"
#include "tests/subprocess.h"
#include "tests/swtpm.h"

namespace keywarden::attest {
namespace {

using ::keywarden::testing::SwtpmCa;
using ::keywarden::testing::SwtpmInstance;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

struct JoinServer {
  std::unique_ptr<crypto::AtlsServer> server;
  std::string last_identity;
  std::mutex mu;
};

std::unique_ptr<JoinServer> StartServer(std::shared_ptr<crypto::AttestationValidator> validator) {
  auto js = std::make_unique<JoinServer>();
  crypto::AtlsServerOptions options;
  options.client_validator = std::move(validator);
  options.worker_threads = 2;
  JoinServer* raw = js.get();
  auto server =
      crypto::AtlsServer::Start(options,
                                [raw](std::string_view method, std::string_view,
                                      const crypto::PeerInfo& peer) -> absl::StatusOr<std::string> {
                                  std::lock_guard<std::mutex> lock(raw->mu);
                                  raw->last_identity = peer.identity;
                                  return std::string(method);
                                });
  EXPECT_TRUE(server.ok()) << server.status();
  if (server.ok()) js->server = std::move(*server);
  return js;
}

absl::StatusOr<std::string> CallAsNode(const SwtpmInstance& node, const std::string& endpoint) {
  auto tpm = Tpm::Open(node.tcti());
  if (!tpm.ok()) return tpm.status();
  auto issuer = TpmIssuer::New(std::move(*tpm));
  if (!issuer.ok()) return issuer.status();
  crypto::AtlsClientOptions options;
  options.issuer = std::shared_ptr<TpmIssuer>(std::move(*issuer));
  options.accept_unattested_server = true;
  auto client = crypto::AtlsClient::New(options);
  if (!client.ok()) return client.status();
  return (*client)->Call(endpoint, "IssueJoinTicket", "", 30s);
}

Measurements MeasurementsOf(const SwtpmInstance& node) {
  auto tpm = Tpm::Open(node.tcti());
  EXPECT_TRUE(tpm.ok());
  auto bank = (*tpm)->ReadPcrs();
  EXPECT_TRUE(bank.ok());
  Measurements m = MeasurementsFromPcrs(std::span<const PcrValue>(*bank).first(kQuotedPcrCount));
  m.erase(15);  // PCR 15 is judged by the PCR 15 rule, not the base measurements
  return m;
}

TEST(TpmAtls, AGoodNodeIsAcceptedAndIdentifiedByItsEk) {
  SwtpmInstance node;
  ASSERT_TRUE(node.Start());
  const std::string bundle = *keywarden::testing::ReadFile(node.ca_bundle());
  auto js = StartServer(std::make_shared<TpmValidator>(bundle, MeasurementsOf(node), Pcr15Rule{}));
  ASSERT_TRUE(js->server);
  auto reply = CallAsNode(node, js->server->endpoint());
  ASSERT_TRUE(reply.ok()) << reply.status();
  EXPECT_EQ(*reply, "IssueJoinTicket");
  std::lock_guard<std::mutex> lock(js->mu);
  EXPECT_THAT(js->last_identity, ::testing::StartsWith("ek-sha256:"));
  EXPECT_EQ(js->last_identity.size(), 10u + 64u);
}

TEST(TpmAtls, RefusalsForMeasurementsPcr15AndAnUnknownCa) {
  auto ca = std::make_shared<SwtpmCa>();
  SwtpmInstance node(ca);
  ASSERT_TRUE(node.Start());
  const std::string bundle = *keywarden::testing::ReadFile(node.ca_bundle());
  const Measurements good = MeasurementsOf(node);

  // A node whose PCR 4 was extended with junk.
  {
    auto tpm = Tpm::Open(node.tcti());
    ASSERT_TRUE(tpm.ok());
    Measurements expect_other = good;
    expect_other[4].expected[0] ^= 1;
    auto js = StartServer(std::make_shared<TpmValidator>(bundle, expect_other, Pcr15Rule{}));
    auto reply = CallAsNode(node, js->server->endpoint());
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kPermissionDenied) << reply.status();
  }
  // PCR 15 already set, but the server only admits fresh nodes.
  {
    auto tpm = Tpm::Open(node.tcti());
    ASSERT_TRUE(tpm.ok());
    uint8_t id[32];
    ASSERT_TRUE(crypto::RandomFill(id).ok());
    ASSERT_TRUE((*tpm)->ExtendPcr15WithEvent(id).ok());
    auto js = StartServer(std::make_shared<TpmValidator>(bundle, good, Pcr15Rule{}));
    auto reply = CallAsNode(node, js->server->endpoint());
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kPermissionDenied) << reply.status();
    // ... and is admitted where that PCR 15 value is this cluster's.
    auto bank = (*tpm)->ReadPcrs();
    ASSERT_TRUE(bank.ok());
    Pcr15Rule members{false, {(*bank)[15]}};
    auto js2 = StartServer(std::make_shared<TpmValidator>(bundle, good, members));
    EXPECT_TRUE(CallAsNode(node, js2->server->endpoint()).ok());
  }
  // An EK from another CA.
  {
    SwtpmInstance stranger;  // its own CA
    ASSERT_TRUE(stranger.Start());
    auto js =
        StartServer(std::make_shared<TpmValidator>(bundle, MeasurementsOf(stranger), Pcr15Rule{}));
    auto reply = CallAsNode(stranger, js->server->endpoint());
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kPermissionDenied) << reply.status();
  }
}

TEST(TpmAtls, CheckDocumentRefusesAnotherNonceOrKey) {
  SwtpmInstance node;
  ASSERT_TRUE(node.Start());
  const std::string bundle = *keywarden::testing::ReadFile(node.ca_bundle());
  auto tpm = Tpm::Open(node.tcti());
  ASSERT_TRUE(tpm.ok());
  auto issuer = TpmIssuer::New(std::move(*tpm));
  ASSERT_TRUE(issuer.ok()) << issuer.status();
  std::array<uint8_t, 32> nonce{}, key{};
  ASSERT_TRUE(crypto::RandomFill(nonce).ok());
  ASSERT_TRUE(crypto::RandomFill(key).ok());
  auto document = (*issuer)->Issue(nonce, key);
  ASSERT_TRUE(document.ok()) << document.status();
  const Measurements m = MeasurementsOf(node);
  EXPECT_TRUE(CheckDocument(*document, nonce, key, bundle, m, Pcr15Rule{}).ok());
  std::array<uint8_t, 32> other = nonce;
  other[0] ^= 1;
  auto replayed = CheckDocument(*document, other, key, bundle, m, Pcr15Rule{});
  EXPECT_THAT(replayed.status().message(), HasSubstr("quote"));
  auto lifted = CheckDocument(*document, nonce, other, bundle, m, Pcr15Rule{});
  EXPECT_THAT(lifted.status().message(), HasSubstr("quote"));
  std::string tampered = *document;
  tampered[tampered.size() / 2] ^= 1;
  EXPECT_FALSE(CheckDocument(tampered, nonce, key, bundle, m, Pcr15Rule{}).ok());
  EXPECT_FALSE(CheckDocument("garbage", nonce, key, bundle, m, Pcr15Rule{}).ok());
  // Each refusal names its check.
  Measurements pcr4 = m;
  pcr4[4].expected[0] ^= 1;
  EXPECT_THAT(CheckDocument(*document, nonce, key, bundle, pcr4, Pcr15Rule{}).status().message(),
              HasSubstr("PCR 4 does not match"));
  EXPECT_THAT(
      CheckDocument(*document, nonce, key, bundle, m, Pcr15Rule{false, {}}).status().message(),
      HasSubstr("PCR 15 is zero"));
  SwtpmInstance stranger;
  ASSERT_TRUE(stranger.Start());
  const std::string other_bundle = *keywarden::testing::ReadFile(stranger.ca_bundle());
  EXPECT_THAT(CheckDocument(*document, nonce, key, other_bundle, m, Pcr15Rule{}).status().message(),
              HasSubstr("EK certificate"));
}

// Sealed release: what one node's document lets a sender seal opens only in that node's TPM,
// with that AK, for that purpose and context.
TEST(SealedRelease, OpensOnlyInTheQuotingTpmForItsPurposeAndContext) {
  auto ca = std::make_shared<SwtpmCa>();
  SwtpmInstance node(ca), other(ca);
  ASSERT_TRUE(node.Start());
  ASSERT_TRUE(other.Start());
  auto issuer_of = [](const SwtpmInstance& n) {
    auto tpm = Tpm::Open(n.tcti());
    EXPECT_TRUE(tpm.ok()) << tpm.status();
    auto issuer = TpmIssuer::New(std::move(*tpm));
    EXPECT_TRUE(issuer.ok()) << issuer.status();
    return std::move(*issuer);
  };
  auto node_issuer = issuer_of(node);
  auto other_issuer = issuer_of(other);
  std::array<uint8_t, 32> nonce{}, key{};
  auto document = node_issuer->Issue(nonce, key);
  ASSERT_TRUE(document.ok()) << document.status();
  auto peer = PeerTpmFromDocument(*document);
  ASSERT_TRUE(peer.ok()) << peer.status();

  NodeSecrets secrets;
  secrets.state_disk_key = *crypto::RandomSecret(kNodeSecretSize);
  secrets.measurement_secret = *crypto::RandomSecret(kNodeSecretSize);
  auto plaintext = EncodeNodeSecrets(secrets);
  ASSERT_TRUE(plaintext.ok());
  const std::array<uint8_t, 3> salt{1, 2, 3};
  const std::string context = ReleaseContext("0A1B2C3D-0000-4000-8000-000000000000", salt);
  EXPECT_EQ(context, "0a1b2c3d-0000-4000-8000-000000000000/010203");
  SealedRelease sealed;
  ASSERT_TRUE(SealForTpm(*peer, kPurposeJoin, context, *plaintext, &sealed).ok());

  auto opened = OpenSealed(*node_issuer, sealed, kPurposeJoin, context);
  ASSERT_TRUE(opened.ok()) << opened.status();
  auto decoded = DecodeNodeSecrets(*opened);
  ASSERT_TRUE(decoded.ok());
  const auto access = InsecureSecretAccess::Get();
  EXPECT_TRUE(std::ranges::equal(decoded->state_disk_key.Reveal(access),
                                 secrets.state_disk_key.Reveal(access)));
  EXPECT_TRUE(std::ranges::equal(decoded->measurement_secret.Reveal(access),
                                 secrets.measurement_secret.Reveal(access)));

  // Another TPM (same CA) cannot activate the credential.
  EXPECT_EQ(OpenSealed(*other_issuer, sealed, kPurposeJoin, context).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Another purpose or context does not decrypt.
  EXPECT_EQ(OpenSealed(*node_issuer, sealed, kPurposeRecover, context).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(OpenSealed(*node_issuer, sealed, kPurposeJoin, context + "x").status().code(),
            absl::StatusCode::kPermissionDenied);
  // Tampered ciphertext or credential: refused.
  SealedRelease tampered = sealed;
  (*tampered.mutable_ciphertext())[20] ^= 1;
  EXPECT_EQ(OpenSealed(*node_issuer, tampered, kPurposeJoin, context).status().code(),
            absl::StatusCode::kPermissionDenied);
  tampered = sealed;
  (*tampered.mutable_credential_blob())[5] ^= 1;
  EXPECT_FALSE(OpenSealed(*node_issuer, tampered, kPurposeJoin, context).ok());
  tampered = sealed;
  tampered.set_version(2);
  EXPECT_EQ(OpenSealed(*node_issuer, tampered, kPurposeJoin, context).status().code(),
            absl::StatusCode::kInvalidArgument);
  // The same node with a new AK (e.g. after a restart of the node's process) cannot open a
  // release made for the old AK.
  node_issuer.reset();  // swtpm serves one connection at a time
  auto later_issuer = issuer_of(node);
  EXPECT_EQ(OpenSealed(*later_issuer, sealed, kPurposeJoin, context).status().code(),
            absl::StatusCode::kPermissionDenied);
}

}  // namespace
}  // namespace keywarden::attest
