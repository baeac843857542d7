// Unit tests of the LUKS profile check. The fixture tests/data/luks2_metadata.json is the
// metadata of a volume `keywarden volume format` wrote, as `cryptsetup luksDump
// --dump-json-metadata` prints it; each test breaks one rule and expects a refusal naming it.
#include "keywarden/volume/profile.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>

#include "keywarden/status.h"

namespace keywarden::volume {
namespace {

using Json = nlohmann::json;
using ::testing::HasSubstr;

constexpr std::string_view kUuid = "d3df01db-6681-497a-b52e-5659b6617609";

Json Fixture() {
  std::ifstream in(std::string(KEYWARDEN_SOURCE_DIR) + "/tests/data/luks2_metadata.json");
  std::stringstream text;
  text << in.rdbuf();
  Json j = Json::parse(text.str(), nullptr, false);
  EXPECT_FALSE(j.is_discarded());
  return j;
}

absl::StatusOr<HeaderFacts> Check(const Json& j, std::string_view uuid = kUuid) {
  return CheckLuks2Metadata(j.dump(), uuid);
}

// ExpectRefused applies `mutate` to the fixture and expects FAILED_PRECONDITION with `text`.
void ExpectRefused(const std::function<void(Json&)>& mutate, std::string_view text) {
  Json j = Fixture();
  mutate(j);
  auto facts = Check(j);
  ASSERT_FALSE(facts.ok()) << "accepted: " << j.dump();
  EXPECT_EQ(facts.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(facts.status()), HasSubstr("LUKS header refused"));
  EXPECT_THAT(StatusMessage(facts.status()), HasSubstr(std::string(text)));
}

TEST(Luks2Profile, AcceptsWhatFormatWrites) {
  auto facts = Check(Fixture());
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->version, LuksVersion::kLuks2);
  EXPECT_EQ(facts->uuid, kUuid);
  EXPECT_EQ(facts->key_id, kUuid);
  EXPECT_EQ(facts->sector_size, 4096u);
  EXPECT_EQ(facts->data_offset, 16u * 1024 * 1024);
  EXPECT_EQ(facts->volume_key_size, 64u);
  EXPECT_FALSE(facts->integrity.has_value());
  EXPECT_EQ(facts->pbkdf, "pbkdf2");
  EXPECT_TRUE(facts->has_token);
  EXPECT_TRUE(facts->initialized);
}

TEST(Luks2Profile, UpperCaseHeaderUuidIsNormalized) {
  std::string upper(kUuid);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  Json j = Fixture();
  auto facts = Check(j, upper);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->uuid, kUuid);
}

TEST(Luks2Profile, AcceptsArgon2idAndIntegrity) {
  Json j = Fixture();
  j["keyslots"]["0"]["kdf"] =
      Json{{"type", "argon2id"}, {"time", 4}, {"memory", 65536}, {"cpus", 1}, {"salt", "AA=="}};
  j["segments"]["0"]["integrity"] =
      Json{{"type", "hmac(sha256)"}, {"journal_encryption", "none"}, {"journal_integrity", "none"}};
  j["keyslots"]["0"]["key_size"] = 96;
  auto facts = Check(j);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->pbkdf, "argon2id");
  EXPECT_EQ(facts->integrity, "hmac(sha256)");
  EXPECT_EQ(facts->volume_key_size, 96u);
}

TEST(Luks2Profile, AcceptsNoTokenAndUninitializedToken) {
  Json j = Fixture();
  j["tokens"] = Json::object();
  auto facts = Check(j);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_FALSE(facts->has_token);
  EXPECT_EQ(facts->key_id, kUuid);

  j = Fixture();
  j["tokens"]["0"]["initialized"] = false;
  facts = Check(j);
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_FALSE(facts->initialized);
}

TEST(Luks2Profile, RefusesNullCipher) {
  ExpectRefused([](Json& j) { j["segments"]["0"]["encryption"] = "cipher_null-ecb"; },
                "cipher_null-ecb");
}

TEST(Luks2Profile, RefusesOtherDataCiphers) {
  ExpectRefused([](Json& j) { j["segments"]["0"]["encryption"] = "aes-cbc-essiv:sha256"; },
                "Keywarden volumes use aes-xts-plain64");
  ExpectRefused([](Json& j) { j["segments"]["0"]["encryption"] = "aes-xts-plain"; },
                "aes-xts-plain\"");
}

