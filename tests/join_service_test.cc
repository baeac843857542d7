// Integration tests of the join service (issue 5): real swtpm nodes (each with a local-CA EK
// certificate), real aTLS, a real KeyService on an SQLite store, and the real `keywarden serve`
// binary. Every refusal must be in the hash-chained audit log with its reason, and the log must
// never hold key bytes.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "attest.pb.h"
#include "keywarden/attest/release.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/keys/cluster.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/net/registry.h"
#include "keywarden/service/audit.h"
#include "keywarden/service/join.h"
#include "keywarden/service/key_service.h"
#include "keywarden/store/kek_store.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"
#include "tests/swtpm.h"

namespace keywarden::service {
namespace {

using ::keywarden::testing::ReadFile;
using ::keywarden::testing::RunResult;
using ::keywarden::testing::ServiceProcess;
using ::keywarden::testing::SwtpmCa;
using ::keywarden::testing::SwtpmInstance;
using ::keywarden::testing::TempDir;
using ::testing::HasSubstr;
using Json = nlohmann::json;
using namespace std::chrono_literals;

constexpr char kUuid[] = "0B1C2D3E-AAAA-4000-8000-00000000ABCD";
constexpr char kUuidLower[] = "0b1c2d3e-aaaa-4000-8000-00000000abcd";

std::string Hex(const SecretBytes& key) {
  return crypto::HexEncode(key.Reveal(InsecureSecretAccess::Get()));
}

// Node is a swtpm-backed machine: its TPM and, once opened, its issuer.
struct Node {
  explicit Node(std::shared_ptr<SwtpmCa> ca) : tpm(std::move(ca)) {}
  SwtpmInstance tpm;
  std::shared_ptr<attest::TpmIssuer> issuer;

  // Open makes the issuer (an AK in the TPM). swtpm takes one client at a time: Close before
  // running tpm2-tools.
  void Open() {
    auto opened = attest::Tpm::Open(tpm.tcti());
    ASSERT_TRUE(opened.ok()) << opened.status();
    auto made = attest::TpmIssuer::New(std::move(*opened));
    ASSERT_TRUE(made.ok()) << made.status();
    issuer = std::move(*made);
  }
  void Close() { issuer.reset(); }

  // EkFingerprint is hex SHA-256 of the EK's TPM2B_PUBLIC, as the audit log names nodes.
  std::string EkFingerprint() const {
    auto opened = attest::Tpm::Open(tpm.tcti());
    EXPECT_TRUE(opened.ok()) << opened.status();
    if (!opened.ok()) return "";
    auto ek = (*opened)->EkPublic();
    EXPECT_TRUE(ek.ok());
    return crypto::HexEncode(crypto::Sha256({std::span<const uint8_t>(*ek)}));
  }
};

attest::Measurements MeasurementsOf(const SwtpmInstance& tpm) {
  auto opened = attest::Tpm::Open(tpm.tcti());
  EXPECT_TRUE(opened.ok());
  auto bank = (*opened)->ReadPcrs();
  EXPECT_TRUE(bank.ok());
  return attest::MeasurementsFromPcrs(
      std::span<const attest::PcrValue>(*bank).first(attest::kQuotedPcrCount));
}

// ReadAudit returns the audit log's records, checking the chain first.
std::vector<Json> ReadAudit(const std::filesystem::path& path) {
  auto count = VerifyAuditLog(path);
  EXPECT_TRUE(count.ok()) << count.status();
  std::vector<Json> records;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) records.push_back(Json::parse(line));
  if (count.ok()) {
    EXPECT_EQ(records.size(), *count);
  }
  return records;
}

// FindRecord returns the first record with these fields (reason: a substring), or null.
const Json* FindRecord(const std::vector<Json>& records, std::string_view event,
                       std::string_view decision, std::string_view reason_part,
                       std::string_view node = "") {
  for (const Json& r : records) {
    if (r["event"] == event && r["decision"] == decision &&
        r["reason"].get<std::string>().find(reason_part) != std::string::npos &&
        (node.empty() || r["node"] == node)) {
      return &r;
    }
  }
  return nullptr;
}

// AwaitAudit waits (up to 10 s) for a record FindRecord matches, then returns all records: the
// server audits a handshake refusal after the client has already seen it fail.
std::vector<Json> AwaitAudit(const std::filesystem::path& path, std::string_view event,
                             std::string_view decision, std::string_view reason_part,
                             std::string_view node = "") {
  std::vector<Json> records;
  for (int i = 0; i < 200; ++i) {
    records = ReadAudit(path);
    if (FindRecord(records, event, decision, reason_part, node) != nullptr) break;
    std::this_thread::sleep_for(50ms);
  }
  return records;
}

std::string DescribeAudit(const std::vector<Json>& records) {
  std::string out;
  for (const Json& r : records) out += r.dump() + "\n";
  return out;
}

// RecordingIssuer issues with a real TPM issuer and keeps every document it issued.
class RecordingIssuer : public crypto::AttestationIssuer {
 public:
  explicit RecordingIssuer(std::shared_ptr<attest::TpmIssuer> inner) : inner_(std::move(inner)) {}
  absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                    std::span<const uint8_t> tls_key_hash) override {
    auto doc = inner_->Issue(nonce, tls_key_hash);
    if (doc.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      documents_.push_back(*doc);
    }
    return doc;
  }
  std::vector<std::string> documents() {
    std::lock_guard<std::mutex> lock(mu_);
    return documents_;
  }

 private:
  std::shared_ptr<attest::TpmIssuer> inner_;
  std::mutex mu_;
  std::vector<std::string> documents_;
};

