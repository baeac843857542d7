// Unit tests of the network registry's format, authority, signer and verifier
// (include/keywarden/net/registry.h), and of Ed25519 against RFC 8032 §7.1
// (tests/data/net/rfc8032_ed25519.json).
#include "keywarden/net/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "keywarden/crypto/ed25519.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"
#include "tests/subprocess.h"

namespace keywarden::net {
namespace {

namespace fs = std::filesystem;
using std::chrono::hours;
using std::chrono::seconds;
using std::chrono::system_clock;
using ::testing::HasSubstr;

std::vector<uint8_t> Hex(std::string_view hex) {
  auto bytes = crypto::HexDecode(hex);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.value_or(std::vector<uint8_t>{});
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// ---- Ed25519 -----------------------------------------------------------------------------------

TEST(Ed25519, Rfc8032Section71Vectors) {
  const fs::path path =
      fs::path(KEYWARDEN_SOURCE_DIR) / "tests" / "data" / "net" / "rfc8032_ed25519.json";
  const auto text = keywarden::testing::ReadFile(path);
  ASSERT_TRUE(text.has_value()) << path;
  const auto doc = nlohmann::json::parse(*text);
  size_t count = 0;
  for (const auto& t : doc.at("tests")) {
    SCOPED_TRACE(t.at("name").get<std::string>());
    const auto seed = Hex(t.at("secret_key").get<std::string>());
    const auto public_key = Hex(t.at("public_key").get<std::string>());
    const auto message = Hex(t.at("message").get<std::string>());
    const auto signature = Hex(t.at("signature").get<std::string>());
    auto key = crypto::Ed25519KeyPair::FromSeed(SecretBytes(seed));
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(std::vector<uint8_t>(key->public_key().begin(), key->public_key().end()), public_key);
    auto sig = key->Sign(message);
    ASSERT_TRUE(sig.ok()) << sig.status();
    EXPECT_EQ(std::vector<uint8_t>(sig->begin(), sig->end()), signature);
    EXPECT_TRUE(crypto::Ed25519Verify(public_key, message, signature));
    // Negative: every flipped signature byte, a changed message, another key.
    for (size_t i = 0; i < signature.size(); ++i) {
      auto bad = signature;
      bad[i] ^= 0x01;
      EXPECT_FALSE(crypto::Ed25519Verify(public_key, message, bad)) << "byte " << i;
    }
    auto other_message = message;
    other_message.push_back(0);
    EXPECT_FALSE(crypto::Ed25519Verify(public_key, other_message, signature));
    auto other_key = public_key;
    other_key[0] ^= 0x01;
    EXPECT_FALSE(crypto::Ed25519Verify(other_key, message, signature));
    ++count;
  }
  EXPECT_EQ(count, 5u);  // TEST 1, 2, 3, 1024, SHA(abc)
}

TEST(Ed25519, RefusesWrongSizesAndNonCanonicalS) {
  EXPECT_EQ(crypto::Ed25519KeyPair::FromSeed(SecretBytes(31)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(crypto::Ed25519KeyPair::FromSeed(SecretBytes(33)).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto key = crypto::Ed25519KeyPair::Generate();
  ASSERT_TRUE(key.ok());
  const std::string message = "m";
  auto sig = key->Sign(Bytes(message));
  ASSERT_TRUE(sig.ok());
  EXPECT_TRUE(crypto::Ed25519Verify(key->public_key(), Bytes(message), *sig));
  EXPECT_FALSE(crypto::Ed25519Verify(std::span(key->public_key()).first(31), Bytes(message), *sig));
  EXPECT_FALSE(crypto::Ed25519Verify(key->public_key(), Bytes(message), std::span(*sig).first(63)));
  // S + L (RFC 8032 §5.1.7 requires S < L): the same point equation holds, so only the range
  // check refuses it. L = 2^252 + 27742317777372353535851937790883648493, little-endian.
  const auto l = Hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
  auto malleated = *sig;
  unsigned carry = 0;
  for (size_t i = 0; i < 32; ++i) {
    const unsigned sum = malleated[32 + i] + l[i] + carry;
    malleated[32 + i] = static_cast<uint8_t>(sum);
    carry = sum >> 8;
  }
  EXPECT_FALSE(crypto::Ed25519Verify(key->public_key(), Bytes(message), malleated));
}

// ---- Names
// ---------------------------------------------------------------------------------------

TEST(ValidNodeName, DnsLabels) {
  const std::vector<std::string_view> good = {"a", "node-1", "0", "a0-b1"};
  for (std::string_view ok : good) EXPECT_TRUE(ValidNodeName(ok)) << ok;
  EXPECT_TRUE(ValidNodeName(std::string(63, 'a')));
  const std::vector<std::string_view> bad = {"",
                                             "-a",
                                             "a-",
                                             "A",
                                             "node_1",
                                             "node.1",
                                             "n\xc3\xb6"
                                             "de",
                                             "a b",
                                             std::string_view("a\0b", 3),
                                             "node/1"};
  for (std::string_view b : bad) EXPECT_FALSE(ValidNodeName(b)) << Printable(b);
  EXPECT_FALSE(ValidNodeName(std::string(64, 'a')));
}

// ---- Fixture
// -------------------------------------------------------------------------------------

const std::string kCluster(64, 'c');
const std::string kOtherCluster(64, 'd');

std::string Fingerprint(std::string_view label) {
  return crypto::HexEncode(crypto::Sha256({Bytes(label)}));
}

SecretBytes Seed(uint8_t fill) { return SecretBytes(std::vector<uint8_t>(32, fill)); }

struct Node {
  std::unique_ptr<NodeSigner> signer;
  std::vector<uint8_t> credential;
  Ed25519PublicKey signing_key{};
};

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto authority = NewAuthorityFromSeed(Seed(0x11));
    ASSERT_TRUE(authority.ok()) << authority.status();
    authority_ = std::move(*authority);
    now_ = system_clock::time_point(seconds(1'750'000'000));
  }

  NodeCredential Credential(std::string node, const Ed25519PublicKey& key,
                            std::string ek = Fingerprint("ek-1")) {
    NodeCredential c;
    c.node = std::move(node);
    c.signing_key = key;
    c.cluster_id = kCluster;
    c.ek_fingerprint = std::move(ek);
    c.not_after = now_ + hours(24);
    return c;
  }

  Node MakeNode(std::string name, std::string ek = Fingerprint("ek-1"),
                Authority* authority = nullptr, std::string cluster = kCluster) {
    Node out;
    auto key = GenerateNodeSigningKey();
    EXPECT_TRUE(key.ok());
    out.signing_key = key->public_key();
    NodeCredential c = Credential(std::move(name), key->public_key(), std::move(ek));
    c.cluster_id = std::move(cluster);
    auto credential = (authority ? authority : authority_.get())->Issue(c);
    EXPECT_TRUE(credential.ok()) << credential.status();
    out.credential = *credential;
    auto signer = NewNodeSigner(out.credential, std::move(*key));
    EXPECT_TRUE(signer.ok()) << signer.status();
    out.signer = std::move(*signer);
    return out;
  }

  NodeEntry Entry(std::string node) {
    NodeEntry e;
    e.node = std::move(node);
    e.public_key.fill(0x42);
    e.endpoint = *Endpoint::Parse("192.0.2.7:51820");
    e.allowed_ips = {*Cidr::Parse("10.78.0.2/32"), *Cidr::Parse("fd78::2/128")};
    e.epoch = 3;
    e.issued_at = now_;
    return e;
  }

  std::unique_ptr<EntryVerifier> Verifier(std::string cluster = kCluster,
                                          Authority* authority = nullptr) {
    auto v = NewEntryVerifier((authority ? authority : authority_.get())->public_key(), cluster,
                              [this] { return now_; });
    EXPECT_TRUE(v.ok()) << v.status();
    return std::move(*v);
  }

  std::string Record(Node& node, const NodeEntry& entry) {
    auto record = node.signer->Record(entry);
    EXPECT_TRUE(record.ok()) << record.status();
    return record.value_or("");
  }

  std::unique_ptr<Authority> authority_;
  system_clock::time_point now_;
};

void ExpectRefused(const absl::StatusOr<VerifiedEntry>& result, absl::StatusCode code,
                   std::string_view reason) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_THAT(StatusMessage(result.status()), HasSubstr(std::string(reason)));
}

// ---- Authority derivation ---------------------------------------------------------------------

TEST_F(RegistryTest, AuthorityIsHkdfExpandOfTheKek) {
  const SecretBytes kek = Seed(0x5a);
  auto a = NewAuthority(kek);
  ASSERT_TRUE(a.ok()) << a.status();
  auto expander = crypto::HkdfSha256Expander::New(kek);
  ASSERT_TRUE(expander.ok());
  auto seed = (*expander)->Expand(Bytes("keywarden-net-authority-v1"), 32);
  ASSERT_TRUE(seed.ok());
  auto b = NewAuthorityFromSeed(*seed);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*a)->public_key(), (*b)->public_key());
  // Every replica derives the same authority; another KEK another one.
  EXPECT_EQ((*NewAuthority(kek))->public_key(), (*a)->public_key());
  EXPECT_NE((*NewAuthority(Seed(0x5b)))->public_key(), (*a)->public_key());
  // The label is no DEK's: DEK infos start with "key-".
  EXPECT_NE(kAuthorityInfo.substr(0, 4), "key-");
  EXPECT_EQ(NewAuthority(SecretBytes(31)).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- Round trips ------------------------------------------------------------------------------

TEST_F(RegistryTest, RecordRoundTrip) {
  Node node = MakeNode("node-a");
  const NodeEntry entry = Entry("node-a");
  const std::string record = Record(node, entry);
  ASSERT_FALSE(record.empty());
  EXPECT_LE(record.size(), kMaxRecordSize);

  auto verified = Verifier()->Verify("node-a", record);
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->entry, entry);
  EXPECT_EQ(verified->ek_fingerprint, Fingerprint("ek-1"));
  EXPECT_EQ(verified->credential_not_after, now_ + hours(24));

  auto parsed = ParseRecord(record);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->entry, entry);
  EXPECT_EQ(parsed->credential.node, "node-a");
  EXPECT_EQ(parsed->credential.signing_key, node.signing_key);
  EXPECT_EQ(parsed->credential.cluster_id, kCluster);
  EXPECT_EQ(parsed->credential_bytes, node.credential);
  auto again = SerializeRecord(*parsed);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, record);

  auto credential = ParseCredential(node.credential);
  ASSERT_TRUE(credential.ok()) << credential.status();
  EXPECT_EQ(credential->node, "node-a");
  EXPECT_EQ(credential->ek_fingerprint, Fingerprint("ek-1"));
}

TEST_F(RegistryTest, RoundTripsEdgeValues) {
  Node node = MakeNode("n");
  NodeEntry entry = Entry("n");
  entry.allowed_ips.clear();
  entry.endpoint = *Endpoint::Parse("[2001:db8::1]:65535");
  entry.epoch = UINT64_MAX;
  entry.issued_at = system_clock::time_point();
  auto verified = Verifier()->Verify("n", Record(node, entry));
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->entry, entry);