TEST(Luks2Profile, RefusesSegmentOverlappingTheHeader) {
  ExpectRefused([](Json& j) { j["segments"]["0"]["offset"] = "4096"; }, "starts at byte 4096");
  ExpectRefused([](Json& j) { j["segments"]["0"]["offset"] = "0"; }, "starts at byte 0");
}

TEST(Luks2Profile, RefusesOddOffsets) {
  ExpectRefused([](Json& j) { j["segments"]["0"]["offset"] = "16777217"; }, "16777217");
  ExpectRefused([](Json& j) { j["segments"]["0"]["offset"] = "33554432"; }, "33554432");
  ExpectRefused([](Json& j) { j["segments"]["0"]["offset"] = "-1"; }, "not a decimal number");
  ExpectRefused([](Json& j) { j["segments"]["0"]["offset"] = 16777216; }, "not a string");
}

TEST(Luks2Profile, RefusesForeignSegments) {
  ExpectRefused(
      [](Json& j) {
        j["segments"]["1"] = j["segments"]["0"];
        j["segments"]["1"]["offset"] = "33554432";
      },
      "2 data segments");
  ExpectRefused(
      [](Json& j) {
        j["segments"]["1"] = j["segments"]["0"];
        j["segments"].erase("0");
      },
      "exactly one, number 0");
  ExpectRefused([](Json& j) { j["segments"]["0"]["type"] = "linear"; }, "type \"linear\"");
  ExpectRefused([](Json& j) { j["segments"]["0"]["size"] = "1048576"; }, "size");
  ExpectRefused([](Json& j) { j["segments"]["0"]["iv_tweak"] = "100"; }, "iv_tweak");
  ExpectRefused([](Json& j) { j["segments"]["0"]["sector_size"] = 512; }, "512-byte sectors");
  ExpectRefused([](Json& j) { j["segments"]["0"]["flags"] = Json::array({"in-reencryption"}); },
                "re-encryption");
  ExpectRefused([](Json& j) { j["segments"]["0"]["extra"] = 1; }, "unexpected field \"extra\"");
  ExpectRefused([](Json& j) { j["segments"] = Json::object(); }, "0 data segments");
}

TEST(Luks2Profile, RefusesWeakOrForeignIntegrity) {
  ExpectRefused(
      [](Json& j) {
        j["segments"]["0"]["integrity"] =
            Json{{"type", "crc32c"}, {"journal_encryption", "none"}, {"journal_integrity", "none"}};
        j["keyslots"]["0"]["key_size"] = 96;
      },
      "crc32c");
}

TEST(Luks2Profile, RefusesExtraKeyslots) {
  ExpectRefused([](Json& j) { j["keyslots"]["1"] = j["keyslots"]["0"]; }, "2 keyslots");
  ExpectRefused(
      [](Json& j) {
        j["keyslots"]["5"] = j["keyslots"]["0"];
        j["keyslots"].erase("0");
      },
      "keyslots (5)");
  ExpectRefused([](Json& j) { j["keyslots"] = Json::object(); }, "0 keyslots");
}

TEST(Luks2Profile, RefusesUnexpectedKeyslotParameters) {
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["area"]["encryption"] = "cipher_null-ecb"; },
                "keyslot 0 is encrypted with \"cipher_null-ecb\"");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["area"]["key_size"] = 32; }, "area key is 32");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["key_size"] = 32; }, "32-byte volume key");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["af"]["stripes"] = 1; }, "1 AF stripes");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["af"]["hash"] = "sha1"; }, "sha1");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["kdf"]["type"] = "argon2i"; }, "kdf \"argon2i\"");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["kdf"]["hash"] = "sha1"; }, "sha1");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["type"] = "reencrypt"; }, "reencrypt");
}

TEST(Luks2Profile, RefusesKeyslotAreaOutsideTheKeyslotsArea) {
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["area"]["offset"] = "4096"; },
                "outside the keyslots area");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["area"]["offset"] = "16777216"; },
                "outside the keyslots area");
  ExpectRefused([](Json& j) { j["keyslots"]["0"]["area"]["size"] = "18446744073709551615"; },
                "outside the keyslots area");
}