// ReplayIssuer presents one fixed document on every connection.
class ReplayIssuer : public crypto::AttestationIssuer {
 public:
  explicit ReplayIssuer(std::string document) : document_(std::move(document)) {}
  absl::StatusOr<std::string> Issue(std::span<const uint8_t>, std::span<const uint8_t>) override {
    return document_;
  }

 private:
  std::string document_;
};

// OtherKeyIssuer quotes with the real TPM for the right nonce but another TLS key's hash: a
// document lifted from (or made for) another connection's key.
class OtherKeyIssuer : public crypto::AttestationIssuer {
 public:
  explicit OtherKeyIssuer(std::shared_ptr<attest::TpmIssuer> inner) : inner_(std::move(inner)) {}
  absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                    std::span<const uint8_t>) override {
    std::vector<uint8_t> other(crypto::kAtlsKeyHashSize, 0x5a);
    return inner_->Issue(nonce, other);
  }

 private:
  std::shared_ptr<attest::TpmIssuer> inner_;
};

// GarbageIssuer presents a certificate whose "document" is not a TPM document at all.
class GarbageIssuer : public crypto::AttestationIssuer {
 public:
  absl::StatusOr<std::string> Issue(std::span<const uint8_t>, std::span<const uint8_t>) override {
    return std::string("trust me, I am a TPM");
  }
};

// Call makes one ticket call as a client with `issuer` (not necessarily a TPM issuer).
absl::StatusOr<std::string> CallWith(std::shared_ptr<crypto::AttestationIssuer> issuer,
                                     const std::string& endpoint, std::string_view uuid = kUuid) {
  crypto::AtlsClientOptions options;
  options.issuer = std::move(issuer);
  options.accept_unattested_server = true;
  auto client = crypto::AtlsClient::New(options);
  if (!client.ok()) return client.status();
  attest::JoinTicketRequest request;
  request.set_disk_uuid(std::string(uuid));
  return (*client)->Call(endpoint, kIssueJoinTicketMethod, request.SerializeAsString(), 30s);
}

// Cluster is `keywarden init` plus an in-process KeyService on the SQLite store and an audit
// log; JoinService runs on loopback with the shared CA and the nodes' base measurements.
class JoinServiceTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ca_ = new std::shared_ptr<SwtpmCa>(std::make_shared<SwtpmCa>());
    // A reference node: its PCRs are every fresh swtpm's PCRs (no firmware measures anything).
    Node reference(*ca_);
    ASSERT_TRUE(reference.tpm.Start());
    measurements_ = new attest::Measurements(MeasurementsOf(reference.tpm));
    bundle_ = new std::string(*ReadFile((*ca_)->ca_bundle()));
  }
  static void TearDownTestSuite() {
    delete ca_;
    delete measurements_;
    delete bundle_;
  }

  void SetUp() override {
    const RunResult r =
        keywarden::testing::Run({KEYWARDEN_BINARY, "init", "--dir", dir().string()});
    ASSERT_TRUE(r.ok()) << r;
    auto secret = keys::ReadMasterSecretFile(dir() / keys::kMasterSecretFileName);
    ASSERT_TRUE(secret.ok());
    auto info = keys::ReadClusterInfo(dir());
    ASSERT_TRUE(info.ok());
    info_ = *info;
    auto kek = keys::Kek::FromMasterSecret(*secret);
    ASSERT_TRUE(kek.ok());
    store::KekRecord record{(*kek)->bytes().Clone(), info_.measurement_salt};
    auto store = store::OpenKekStore("sqlite://" + (dir() / "keywarden.db").string(), {});
    ASSERT_TRUE(store.ok()) << store.status();
    auto stored = (*store)->InitializeOrLoad(record);
    ASSERT_TRUE(stored.ok()) << stored.status();
    auto keys = KeyService::Start(std::move(*store), std::move(record), {});
    ASSERT_TRUE(keys.ok()) << keys.status();
    keys_ = std::move(*keys);
    auto audit = AuditLog::Open(audit_path());
    ASSERT_TRUE(audit.ok()) << audit.status();
    audit_ = std::move(*audit);
    JoinServiceOptions options;
    options.host = "127.0.0.1";
    options.port = 0;
    options.ek_ca_bundle_pem = *bundle_;
    options.measurements = *measurements_;
    options.worker_threads = 4;
    auto join = JoinService::Start(std::move(options), keys_.get(), audit_.get());
    ASSERT_TRUE(join.ok()) << join.status();
    join_ = std::move(*join);
  }

  std::filesystem::path dir() const { return temp_.path() / "state"; }
  std::filesystem::path audit_path() const { return temp_.path() / "audit.log"; }
  std::string endpoint() const { return join_->endpoint(); }
  std::string DeriveDek(const std::string& id) const {
    return keywarden::testing::DeriveDekWithCli(dir() / keys::kMasterSecretFileName, id);
  }

  // ExpectNoKeysInAudit checks the log for the hex of every released key.
  void ExpectNoKeysInAudit(const std::vector<std::string>& hex_keys) {
    const std::string text = *ReadFile(audit_path());
    for (const std::string& key : hex_keys) {
      ASSERT_GE(key.size(), 32u);
      EXPECT_EQ(text.find(key.substr(0, 16)), std::string::npos) << "key bytes in the audit log";
    }
  }

  static std::shared_ptr<SwtpmCa>* ca_;
  static attest::Measurements* measurements_;
  static std::string* bundle_;
  TempDir temp_{"kw-join"};
  keys::ClusterInfo info_;
  std::unique_ptr<KeyService> keys_;
  std::unique_ptr<AuditLog> audit_;
  std::unique_ptr<JoinService> join_;
};
std::shared_ptr<SwtpmCa>* JoinServiceTest::ca_ = nullptr;
attest::Measurements* JoinServiceTest::measurements_ = nullptr;
std::string* JoinServiceTest::bundle_ = nullptr;