  for (int i = 0; i < 64; ++i) {
    entry.allowed_ips.push_back(
        *Cidr::Make(IpAddress::V4({10, 1, static_cast<uint8_t>(i), 0}), 24));
  }
  verified = Verifier()->Verify("n", Record(node, entry));
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->entry.allowed_ips.size(), 64u);
}

TEST_F(RegistryTest, TimesAreWholeSeconds) {
  Node node = MakeNode("node-a");
  NodeEntry entry = Entry("node-a");
  entry.issued_at = now_ + std::chrono::milliseconds(999);
  auto verified = Verifier()->Verify("node-a", Record(node, entry));
  ASSERT_TRUE(verified.ok());
  EXPECT_EQ(verified->entry.issued_at, now_);  // floored
}

// ---- What Issue and Record refuse -----------------------------------------------------------

TEST_F(RegistryTest, IssueRefusesBadCredentials) {
  auto key = GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  auto check = [&](NodeCredential c, std::string_view reason) {
    auto issued = authority_->Issue(c);
    ASSERT_FALSE(issued.ok()) << reason;
    EXPECT_EQ(issued.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(StatusMessage(issued.status()), HasSubstr(std::string(reason)));
  };
  NodeCredential c = Credential("node-a", key->public_key());
  c.node = "Node-A";
  check(c, "invalid node name");
  c = Credential("node-a", key->public_key());
  c.cluster_id = std::string(64, 'C');
  check(c, "clusterID");
  c.cluster_id = std::string(62, 'c');
  check(c, "clusterID");
  c = Credential("node-a", key->public_key());
  c.ek_fingerprint = "abc";
  check(c, "EK fingerprint");
  c = Credential("node-a", Ed25519PublicKey{});
  check(c, "all-zero signing key");
  c = Credential("node-a", key->public_key());
  c.not_after = system_clock::time_point(seconds(-1));
  check(c, "not-after");
}

TEST_F(RegistryTest, RecordRefusesBadEntries) {
  Node node = MakeNode("node-a");
  NodeEntry e = Entry("node-b");
  auto r = node.signer->Record(e);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  e = Entry("node-a");
  e.public_key.fill(0);
  EXPECT_EQ(node.signer->Record(e).status().code(), absl::StatusCode::kInvalidArgument);
  e = Entry("node-a");
  e.endpoint.port = 0;
  EXPECT_EQ(node.signer->Record(e).status().code(), absl::StatusCode::kInvalidArgument);
  e = Entry("node-a");
  e.allowed_ips.push_back(e.allowed_ips[0]);
  EXPECT_THAT(StatusMessage(node.signer->Record(e).status()), HasSubstr("twice"));
  e = Entry("node-a");
  e.allowed_ips.clear();
  for (int i = 0; i < 65; ++i) {
    e.allowed_ips.push_back(*Cidr::Make(IpAddress::V4({10, 2, static_cast<uint8_t>(i), 0}), 24));
  }
  EXPECT_THAT(StatusMessage(node.signer->Record(e).status()), HasSubstr("at most 64"));
}

TEST_F(RegistryTest, SignerNeedsTheCertifiedKey) {
  Node node = MakeNode("node-a");
  auto other = GenerateNodeSigningKey();
  ASSERT_TRUE(other.ok());
  auto signer = NewNodeSigner(node.credential, std::move(*other));
  EXPECT_EQ(signer.status().code(), absl::StatusCode::kFailedPrecondition);
  auto key = GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(NewNodeSigner(std::span(node.credential).first(10), std::move(*key)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST_F(RegistryTest, VerifierNeedsAClusterId) {
  EXPECT_EQ(NewEntryVerifier(authority_->public_key(), "xyz").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NewEntryVerifier(authority_->public_key(), std::string(64, 'C')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---- What Verify refuses ----------------------------------------------------------------------

TEST_F(RegistryTest, RefusesAnotherAuthority) {
  auto rogue = NewAuthorityFromSeed(Seed(0x99));
  ASSERT_TRUE(rogue.ok());
  Node node = MakeNode("node-a", Fingerprint("ek-1"), rogue->get());
  ExpectRefused(Verifier()->Verify("node-a", Record(node, Entry("node-a"))),
                absl::StatusCode::kPermissionDenied, "network authority key");
}

TEST_F(RegistryTest, RefusesAnotherCluster) {
  Node node = MakeNode("node-a", Fingerprint("ek-1"), nullptr, kOtherCluster);
  ExpectRefused(Verifier()->Verify("node-a", Record(node, Entry("node-a"))),
                absl::StatusCode::kPermissionDenied, "another cluster");
  // And a verifier of the other cluster refuses this cluster's records.
  Node ours = MakeNode("node-b");
  ExpectRefused(Verifier(kOtherCluster)->Verify("node-b", Record(ours, Entry("node-b"))),
                absl::StatusCode::kPermissionDenied, "another cluster");
}

TEST_F(RegistryTest, RefusesAnotherNodesRecord) {
  Node node = MakeNode("node-a");
  ExpectRefused(Verifier()->Verify("node-b", Record(node, Entry("node-a"))),
                absl::StatusCode::kPermissionDenied, "carries the credential of node node-a");
}

TEST_F(RegistryTest, RefusesAnEntryNamingAnotherNode) {
  Node node = MakeNode("node-a");
  auto parsed = ParseRecord(Record(node, Entry("node-a")));
  ASSERT_TRUE(parsed.ok());
  parsed->entry.node = "node-b";
  auto forged = SerializeRecord(*parsed);
  ASSERT_TRUE(forged.ok());
  ExpectRefused(Verifier()->Verify("node-a", *forged), absl::StatusCode::kPermissionDenied,
                "the entry names node node-b");
}

TEST_F(RegistryTest, RefusesExpiredCredentials) {
  Node node = MakeNode("node-a");
  const std::string record = Record(node, Entry("node-a"));
  auto verifier =
      NewEntryVerifier(authority_->public_key(), kCluster, [this] { return now_ + hours(24); });
  ASSERT_TRUE(verifier.ok());
  EXPECT_TRUE((*verifier)->Verify("node-a", record).ok());  // valid through not-after
  verifier = NewEntryVerifier(authority_->public_key(), kCluster,
                              [this] { return now_ + hours(24) + seconds(1); });
  ASSERT_TRUE(verifier.ok());
  ExpectRefused((*verifier)->Verify("node-a", record), absl::StatusCode::kPermissionDenied,
                "expired 1 s ago");
}

TEST_F(RegistryTest, RefusesAChangedEntry) {
  Node node = MakeNode("node-a");
  auto parsed = ParseRecord(Record(node, Entry("node-a")));
  ASSERT_TRUE(parsed.ok());
  parsed->entry.epoch = 4;  // a replayed signature over another entry
  ExpectRefused(Verifier()->Verify("node-a", *SerializeRecord(*parsed)),
                absl::StatusCode::kPermissionDenied, "entry's signature does not verify");
}

TEST_F(RegistryTest, RefusesAnEntryUnderAnotherCredential) {
  // Both credentials are valid for node-a, but the entry was signed with the first node key:
  // paired with the second credential (another signing key) it must not verify.
  Node first = MakeNode("node-a");
  Node second = MakeNode("node-a");
  auto parsed = ParseRecord(Record(first, Entry("node-a")));
  ASSERT_TRUE(parsed.ok());
  parsed->credential_bytes = second.credential;
  ExpectRefused(Verifier()->Verify("node-a", *SerializeRecord(*parsed)),
                absl::StatusCode::kPermissionDenied, "entry's signature does not verify");
}

TEST_F(RegistryTest, TrustOnFirstUse) {
  auto verifier = Verifier();
  Node first = MakeNode("node-a", Fingerprint("ek-1"));
  Node same_ek = MakeNode("node-a", Fingerprint("ek-1"));  // a restarted agent: new key, same EK
  Node impostor = MakeNode("node-a", Fingerprint("ek-2"));
  ASSERT_TRUE(verifier->Verify("node-a", Record(first, Entry("node-a"))).ok());
  EXPECT_TRUE(verifier->Verify("node-a", Record(same_ek, Entry("node-a"))).ok());
  const std::string impostor_record = Record(impostor, Entry("node-a"));
  ExpectRefused(verifier->Verify("node-a", impostor_record), absl::StatusCode::kPermissionDenied,
                "bound to EK");
  // The refusal is the binding's, not the record's: a fresh verifier accepts it, and the
  // impostor's EK may hold another name.
  EXPECT_TRUE(Verifier()->Verify("node-a", impostor_record).ok());
  Node other = MakeNode("node-b", Fingerprint("ek-2"));
  EXPECT_TRUE(verifier->Verify("node-b", Record(other, Entry("node-b"))).ok());
  // A refused record binds nothing.
  auto fresh = Verifier();
  Node expired = MakeNode("node-c", Fingerprint("ek-3"), nullptr, kOtherCluster);
  EXPECT_FALSE(fresh->Verify("node-c", Record(expired, Entry("node-c"))).ok());
  Node good = MakeNode("node-c", Fingerprint("ek-4"));
  EXPECT_TRUE(fresh->Verify("node-c", Record(good, Entry("node-c"))).ok());
}

TEST_F(RegistryTest, TrustOnFirstUseIsThreadSafe) {
  auto verifier = Verifier();
  std::vector<std::string> records;
  for (int i = 0; i < 8; ++i) {
    Node node = MakeNode("node-a", Fingerprint("ek-" + std::to_string(i)));
    records.push_back(Record(node, Entry("node-a")));
  }
  std::vector<std::string> accepted(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      for (int round = 0; round < 20; ++round) {
        auto v = verifier->Verify("node-a", records[i]);
        if (v.ok()) accepted[i] = v->ek_fingerprint;
      }
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> winners;
  for (const auto& a : accepted) {
    if (!a.empty()) winners.insert(a);
  }
  EXPECT_EQ(winners.size(), 1u);
}

// ---- Malformed records --------------------------------------------------------------------------

TEST_F(RegistryTest, EveryFlippedByteIsRefused) {
  Node node = MakeNode("node-a");
  const std::string record = Record(node, Entry("node-a"));
  for (size_t i = 0; i < record.size(); ++i) {
    for (uint8_t mask : {0x01, 0x80}) {
      std::string bad = record;
      bad[i] = static_cast<char>(bad[i] ^ mask);
      auto v = Verifier()->Verify("node-a", bad);
      ASSERT_FALSE(v.ok()) << "byte " << i << " mask " << int(mask);
      EXPECT_TRUE(v.status().code() == absl::StatusCode::kDataLoss ||
                  v.status().code() == absl::StatusCode::kPermissionDenied)
          << v.status();
    }
  }
}

TEST_F(RegistryTest, EveryTruncationIsRefused) {
  Node node = MakeNode("node-a");
  const std::string record = Record(node, Entry("node-a"));
  for (size_t n = 0; n < record.size(); ++n) {
    const std::string prefix = record.substr(0, n);
    auto parsed = ParseRecord(prefix);
    ASSERT_FALSE(parsed.ok()) << n;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(Verifier()->Verify("node-a", prefix).status().code(), absl::StatusCode::kDataLoss);
  }
  for (size_t n = 0; n < node.credential.size(); ++n) {
    EXPECT_FALSE(ParseCredential(std::span(node.credential).first(n)).ok()) << n;
  }
}

TEST_F(RegistryTest, RefusesTrailingBytesUnknownVersionsAndOversize) {
  Node node = MakeNode("node-a");
  const std::string record = Record(node, Entry("node-a"));
  auto code = [&](const std::string& r) { return Verifier()->Verify("node-a", r).status(); };
  EXPECT_THAT(StatusMessage(code(record + '\0')), HasSubstr("trailing"));
  std::string v2 = record;
  v2[4] = 2;
  EXPECT_THAT(StatusMessage(code(v2)), HasSubstr("unknown version 2"));
  // The credential's and the entry's own version bytes (offsets in the record: 7 + 4, and the
  // entry's after the credential and its length).
  std::string c2 = record;
  c2[7 + 4] = 2;
  EXPECT_THAT(StatusMessage(code(c2)), HasSubstr("network credential: unknown version"));
  std::string e2 = record;
  e2[7 + node.credential.size() + 2 + 4] = 2;
  EXPECT_THAT(StatusMessage(code(e2)), HasSubstr("network entry: unknown version"));
  EXPECT_EQ(code(std::string(kMaxRecordSize + 1, 'K')).code(), absl::StatusCode::kDataLoss);
  std::string magic = record;
  magic[0] = 'X';
  EXPECT_THAT(StatusMessage(code(magic)), HasSubstr("wrong magic"));
}

TEST_F(RegistryTest, RefusesNonCanonicalAllowedIps) {
  Node node = MakeNode("node-a");
  NodeEntry entry = Entry("node-a");
  entry.allowed_ips = {*Cidr::Parse("10.78.0.0/24")};
  const std::string record = Record(node, entry);
  // The allowed IP is the record's last item before the signature: family, 4 bytes, length.
  std::string host_bits = record;
  host_bits[record.size() - 64 - 2] = 5;  // 10.78.0.5/24
  auto v = Verifier()->Verify("node-a", host_bits);
  ASSERT_FALSE(v.ok());
  EXPECT_EQ(v.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(StatusMessage(v.status()), HasSubstr("not canonical"));
  std::string long_prefix = record;
  long_prefix[record.size() - 64 - 1] = 33;  // /33
  EXPECT_THAT(StatusMessage(Verifier()->Verify("node-a", long_prefix).status()),
              HasSubstr("not canonical"));
}

TEST_F(RegistryTest, MessagesNeverQuoteKeyBytes) {
  Node node = MakeNode("node-a");
  const NodeEntry entry = Entry("node-a");
  const std::string record = Record(node, entry);
  std::vector<std::string> forbidden = {
      crypto::HexEncode(node.signing_key).substr(0, 16),
      crypto::Base64Encode(node.signing_key).substr(0, 12),
      crypto::HexEncode(entry.public_key).substr(0, 16),
      crypto::HexEncode(authority_->public_key()).substr(0, 16),
  };
  std::vector<absl::Status> statuses;
  for (size_t i = 0; i < record.size(); i += 7) {
    std::string bad = record;
    bad[i] = static_cast<char>(bad[i] ^ 0x20);
    statuses.push_back(Verifier()->Verify("node-a", bad).status());
    statuses.push_back(Verifier(kOtherCluster)->Verify("node-a", record).status());
  }
  for (const absl::Status& s : statuses) {
    for (const std::string& f : forbidden) {
      EXPECT_THAT(StatusMessage(s), ::testing::Not(HasSubstr(f)));
    }
  }
}

}  // namespace
}  // namespace keywarden::net