TEST(Luks2Profile, RefusesDigestsThatCoverOtherSlotsOrSegments) {
  ExpectRefused(
      [](Json& j) {
        j["digests"]["0"]["keyslots"] = Json::array({"0", "1"});
      },
      "keyslots is [\"0\",\"1\"]");
  ExpectRefused([](Json& j) { j["digests"]["0"]["segments"] = Json::array(); }, "segments");
  ExpectRefused([](Json& j) { j["digests"]["1"] = j["digests"]["0"]; }, "2 digests");
}

TEST(Luks2Profile, RefusesForeignTokensAndKeyIds) {
  ExpectRefused([](Json& j) { j["tokens"]["0"]["type"] = "systemd-tpm2"; }, "systemd-tpm2");
  ExpectRefused([](Json& j) { j["tokens"]["1"] = j["tokens"]["0"]; }, "2 tokens");
  ExpectRefused([](Json& j) { j["tokens"]["0"]["key_id"] = "another-volume"; },
                "names key \"another-volume\"");
  ExpectRefused([](Json& j) { j["tokens"]["0"]["initialized"] = "yes"; }, "not a bool");
}

constexpr std::string_view kSaltHex =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
constexpr std::string_view kMacHex =
    "f0e1d2c3b4a5968778695a4b3c2d1e0ff0e1d2c3b4a5968778695a4b3c2d1e0f";

Json NodeState() { return Json{{"measurement_salt", kSaltHex}, {"mac", kMacHex}}; }

TEST(Luks2Profile, AcceptsNodeStateAndReportsItUnverified) {
  auto plain = Check(Fixture());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_FALSE(plain->measurement_salt.has_value());
  EXPECT_TRUE(plain->node_state_mac.empty());

  Json j = Fixture();
  j["tokens"]["0"]["node_state"] = NodeState();
  auto facts = Check(j);
  ASSERT_TRUE(facts.ok()) << facts.status();
  ASSERT_TRUE(facts->measurement_salt.has_value());
  ASSERT_EQ(facts->measurement_salt->size(), kMeasurementSaltSize);
  for (size_t i = 0; i < kMeasurementSaltSize; ++i) EXPECT_EQ((*facts->measurement_salt)[i], i);
  ASSERT_EQ(facts->node_state_mac.size(), kNodeStateMacSize);
  EXPECT_EQ(facts->node_state_mac[0], 0xf0);
  EXPECT_EQ(facts->node_state_mac[31], 0x0f);
  EXPECT_TRUE(facts->initialized);
}

TEST(Luks2Profile, RefusesMalformedNodeState) {
  auto with = [](std::function<void(Json&)> edit) {
    return [edit](Json& j) {
      Json node_state = NodeState();
      edit(node_state);
      j["tokens"]["0"]["node_state"] = node_state;
    };
  };
  ExpectRefused(with([](Json& n) { n["extra"] = "x"; }),
                "token 0 node_state has an unexpected field \"extra\"");
  ExpectRefused(with([](Json& n) { n.erase("mac"); }), "token 0 node_state lacks \"mac\"");
  ExpectRefused(with([](Json& n) { n.erase("measurement_salt"); }), "lacks \"measurement_salt\"");
  ExpectRefused(with([](Json& n) { n["measurement_salt"] = std::string(kSaltHex.substr(2)); }),
                "node_state.measurement_salt is");
  ExpectRefused(with([](Json& n) { n["measurement_salt"] = std::string(kSaltHex) + "00"; }),
                "64 lower-case hex digits");
  ExpectRefused(with([](Json& n) { n["mac"] = std::string(kMacHex.substr(0, 62)); }),
                "node_state.mac is");
  ExpectRefused(with([](Json& n) { n["mac"] = ""; }), "node_state.mac is");
  std::string upper(kMacHex);
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  ExpectRefused(with([&](Json& n) { n["mac"] = upper; }), "64 lower-case hex digits");
  std::string one_upper(kSaltHex);
  one_upper[21] = 'A';
  ExpectRefused(with([&](Json& n) { n["measurement_salt"] = one_upper; }),
                "node_state.measurement_salt is");
  std::string not_hex(kSaltHex);
  not_hex[0] = 'g';
  ExpectRefused(with([&](Json& n) { n["measurement_salt"] = not_hex; }), "lower-case hex");
  ExpectRefused(with([](Json& n) { n["measurement_salt"] = 7; }),
                "node_state.measurement_salt is not a string");
  ExpectRefused(with([](Json& n) {
                  n["mac"] = Json::array({1, 2});
                }),
                "node_state.mac is not a string");
  ExpectRefused([](Json& j) { j["tokens"]["0"]["node_state"] = std::string(kSaltHex); },
                "token 0 node_state is not a JSON object");
  ExpectRefused([](Json& j) { j["tokens"]["0"]["node_state"] = nullptr; },
                "token 0 node_state is not a JSON object");
}