TEST_F(JoinServiceTest, FreshNodesJoinConcurrentlyAndRejoinAfterReboot) {
  constexpr int kNodes = 3;
  std::vector<std::unique_ptr<Node>> nodes;
  for (int i = 0; i < kNodes; ++i) {
    nodes.push_back(std::make_unique<Node>(*ca_));
    ASSERT_TRUE(nodes.back()->tpm.Start());
    nodes.back()->Open();
  }
  const std::string uuids[kNodes] = {kUuid, "11111111-2222-4333-8444-555555555555",
                                     "AAAAAAAA-bbbb-4ccc-8ddd-eeeeeeeeeeee"};
  std::vector<absl::StatusOr<JoinTicket>> tickets;
  for (int i = 0; i < kNodes; ++i) tickets.emplace_back(absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < kNodes; ++i) {
    threads.emplace_back([&, i] {
      tickets[i] = RequestJoinTicket(nodes[i]->issuer, endpoint(), uuids[i], false, 60s);
    });
  }
  for (auto& t : threads) t.join();

  std::vector<std::string> released;
  const std::string measurement_secret = DeriveDek("measurementSecret");
  for (int i = 0; i < kNodes; ++i) {
    ASSERT_TRUE(tickets[i].ok()) << i << ": " << tickets[i].status();
    const JoinTicket& t = *tickets[i];
    const std::string lower = *keys::NormalizeUuid(uuids[i]);
    EXPECT_EQ(t.disk_uuid, lower);
    EXPECT_EQ(Hex(t.secrets.state_disk_key), keywarden::testing::HexOf(DeriveDek(lower)));
    EXPECT_EQ(Hex(t.secrets.measurement_secret), keywarden::testing::HexOf(measurement_secret));
    EXPECT_EQ(t.measurement_salt, info_.measurement_salt);
    EXPECT_EQ(t.cluster_id, info_.cluster_id);
    released.push_back(Hex(t.secrets.state_disk_key));
  }
  released.push_back(Hex(tickets[0]->secrets.measurement_secret));

  // Reboot node 0 (PCR 15 back to 0, a new AK) and rejoin.
  nodes[0]->Close();
  ASSERT_TRUE(nodes[0]->tpm.Restart());
  nodes[0]->Open();
  auto rejoined = RequestJoinTicket(nodes[0]->issuer, endpoint(), kUuid, true, 60s);
  ASSERT_TRUE(rejoined.ok()) << rejoined.status();
  EXPECT_EQ(Hex(rejoined->secrets.state_disk_key), released[0]);
  EXPECT_EQ(rejoined->cluster_id, info_.cluster_id);

  const auto records = ReadAudit(audit_path());
  for (int i = 0; i < kNodes; ++i) {
    nodes[i]->Close();
    const Json* r = FindRecord(records, "join", "allow", "", nodes[i]->EkFingerprint());
    ASSERT_NE(r, nullptr) << DescribeAudit(records);
    EXPECT_EQ((*r)["key_id"], *keys::NormalizeUuid(uuids[i]));
    EXPECT_THAT((*r)["peer"].get<std::string>(), HasSubstr("127.0.0.1:"));
  }
  const Json* r = FindRecord(records, "rejoin", "allow", "", nodes[0]->EkFingerprint());
  ASSERT_NE(r, nullptr) << DescribeAudit(records);
  EXPECT_EQ((*r)["key_id"], kUuidLower);
  ExpectNoKeysInAudit(released);
}

TEST_F(JoinServiceTest, ARejoinTicketDoesNotOpenAsAJoinTicket) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  attest::JoinTicketRequest request;
  request.set_disk_uuid(kUuid);
  crypto::AtlsClientOptions options;
  options.issuer = node.issuer;
  options.accept_unattested_server = true;
  auto client = crypto::AtlsClient::New(options);
  ASSERT_TRUE(client.ok());
  auto reply =
      (*client)->Call(endpoint(), kIssueRejoinTicketMethod, request.SerializeAsString(), 30s);
  ASSERT_TRUE(reply.ok()) << reply.status();
  attest::JoinTicketResponse response;
  ASSERT_TRUE(response.ParseFromString(*reply));
  const std::vector<uint8_t> salt(response.measurement_salt().begin(),
                                  response.measurement_salt().end());
  auto as_join = attest::OpenSealed(*node.issuer, response.sealed(), attest::kPurposeJoin,
                                    attest::ReleaseContext(kUuidLower, salt));
  EXPECT_EQ(as_join.status().code(), absl::StatusCode::kPermissionDenied);
  auto other_disk =
      attest::OpenSealed(*node.issuer, response.sealed(), attest::kPurposeRejoin,
                         attest::ReleaseContext("11111111-2222-4333-8444-555555555555", salt));
  EXPECT_EQ(other_disk.status().code(), absl::StatusCode::kPermissionDenied);
  auto right = attest::OpenSealed(*node.issuer, response.sealed(), attest::kPurposeRejoin,
                                  attest::ReleaseContext(kUuidLower, salt));
  EXPECT_TRUE(right.ok()) << right.status();
}

TEST_F(JoinServiceTest, ANodeWhosePcr4WasExtendedWithJunkIsRefusedAndAudited) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  const RunResult extended =
      node.tpm.Tpm2Tool({"tpm2_pcrextend", "4:sha256=" + std::string(64, 'e')});
  ASSERT_TRUE(extended.ok()) << extended;
  node.Open();
  auto ticket = RequestJoinTicket(node.issuer, endpoint(), kUuid, false, 30s);
  EXPECT_EQ(ticket.status().code(), absl::StatusCode::kPermissionDenied) << ticket.status();
  node.Close();
  const auto records = AwaitAudit(audit_path(), "attest", "deny", "PCR 4 does not match the base",
                                  node.EkFingerprint());
  const Json* r =
      FindRecord(records, "attest", "deny", "PCR 4 does not match the base", node.EkFingerprint());
  EXPECT_NE(r, nullptr) << DescribeAudit(records);
  EXPECT_EQ(FindRecord(records, "join", "allow", ""), nullptr);
}

