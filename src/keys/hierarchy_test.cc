#include "keywarden/keys/hierarchy.h"

#include <gtest/gtest.h>

#include <thread>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/keys/cluster.h"
#include "tests/vectors.h"

namespace keywarden::keys {
namespace {

using ::keywarden::testing::Bytes;
using ::keywarden::testing::Hex;
using ::keywarden::testing::LoadJson;
using ::keywarden::testing::SecretHex;

const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

std::string HexOf(const SecretBytes& s) { return crypto::HexEncode(s.Reveal(kToken)); }

nlohmann::json Vectors() { return LoadJson("constellation/constellation_vectors.json"); }

std::unique_ptr<Kek> ExampleKek() {
  const auto json = Vectors()["cluster_example"]["mastersecret_json"].get<std::string>();
  auto secret = ParseMasterSecretJson(Bytes(json));
  EXPECT_TRUE(secret.ok());
  return *Kek::FromMasterSecret(*secret);
}

// Constellation's HKDF vectors are HKDF(secret, salt, info, length); every one whose info is
// a "key-" label is a DEK of our hierarchy with master key = secret and salt = salt.
TEST(HierarchyTest, ConstellationHkdfVectorsAreDeks) {
  int checked = 0;
  const nlohmann::json vectors = Vectors();
  for (const auto& v : vectors["hkdf_sha256"]) {
    const std::string info = v["info"];
    ASSERT_EQ(info.rfind("key-", 0), 0u) << v["name"];
    MasterSecret secret{SecretHex(v["secret"].get<std::string>()),
                        SecretHex(v["salt"].get<std::string>())};
    auto kek = Kek::FromMasterSecret(secret);
    ASSERT_TRUE(kek.ok());
    auto dek = (*kek)->DeriveDek(info.substr(4), v["length"].get<size_t>());
    ASSERT_TRUE(dek.ok());
    EXPECT_EQ(HexOf(*dek), v["output"].get<std::string>()) << v["name"];
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(HierarchyTest, ConstellationClusterExample) {
  const auto ex = Vectors()["cluster_example"];
  auto kek = ExampleKek();
  auto measurement_secret = kek->MeasurementSecret();
  ASSERT_TRUE(measurement_secret.ok());
  EXPECT_EQ(HexOf(*measurement_secret), ex["measurement_secret"].get<std::string>());
  auto id = DeriveClusterId(*measurement_secret, Hex(ex["measurement_salt"].get<std::string>()));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(crypto::HexEncode(*id), ex["cluster_id"].get<std::string>());
  EXPECT_EQ(crypto::HexEncode(ExpectedPcr15(*id)), ex["pcr15_after_bootstrap"].get<std::string>());
  auto disk = kek->StateDiskKey(ex["disk_key"]["uuid"].get<std::string>());
  ASSERT_TRUE(disk.ok());
  EXPECT_EQ(HexOf(*disk), ex["disk_key"]["key"].get<std::string>());
}

TEST(HierarchyTest, KekIsTheHkdfPrkAndDeksAreOneShotHkdf) {
  const auto json = Vectors()["cluster_example"]["mastersecret_json"].get<std::string>();
  auto secret = *ParseMasterSecretJson(Bytes(json));
  auto kek = *Kek::FromMasterSecret(secret);
  auto prk = *crypto::HkdfSha256Extract(secret.salt.Reveal(kToken), secret.key.Reveal(kToken));
  EXPECT_EQ(HexOf(kek->bytes()), HexOf(prk));
  for (size_t n : {size_t{1}, size_t{32}, size_t{64}, size_t{100}, kMaxDekSize}) {
    auto dek = *kek->DeriveDek("volume-7", n);
    auto ref = *crypto::HkdfSha256(secret.key.Reveal(kToken), secret.salt.Reveal(kToken),
                                   Bytes("key-volume-7"), n);
    EXPECT_EQ(HexOf(dek), HexOf(ref)) << n;
  }
  // A stored KEK derives the same keys as the master secret it came from.
  auto stored = *Kek::FromBytes(kek->bytes());
  EXPECT_EQ(HexOf(*stored->DeriveDek("x", 32)), HexOf(*kek->DeriveDek("x", 32)));
}

TEST(HierarchyTest, DekLengthsAndIds) {
  auto kek = ExampleKek();
  EXPECT_FALSE(kek->DeriveDek("a", 0).ok());
  EXPECT_FALSE(kek->DeriveDek("a", kMaxDekSize + 1).ok());
  // HKDF output is a prefix property: DEK(id, 16) is the first half of DEK(id, 32).
  EXPECT_EQ(HexOf(*kek->DeriveDek("a", 32)).substr(0, 32), HexOf(*kek->DeriveDek("a", 16)));
  // Ids are case-sensitive and distinct ids give distinct keys.
  EXPECT_NE(HexOf(*kek->DeriveDek("Disk", 32)), HexOf(*kek->DeriveDek("disk", 32)));
  EXPECT_NE(HexOf(*kek->DeriveDek("a", 32)), HexOf(*kek->DeriveDek("b", 32)));
}

TEST(HierarchyTest, StateDiskKeyLowerCasesAndValidatesUuid) {
  auto kek = ExampleKek();
  const std::string upper = "0B1C2D3E-AAAA-4000-8000-00000000ABCD";
  const std::string lower = "0b1c2d3e-aaaa-4000-8000-00000000abcd";
  EXPECT_EQ(HexOf(*kek->StateDiskKey(upper)), HexOf(*kek->StateDiskKey(lower)));
  EXPECT_EQ(HexOf(*kek->StateDiskKey(upper)), HexOf(*kek->DeriveDek(lower, 32)));
  for (const char* bad :
       {"", "not-a-uuid", "0b1c2d3e-aaaa-4000-8000-00000000abc",
        "0b1c2d3e-aaaa-4000-8000-00000000abcde", "0b1c2d3eaaaa40008000000000000abcd",
        "0b1c2d3e-aaaa-4000-8000_00000000abcd", "gb1c2d3e-aaaa-4000-8000-00000000abcd"}) {
    auto r = kek->StateDiskKey(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  // Quoted input is escaped: no control characters or terminal escapes reach a message.
  auto r = kek->StateDiskKey("00000000-0000-0000-0000-00000000000\n\x1b]0;x\x07");
  const std::string message(r.status().message());
  EXPECT_NE(message.find("\\x0a\\x1b]0;x\\x07"), std::string::npos) << message;
  EXPECT_TRUE(std::none_of(message.begin(), message.end(),
                           [](char c) { return static_cast<unsigned char>(c) < 0x20; }));
}

TEST(HierarchyTest, ClusterIdNeedsA32ByteSalt) {
  auto kek = ExampleKek();
  auto ms = *kek->MeasurementSecret();
  EXPECT_FALSE(DeriveClusterId(ms, std::vector<uint8_t>(31)).ok());
  EXPECT_FALSE(DeriveClusterId(ms, std::vector<uint8_t>(33)).ok());
}

TEST(HierarchyTest, KekRefusesShortMasterSecretAndWrongSize) {
  MasterSecret short_key{SecretBytes(std::vector<uint8_t>(15, 1)),
                         SecretBytes(std::vector<uint8_t>(32, 2))};
  EXPECT_FALSE(Kek::FromMasterSecret(short_key).ok());
  MasterSecret short_salt{SecretBytes(std::vector<uint8_t>(32, 1)),
                          SecretBytes(std::vector<uint8_t>(31, 2))};
  EXPECT_FALSE(Kek::FromMasterSecret(short_salt).ok());
  EXPECT_FALSE(Kek::FromBytes(SecretBytes(std::vector<uint8_t>(31, 1))).ok());
}

TEST(HierarchyTest, ConcurrentDerivationsAgree) {
  auto kek = ExampleKek();
  const std::string expected = HexOf(*kek->DeriveDek("shared", 32));
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        if (HexOf(*kek->DeriveDek("shared", 32)) != expected) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST(ClusterTest, ComputeClusterInfoMatchesExample) {
  const auto ex = Vectors()["cluster_example"];
  auto secret = *ParseMasterSecretJson(Bytes(ex["mastersecret_json"].get<std::string>()));
  auto info = ComputeClusterInfo(secret, Hex(ex["measurement_salt"].get<std::string>()));
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(crypto::HexEncode(info->cluster_id), ex["cluster_id"].get<std::string>());
}

}  // namespace
}  // namespace keywarden::keys