TEST(Luks2Profile, RefusesOtherMetadataSizesAndRequirements) {
  ExpectRefused([](Json& j) { j["config"]["json_size"] = "4096"; }, "json_size=4096");
  ExpectRefused(
      [](Json& j) {
        j["config"]["requirements"] = Json{{"mandatory", {"online-reencrypt"}}};
      },
      "requirements");
  ExpectRefused([](Json& j) { j["config"]["flags"] = Json::array({"allow-discards"}); },
                "config.flags");
}

TEST(Luks2Profile, RefusesMalformedMetadata) {
  for (std::string_view text : {"", "{", "[]", "null", "{\"keyslots\":{}}", "\"x\""}) {
    auto facts = CheckLuks2Metadata(text, kUuid);
    ASSERT_FALSE(facts.ok()) << text;
    EXPECT_EQ(facts.status().code(), absl::StatusCode::kFailedPrecondition);
  }
  Json j = Fixture();
  j["unknown"] = 1;
  EXPECT_FALSE(Check(j).ok());
  EXPECT_FALSE(Check(Fixture(), "not-a-uuid").ok());
}

Luks1Header GoodLuks1() {
  Luks1Header h;
  h.uuid = std::string(kUuid);
  h.cipher = "aes";
  h.cipher_mode = "xts-plain64";
  h.hash = "sha256";
  h.volume_key_size = 64;
  h.data_offset = 4096 * 512;
  h.device_size = 64 * 1024 * 1024;
  h.active_keyslots = 1;
  h.keyslot0_active = true;
  h.keyslot0_offset = 4096;
  h.keyslot0_length = 258048;
  return h;
}

TEST(Luks1Profile, AcceptsCryptsetupAndQemuLayouts) {
  auto facts = CheckLuks1Header(GoodLuks1());
  ASSERT_TRUE(facts.ok()) << facts.status();
  EXPECT_EQ(facts->sector_size, 512u);
  EXPECT_EQ(facts->key_id, kUuid);
  Luks1Header qemu = GoodLuks1();
  qemu.data_offset = 4040 * 512;  // qemu-img packs the keyslots without 1 MiB alignment
  EXPECT_TRUE(CheckLuks1Header(qemu).ok());
}

TEST(Luks1Profile, RefusesEachBrokenRule) {
  struct Case {
    std::function<void(Luks1Header&)> mutate;
    std::string_view text;
  };
  const Case cases[] = {
      {[](Luks1Header& h) {
         h.cipher = "cipher_null";
         h.cipher_mode = "ecb";
       },
       "cipher_null-ecb"},
      {[](Luks1Header& h) { h.cipher_mode = "cbc-essiv:sha256"; }, "cbc-essiv"},
      {[](Luks1Header& h) { h.volume_key_size = 32; }, "32 bytes"},
      {[](Luks1Header& h) { h.hash = "sha1"; }, "sha1"},
      {[](Luks1Header& h) { h.active_keyslots = 2; }, "2 active keyslots"},
      {[](Luks1Header& h) { h.keyslot0_active = false; }, "keyslot 0 is off"},
      {[](Luks1Header& h) { h.keyslot0_offset = 0; }, "overlaps"},
      {[](Luks1Header& h) { h.data_offset = 8 * 512; }, "overlaps"},
      {[](Luks1Header& h) { h.data_offset = 4097 * 512; }, "not 4 KiB-aligned"},
      {[](Luks1Header& h) { h.device_size = h.data_offset; }, "beyond the device"},
  };
  for (const Case& c : cases) {
    Luks1Header h = GoodLuks1();
    c.mutate(h);
    auto facts = CheckLuks1Header(h);
    ASSERT_FALSE(facts.ok()) << c.text;
    EXPECT_THAT(StatusMessage(facts.status()), HasSubstr(std::string(c.text)));
  }
}

}  // namespace
}  // namespace keywarden::volume