TEST_F(JoinServiceTest, ANodeWithPcr15AlreadySetIsRefusedForJoinAndRejoin) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  ASSERT_TRUE(node.issuer->ExtendPcr15WithEvent(info_.cluster_id).ok());
  auto join = RequestJoinTicket(node.issuer, endpoint(), kUuid, false, 30s);
  EXPECT_EQ(join.status().code(), absl::StatusCode::kPermissionDenied) << join.status();
  auto rejoin = RequestJoinTicket(node.issuer, endpoint(), kUuid, true, 30s);
  EXPECT_EQ(rejoin.status().code(), absl::StatusCode::kPermissionDenied) << rejoin.status();
  node.Close();
  const std::string fp = node.EkFingerprint();
  std::vector<Json> records;
  int refusals = 0;
  for (int i = 0; i < 200 && refusals < 2; ++i) {
    if (i > 0) std::this_thread::sleep_for(50ms);
    records = ReadAudit(audit_path());
    refusals = 0;
    // This cluster's member value passes the handshake (IssueNetCredential needs it); the
    // ticket handlers refuse it, before deriving any key, under the method's event.
    for (const Json& r : records) {
      if ((r["event"] == "join" || r["event"] == "rejoin") && r["decision"] == "deny" &&
          r["node"] == fp &&
          r["reason"].get<std::string>().find("PCR 15 is") != std::string::npos) {
        ++refusals;
      }
    }
  }
  EXPECT_EQ(refusals, 2) << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "join", "deny", "PCR 15 is", fp), nullptr)
      << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "rejoin", "deny", "PCR 15 is", fp), nullptr)
      << DescribeAudit(records);
}

TEST_F(JoinServiceTest, AReplayedDocumentIsRefusedOnAnotherConnection) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  auto recorder = std::make_shared<RecordingIssuer>(node.issuer);
  ASSERT_TRUE(CallWith(recorder, endpoint()).ok());
  ASSERT_EQ(recorder->documents().size(), 1u);
  // The same genuine, accepted document on a new connection: new nonce, new TLS key.
  auto replayed = CallWith(std::make_shared<ReplayIssuer>(recorder->documents()[0]), endpoint());
  EXPECT_EQ(replayed.status().code(), absl::StatusCode::kPermissionDenied) << replayed.status();
  node.Close();
  const auto records = AwaitAudit(audit_path(), "attest", "deny", "quote");
  const std::string fp = node.EkFingerprint();
  EXPECT_NE(FindRecord(records, "join", "allow", "", fp), nullptr) << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "attest", "deny", "quote", fp), nullptr) << DescribeAudit(records);
}

TEST_F(JoinServiceTest, ADocumentBoundToAnotherTlsKeyIsRefused) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  auto reply = CallWith(std::make_shared<OtherKeyIssuer>(node.issuer), endpoint());
  EXPECT_EQ(reply.status().code(), absl::StatusCode::kPermissionDenied) << reply.status();
  node.Close();
  const auto records = AwaitAudit(audit_path(), "attest", "deny", "quote");
  EXPECT_NE(FindRecord(records, "attest", "deny", "quote", node.EkFingerprint()), nullptr)
      << DescribeAudit(records);
}

TEST_F(JoinServiceTest, AnEkFromAnUnknownCaIsRefused) {
  Node stranger(std::make_shared<SwtpmCa>());
  ASSERT_TRUE(stranger.tpm.Start());
  stranger.Open();
  auto ticket = RequestJoinTicket(stranger.issuer, endpoint(), kUuid, false, 30s);
  EXPECT_EQ(ticket.status().code(), absl::StatusCode::kPermissionDenied) << ticket.status();
  stranger.Close();
  const auto records = AwaitAudit(audit_path(), "attest", "deny", "EK certificate");
  EXPECT_NE(FindRecord(records, "attest", "deny", "EK certificate", stranger.EkFingerprint()),
            nullptr)
      << DescribeAudit(records);
}

TEST_F(JoinServiceTest, UnattestedClientsAreRefused) {
  // A certificate whose "document" is no TPM document.
  auto garbage = CallWith(std::make_shared<GarbageIssuer>(), endpoint());
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kPermissionDenied) << garbage.status();
  const auto records =
      AwaitAudit(audit_path(), "attest", "deny", "not a valid AttestationDocument");
  EXPECT_NE(FindRecord(records, "attest", "deny", "not a valid AttestationDocument", "unknown"),
            nullptr)
      << DescribeAudit(records);
  EXPECT_EQ(FindRecord(records, "join", "allow", ""), nullptr);
}

TEST_F(JoinServiceTest, AMalformedUuidIsRefusedAndAudited) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  auto bad = CallWith(node.issuer, endpoint(), "not-a-uuid");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
  auto unknown = [&] {
    crypto::AtlsClientOptions options;
    options.issuer = node.issuer;
    options.accept_unattested_server = true;
    auto client = crypto::AtlsClient::New(options);
    return (*client)->Call(endpoint(), "keywarden.join.v1/Nope", "", 30s);
  }();
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kUnimplemented) << unknown.status();
  node.Close();
  const auto records = ReadAudit(audit_path());
  const Json* r = FindRecord(records, "join", "deny", "is not a UUID", node.EkFingerprint());
  ASSERT_NE(r, nullptr) << DescribeAudit(records);
  EXPECT_EQ((*r)["key_id"], "not-a-uuid");
}

// ---- IssueNetCredential (issue 7) ---------------------------------------------------------------

// EkSpkiSha256 is hex SHA-256 of the node's EK public key as DER SubjectPublicKeyInfo, read
// with tpm2-tools (independently of Keywarden's TPM code and X.509 parsing). The TPM must be
// free (Node::Close).
std::string EkSpkiSha256(const SwtpmInstance& tpm, const std::filesystem::path& scratch) {
  const std::filesystem::path der = scratch / "ek.der";
  const RunResult r =
      tpm.Tpm2Tool({"tpm2_createek", "-G", "rsa", "-c", (scratch / "ek.ctx").string(), "-u",
                    der.string(), "-f", "der"});
  EXPECT_TRUE(r.ok()) << r;
  const std::optional<std::string> bytes = ReadFile(der);
  EXPECT_TRUE(bytes.has_value() && !bytes->empty());
  if (!bytes.has_value()) return "";
  return crypto::HexEncode(crypto::Sha256(
      {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes->data()), bytes->size())}));
}

// CallNetCredential sends a raw NetCredentialRequest (bytes as given) with `issuer`.
absl::StatusOr<std::string> CallNetCredential(std::shared_ptr<crypto::AttestationIssuer> issuer,
                                              const std::string& endpoint,
                                              const std::string& request) {
  crypto::AtlsClientOptions options;
  options.issuer = std::move(issuer);
  options.accept_unattested_server = true;
  auto client = crypto::AtlsClient::New(options);
  if (!client.ok()) return client.status();
  return (*client)->Call(endpoint, kIssueNetCredentialMethod, request, 30s);
}

std::string NetRequest(std::string_view node, std::string_view signing_key) {
  attest::NetCredentialRequest request;
  request.set_node(std::string(node));
  request.set_signing_key(std::string(signing_key));
  return request.SerializeAsString();
}

net::NodeEntry EntryFor(std::string node) {
  net::NodeEntry e;
  e.node = std::move(node);
  e.public_key.fill(0x42);
  e.endpoint = *net::Endpoint::Parse("192.0.2.7:51820");
  e.allowed_ips = {*net::Cidr::Parse("10.78.0.2/32")};
  e.epoch = 1;
  e.issued_at = std::chrono::system_clock::now();
  return e;
}

TEST_F(JoinServiceTest, AJoinedNodeGetsANetCredentialThatVerifies) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  // Join as `node join` does: ticket, then the clusterID into PCR 15.
  auto ticket = RequestJoinTicket(node.issuer, endpoint(), kUuid, false, 60s);
  ASSERT_TRUE(ticket.ok()) << ticket.status();
  ASSERT_TRUE(node.issuer->ExtendPcr15WithEvent(ticket->cluster_id).ok());

  auto key = net::GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  const net::Ed25519PublicKey signing_key = key->public_key();
  const auto before = std::chrono::system_clock::now();
  auto issued = RequestNetCredential(node.issuer, endpoint(), "node-a", signing_key, 60s);
  ASSERT_TRUE(issued.ok()) << issued.status();

  // The authority is net::NewAuthority(KEK), computed here from the master secret.
  auto secret = keys::ReadMasterSecretFile(dir() / keys::kMasterSecretFileName);
  ASSERT_TRUE(secret.ok());
  auto kek = keys::Kek::FromMasterSecret(*secret);
  ASSERT_TRUE(kek.ok());
  auto authority = net::NewAuthority((*kek)->bytes());
  ASSERT_TRUE(authority.ok());
  EXPECT_EQ(issued->authority_key, (*authority)->public_key());

  auto credential = net::ParseCredential(issued->credential);
  ASSERT_TRUE(credential.ok()) << credential.status();
  EXPECT_EQ(credential->node, "node-a");
  EXPECT_EQ(credential->signing_key, signing_key);
  EXPECT_EQ(credential->cluster_id, crypto::HexEncode(info_.cluster_id));
  // Default lifetime: 24 h from the time of issue (floored to whole seconds).
  EXPECT_GE(credential->not_after, before + kDefaultNetCredentialLifetime - 1s);
  EXPECT_LE(credential->not_after,
            std::chrono::system_clock::now() + kDefaultNetCredentialLifetime);

  // An agent of this cluster accepts a record signed with the node's key.
  auto signer = net::NewNodeSigner(issued->credential, std::move(*key));
  ASSERT_TRUE(signer.ok()) << signer.status();
  auto record = (*signer)->Record(EntryFor("node-a"));
  ASSERT_TRUE(record.ok()) << record.status();
  auto verifier = net::NewEntryVerifier(issued->authority_key, crypto::HexEncode(info_.cluster_id));
  ASSERT_TRUE(verifier.ok()) << verifier.status();
  auto verified = (*verifier)->Verify("node-a", *record);
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->entry.node, "node-a");
  // ... and an agent of another cluster does not.
  auto other_cluster = net::NewEntryVerifier(issued->authority_key, std::string(64, 'a'));
  ASSERT_TRUE(other_cluster.ok());
  EXPECT_EQ((*other_cluster)->Verify("node-a", *record).status().code(),
            absl::StatusCode::kPermissionDenied);

  node.Close();
  // The EK fingerprint is SHA-256 of the EK's DER SPKI, as tpm2-tools exports it.
  const std::string ek_spki = EkSpkiSha256(node.tpm, temp_.path());
  EXPECT_EQ(credential->ek_fingerprint, ek_spki);
  EXPECT_EQ(verified->ek_fingerprint, ek_spki);

  const auto records = ReadAudit(audit_path());
  const Json* r = FindRecord(records, "net-credential", "allow", "", node.EkFingerprint());
  ASSERT_NE(r, nullptr) << DescribeAudit(records);
  EXPECT_EQ((*r)["key_id"], "node-a");
  EXPECT_THAT((*r)["reason"].get<std::string>(), HasSubstr(ek_spki));
  ExpectNoKeysInAudit({crypto::HexEncode(signing_key), crypto::HexEncode(issued->authority_key),
                       crypto::HexEncode(issued->credential), Hex(ticket->secrets.state_disk_key)});
}

TEST_F(JoinServiceTest, AFreshNodeIsRefusedANetCredential) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  auto key = net::GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  auto issued = RequestNetCredential(node.issuer, endpoint(), "node-a", key->public_key(), 30s);
  EXPECT_EQ(issued.status().code(), absl::StatusCode::kPermissionDenied) << issued.status();
  EXPECT_THAT(std::string(issued.status().message()), HasSubstr("PCR 15 is zero"));
  node.Close();
  const auto records = ReadAudit(audit_path());
  const Json* r =
      FindRecord(records, "net-credential", "deny", "PCR 15 is zero", node.EkFingerprint());
  EXPECT_NE(r, nullptr) << DescribeAudit(records);
  EXPECT_EQ(FindRecord(records, "net-credential", "allow", ""), nullptr);
}

TEST_F(JoinServiceTest, ANodeOfAnotherClusterIsRefusedANetCredential) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  keys::ClusterId other = info_.cluster_id;
  other[0] ^= 1;
  ASSERT_TRUE(node.issuer->ExtendPcr15WithEvent(other).ok());
  auto key = net::GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  auto issued = RequestNetCredential(node.issuer, endpoint(), "node-a", key->public_key(), 30s);
  EXPECT_EQ(issued.status().code(), absl::StatusCode::kPermissionDenied) << issued.status();
  node.Close();
  const std::string fp = node.EkFingerprint();
  const auto records = AwaitAudit(audit_path(), "attest", "deny", "PCR 15 is", fp);
  EXPECT_NE(FindRecord(records, "attest", "deny", "PCR 15 is", fp), nullptr)
      << DescribeAudit(records);
  EXPECT_EQ(FindRecord(records, "net-credential", "allow", ""), nullptr);
}

TEST_F(JoinServiceTest, AMemberWithJunkInPcr4IsRefusedANetCredential) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  const RunResult extended =
      node.tpm.Tpm2Tool({"tpm2_pcrextend", "4:sha256=" + std::string(64, 'e')});
  ASSERT_TRUE(extended.ok()) << extended;
  node.Open();
  ASSERT_TRUE(node.issuer->ExtendPcr15WithEvent(info_.cluster_id).ok());
  auto key = net::GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  auto issued = RequestNetCredential(node.issuer, endpoint(), "node-a", key->public_key(), 30s);
  EXPECT_EQ(issued.status().code(), absl::StatusCode::kPermissionDenied) << issued.status();
  node.Close();
  const std::string fp = node.EkFingerprint();
  const auto records = AwaitAudit(audit_path(), "attest", "deny", "PCR 4 does not match", fp);
  EXPECT_NE(FindRecord(records, "attest", "deny", "PCR 4 does not match", fp), nullptr)
      << DescribeAudit(records);
  EXPECT_EQ(FindRecord(records, "net-credential", "allow", ""), nullptr);
}

TEST_F(JoinServiceTest, BadNetCredentialRequestsAreRefusedAndAudited) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  ASSERT_TRUE(node.issuer->ExtendPcr15WithEvent(info_.cluster_id).ok());
  const std::string good_key(32, '\x07');
  for (const std::string& name :
       std::vector<std::string>{"Node-A", "", "-a", "a-", "a.b", std::string(64, 'a')}) {
    auto reply = CallNetCredential(node.issuer, endpoint(), NetRequest(name, good_key));
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument)
        << "\"" << name << "\": " << reply.status();
  }
  for (const std::string& key :
       {std::string(31, '\x07'), std::string(33, '\x07'), std::string(), std::string(32, '\0')}) {
    auto reply = CallNetCredential(node.issuer, endpoint(), NetRequest("node-a", key));
    EXPECT_EQ(reply.status().code(), absl::StatusCode::kInvalidArgument)
        << key.size() << ": " << reply.status();
  }
  auto junk = CallNetCredential(node.issuer, endpoint(), "\xff\xff\xff");
  EXPECT_EQ(junk.status().code(), absl::StatusCode::kInvalidArgument) << junk.status();
  // The node side refuses a bad name before sending anything.
  auto local =
      RequestNetCredential(node.issuer, endpoint(), "Node-A", net::Ed25519PublicKey{1}, 30s);
  EXPECT_EQ(local.status().code(), absl::StatusCode::kInvalidArgument) << local.status();
  // The same connection's good request still works.
  auto good = CallNetCredential(node.issuer, endpoint(), NetRequest("node-a", good_key));
  EXPECT_TRUE(good.ok()) << good.status();
  node.Close();

  const auto records = ReadAudit(audit_path());
  const std::string fp = node.EkFingerprint();
  const Json* r = FindRecord(records, "net-credential", "deny", "not a valid registry name", fp);
  ASSERT_NE(r, nullptr) << DescribeAudit(records);
  EXPECT_EQ((*r)["key_id"], "Node-A");
  EXPECT_NE(FindRecord(records, "net-credential", "deny", "signing_key is 31 bytes", fp), nullptr)
      << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "net-credential", "deny", "all zero", fp), nullptr)
      << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "net-credential", "deny", "NetCredentialRequest", fp), nullptr)
      << DescribeAudit(records);
  int denials = 0;
  for (const Json& rec : records) {
    if (rec["event"] == "net-credential" && rec["decision"] == "deny") ++denials;
  }
  EXPECT_EQ(denials, 6 + 4 + 1) << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "net-credential", "allow", "", fp), nullptr);
  ExpectNoKeysInAudit({crypto::HexEncode(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(good_key.data()), good_key.size()))});
}

// AcceptAnyValidator accepts every client document: a stand-in join service that answers
// whatever a test wants.
class AcceptAnyValidator : public crypto::AttestationValidator {
 public:
  absl::StatusOr<crypto::AttestationResult> Validate(std::string_view, std::span<const uint8_t>,
                                                     std::span<const uint8_t>) override {
    return crypto::AttestationResult{"anyone"};
  }
};

// The node side checks the credential it gets: name, key, expiry, and that its cluster is the
// one measured in the node's PCR 15. A fake service issues what each case needs.
TEST_F(JoinServiceTest, TheNodeRefusesACredentialForAnotherClusterNameOrKey) {
  Node node(*ca_);
  ASSERT_TRUE(node.tpm.Start());
  node.Open();
  ASSERT_TRUE(node.issuer->ExtendPcr15WithEvent(info_.cluster_id).ok());
  auto seed = crypto::RandomSecret(32);
  ASSERT_TRUE(seed.ok());
  auto authority = net::NewAuthorityFromSeed(*seed);
  ASSERT_TRUE(authority.ok());
  auto key = net::GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());

  struct Case {
    std::string name;
    net::NodeCredential credential;
    std::string authority_key;  // empty: the authority's
    absl::StatusCode want;
  };
  net::NodeCredential good;
  good.node = "node-a";
  good.signing_key = key->public_key();
  good.cluster_id = crypto::HexEncode(info_.cluster_id);
  good.ek_fingerprint = std::string(64, 'f');
  good.not_after = std::chrono::system_clock::now() + 1h;
  std::vector<Case> cases;
  cases.push_back({"good", good, "", absl::StatusCode::kOk});
  Case other_cluster{"other cluster", good, "", absl::StatusCode::kPermissionDenied};
  other_cluster.credential.cluster_id = std::string(64, 'a');
  cases.push_back(other_cluster);
  Case other_name{"other name", good, "", absl::StatusCode::kPermissionDenied};
  other_name.credential.node = "node-b";
  cases.push_back(other_name);
  Case other_key{"other key", good, "", absl::StatusCode::kPermissionDenied};
  other_key.credential.signing_key[0] ^= 1;
  cases.push_back(other_key);
  Case expired{"expired", good, "", absl::StatusCode::kPermissionDenied};
  expired.credential.not_after = std::chrono::system_clock::now() - 1h;
  cases.push_back(expired);
  cases.push_back({"short authority key", good, std::string(31, 'k'), absl::StatusCode::kDataLoss});

  std::mutex mu;
  const Case* current = nullptr;
  crypto::AtlsServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.client_validator = std::make_shared<AcceptAnyValidator>();
  auto server = crypto::AtlsServer::Start(
      options,
      [&](std::string_view, std::string_view,
          const crypto::PeerInfo&) -> absl::StatusOr<std::string> {
        std::lock_guard<std::mutex> lock(mu);
        auto issued = (*authority)->Issue(current->credential);
        if (!issued.ok()) return issued.status();
        attest::NetCredentialResponse response;
        response.set_credential(std::string(issued->begin(), issued->end()));
        const net::Ed25519PublicKey pub = (*authority)->public_key();
        response.set_authority_key(current->authority_key.empty()
                                       ? std::string(pub.begin(), pub.end())
                                       : current->authority_key);
        return response.SerializeAsString();
      });
  ASSERT_TRUE(server.ok()) << server.status();
  for (const Case& c : cases) {
    {
      std::lock_guard<std::mutex> lock(mu);
      current = &c;
    }
    auto got =
        RequestNetCredential(node.issuer, (*server)->endpoint(), "node-a", key->public_key(), 30s);
    EXPECT_EQ(got.status().code(), c.want) << c.name << ": " << got.status();
  }
  (*server)->Shutdown();
}

TEST(JoinServiceStart, RefusesAConfigurationThatWouldAcceptAnyNode) {
  JoinServiceOptions options;
  options.ek_ca_bundle_pem = "x";
  attest::Measurement m;
  options.measurements[15] = m;  // PCR 15 alone is judged by the PCR 15 rule
  options.measurements[16] = m;  // not quoted
  auto service = JoinService::Start(options, reinterpret_cast<const KeyService*>(1),
                                    reinterpret_cast<AuditLog*>(1));
  EXPECT_EQ(service.status().code(), absl::StatusCode::kInvalidArgument);
  // A credential lifetime that is not positive (or absurd).
  options.measurements[4] = m;
  for (const std::chrono::seconds lifetime : {0s, -1s, kMaxNetCredentialLifetime + 1s}) {
    options.net_credential_lifetime = lifetime;
    auto refused = JoinService::Start(options, reinterpret_cast<const KeyService*>(1),
                                      reinterpret_cast<AuditLog*>(1));
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << lifetime.count();
  }
}

// The real binary: `keywarden serve --measurements --ek-ca` runs the join service next to
// kms.API; tickets match `keywarden derive disk-key` and cluster.json; refusals are audited.
TEST(JoinServiceProcess, KeywardenServeIssuesTicketsAndAuditsRefusals) {
  TempDir temp("kw-join-serve");
  const std::filesystem::path dir = temp.path() / "state";
  const RunResult init = keywarden::testing::Run({KEYWARDEN_BINARY, "init", "--dir", dir.string()});
  ASSERT_TRUE(init.ok()) << init;
  auto info = keys::ReadClusterInfo(dir);
  ASSERT_TRUE(info.ok());

  auto ca = std::make_shared<SwtpmCa>();
  Node node(ca), member(ca);
  ASSERT_TRUE(node.tpm.Start());
  ASSERT_TRUE(member.tpm.Start());
  // Base measurements as an operator makes them: `keywarden measurements read` on a good node
  // (PCRs 0-23; the join service uses 0-14).
  const RunResult read =
      keywarden::testing::Run({KEYWARDEN_BINARY, "measurements", "read", "--tpm", node.tpm.tcti()});
  ASSERT_TRUE(read.ok()) << read;
  const std::filesystem::path measurements = temp.path() / "measurements.json";
  std::ofstream(measurements) << read.stdout_text;
  const std::filesystem::path audit = temp.path() / "audit.log";

  ServiceProcess server({"--dir", dir.string(), "--join-listen", "127.0.0.1:0", "--measurements",
                         measurements.string(), "--ek-ca", node.tpm.ca_bundle().string(),
                         "--audit-log", audit.string()},
                        temp.path() / "serve.log");
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  std::string join_endpoint;
  const std::regex served("serving the join service listen=(\\S+)");
  for (int i = 0; i < 200 && join_endpoint.empty(); ++i) {
    std::smatch m;
    const std::string text = server.stderr_text();
    if (std::regex_search(text, m, served))
      join_endpoint = m[1];
    else
      std::this_thread::sleep_for(50ms);
  }
  ASSERT_FALSE(join_endpoint.empty()) << server.stderr_text();

  node.Open();
  auto ticket = RequestJoinTicket(node.issuer, join_endpoint, kUuid, false, 60s);
  ASSERT_TRUE(ticket.ok()) << ticket.status() << "\n" << server.stderr_text();
  const RunResult disk_key =
      keywarden::testing::Run({KEYWARDEN_BINARY, "derive", "disk-key", "--master-secret",
                               (dir / keys::kMasterSecretFileName).string(), "--uuid", kUuid});
  ASSERT_TRUE(disk_key.ok()) << disk_key;
  EXPECT_EQ(Hex(ticket->secrets.state_disk_key) + "\n", disk_key.stdout_text);
  EXPECT_EQ(ticket->cluster_id, info->cluster_id);
  EXPECT_EQ(ticket->measurement_salt, info->measurement_salt);

  // The member measures its clusterID into PCR 15 (as `node join` will) and asks again without
  // a reboot: refused. After a reboot PCR 15 is 0 and it rejoins.
  member.Open();
  ASSERT_TRUE(member.issuer->ExtendPcr15WithEvent(info->cluster_id).ok());
  auto refused = RequestJoinTicket(member.issuer, join_endpoint, kUuid, true, 60s);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kPermissionDenied) << refused.status();
  member.Close();
  ASSERT_TRUE(member.tpm.Restart());
  member.Open();
  auto rejoined = RequestJoinTicket(member.issuer, join_endpoint, kUuid, true, 60s);
  ASSERT_TRUE(rejoined.ok()) << rejoined.status();
  EXPECT_EQ(Hex(rejoined->secrets.state_disk_key), Hex(ticket->secrets.state_disk_key));

  EXPECT_EQ(server.Stop(), 0) << server.stderr_text();
  node.Close();
  member.Close();
  const auto records = ReadAudit(audit);
  EXPECT_NE(FindRecord(records, "join", "allow", "", node.EkFingerprint()), nullptr)
      << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "rejoin", "allow", "", member.EkFingerprint()), nullptr)
      << DescribeAudit(records);
  EXPECT_NE(FindRecord(records, "rejoin", "deny", "PCR 15 is", member.EkFingerprint()), nullptr)
      << DescribeAudit(records);
  const std::string text = *ReadFile(audit);
  EXPECT_EQ(text.find(Hex(ticket->secrets.state_disk_key).substr(0, 16)), std::string::npos);
  EXPECT_EQ(text.find(Hex(ticket->secrets.measurement_secret).substr(0, 16)), std::string::npos);
  EXPECT_EQ(server.stderr_text().find(Hex(ticket->secrets.state_disk_key).substr(0, 16)),
            std::string::npos);
}

TEST(JoinServiceProcess, HalfAJoinConfigurationIsAnError) {
  TempDir temp("kw-join-half");
  const std::filesystem::path dir = temp.path() / "state";
  ASSERT_TRUE(keywarden::testing::Run({KEYWARDEN_BINARY, "init", "--dir", dir.string()}).ok());
  const RunResult r =
      keywarden::testing::Run({KEYWARDEN_BINARY, "serve", "--dir", dir.string(), "--listen",
                               "127.0.0.1:0", "--measurements", (temp.path() / "m.json").string()});
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(r.stderr_text, HasSubstr("--ek-ca"));

  // A bundle that holds no certificate is refused at start, not at the first join.
  temp.WriteFile("m.json",
                 "{\"4\": {\"expected\": \"" + std::string(64, '0') + "\", \"warnOnly\": false}}");
  temp.WriteFile("ca.pem", "not a certificate\n");
  const RunResult bad_ca = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", dir.string(), "--listen", "127.0.0.1:0", "--join-listen",
       "127.0.0.1:0", "--measurements", (temp.path() / "m.json").string(), "--ek-ca",
       (temp.path() / "ca.pem").string()});
  EXPECT_EQ(bad_ca.exit_code, 1) << bad_ca;
  EXPECT_THAT(bad_ca.stderr_text, HasSubstr("EK CA bundle"));
}

}  // namespace
}  // namespace keywarden::service
