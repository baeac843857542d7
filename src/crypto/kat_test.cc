// Known-answer tests for the crypto primitives, run from the public vector files in
// ../shared/vectors (see its README.md): Wycheproof, RFC 5869 / 3394 / 5649, NIST CAVP SP 800-38F
// key wrap and XTSVS, and the IEEE 1619-2007 XTS vectors as Botan ships them. No vector is typed
// in here. Behaviour and negative tests that need no vectors are in primitives_test.cc.
//
// Every vector file's test counts the cases it runs and the cases it skips and asserts both
// numbers, so a changed vector file or a skip condition that quietly widens fails loudly.

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keywarden/crypto/aes_gcm.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/key_wrap.h"
#include "keywarden/crypto/x25519.h"
#include "keywarden/crypto/xts.h"
#include "keywarden/secret_bytes.h"
#include "tests/vectors.h"

namespace keywarden::crypto {
namespace {

using ::keywarden::testing::Hex;
using ::keywarden::testing::LoadJson;
using ::keywarden::testing::ReadText;
using ::keywarden::testing::SecretHex;
using Json = ::nlohmann::json;
using Bytes = std::vector<uint8_t>;
using Tweak = std::array<uint8_t, kXtsTweakSize>;
using Padding = AesKeyWrap::Padding;

const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

// --- Shared helpers --------------------------------------------------------------------------

// HexOf renders bytes as lower-case hex, so that a mismatch prints readably and upper-case
// (Botan) and lower-case (Wycheproof, CAVP) vectors compare equal.
std::string HexOf(std::span<const uint8_t> bytes) { return HexEncode(bytes); }
std::string HexOf(const SecretBytes& secret) { return HexEncode(secret.Reveal(kToken)); }

Bytes Concat(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  Bytes out(a.begin(), a.end());
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

bool AllZero(std::span<const uint8_t> bytes) {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

// EqualHalves reports whether an XTS key is Key1 == Key2 (which AesXts refuses).
bool EqualHalves(std::span<const uint8_t> key) {
  const size_t half = key.size() / 2;
  return std::equal(key.begin(), key.begin() + half, key.begin() + half, key.end());
}

std::optional<uint64_t> ParseUint64(std::string_view text) {
  uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

// Plain64Tweak is dm-crypt's plain64 IV: the sector number as 64-bit little-endian, zero-padded
// to 16 bytes. NIST XTSVS uses the same encoding for DataUnitSeqNumber.
Tweak Plain64Tweak(uint64_t sector) {
  Tweak tweak{};
  for (size_t b = 0; b < 8; ++b) tweak[b] = static_cast<uint8_t>(sector >> (8 * b));
  return tweak;
}

// --- Wycheproof ------------------------------------------------------------------------------

enum class Outcome { kRun, kSkipped };

struct Counts {
  int run = 0;
  int skipped = 0;
};

Json LoadWycheproof(std::string_view name) {
  return LoadJson(std::string("wycheproof/testvectors_v1/") + std::string(name));
}

Bytes HexField(const Json& j, const std::string& name) {
  return Hex(j.at(name).get<std::string>());
}
SecretBytes SecretField(const Json& j, const std::string& name) {
  return SecretHex(j.at(name).get<std::string>());
}

std::string ResultOf(const Json& test) { return test.at("result").get<std::string>(); }

bool HasFlag(const Json& test, std::string_view flag) {
  for (const Json& f : test.at("flags")) {
    if (f.get<std::string>() == flag) return true;
  }
  return false;
}

// ForEachWycheproofTest calls `check(group, test)` for every test of a Wycheproof v1 file, with
// the tcId in the failure trace, and tallies the Outcome each call returns.
Counts ForEachWycheproofTest(const Json& doc,
                             const std::function<Outcome(const Json&, const Json&)>& check) {
  Counts counts;
  for (const Json& group : doc.at("testGroups")) {
    for (const Json& test : group.at("tests")) {
      SCOPED_TRACE(::testing::Message()
                   << "tcId " << test.at("tcId").get<int>() << " ("
                   << test.at("comment").get<std::string>() << ", " << ResultOf(test) << ")");
      ++(check(group, test) == Outcome::kRun ? counts.run : counts.skipped);
    }
  }
  return counts;
}

// ExpectCounts checks the run and skipped tallies against the constants the test states, and
// that together they cover every test the file declares.
void ExpectCounts(const Json& doc, const Counts& counts, int expected_run, int expected_skipped) {
  EXPECT_EQ(counts.run, expected_run);
  EXPECT_EQ(counts.skipped, expected_skipped);
  EXPECT_EQ(counts.run + counts.skipped, doc.at("numberOfTests").get<int>());
}

// ExpectHkdf derives `size` bytes three ways (HkdfSha256; HkdfSha256Extract + Expander::Expand;
// Expander::ExpandParts with `info` split in two). With `okm` all three must give it; without,
// all three must be refused (only the output length can make HKDF fail).
void ExpectHkdf(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                std::span<const uint8_t> info, size_t size,
                std::optional<std::span<const uint8_t>> okm) {
  const auto one_shot = HkdfSha256(ikm, salt, info, size);
  const auto prk = HkdfSha256Extract(salt, ikm);
  ASSERT_TRUE(prk.ok()) << prk.status();
  const auto expander = HkdfSha256Expander::New(*prk);
  ASSERT_TRUE(expander.ok()) << expander.status();
  const auto expanded = (*expander)->Expand(info, size);
  const size_t split = info.size() / 2;
  const auto parts = (*expander)->ExpandParts({info.first(split), info.subspan(split)}, size);
  if (!okm.has_value()) {
    EXPECT_EQ(one_shot.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(expanded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(parts.status().code(), absl::StatusCode::kInvalidArgument);
    return;
  }
  ASSERT_TRUE(one_shot.ok()) << one_shot.status();
  ASSERT_TRUE(expanded.ok()) << expanded.status();
  ASSERT_TRUE(parts.ok()) << parts.status();
  EXPECT_EQ(HexOf(*one_shot), HexOf(*okm));
  EXPECT_EQ(HexOf(*expanded), HexOf(*okm));
  EXPECT_EQ(HexOf(*parts), HexOf(*okm));
}

TEST(WycheproofTest, HkdfSha256) {
  const Json doc = LoadWycheproof("hkdf_sha256_test.json");
  ASSERT_TRUE(doc.is_object());
  const Counts counts = ForEachWycheproofTest(doc, [](const Json&, const Json& test) {
    const Bytes okm = HexField(test, "okm");
    std::optional<std::span<const uint8_t>> expected;
    // "invalid" cases (flag SizeTooLarge) ask for 8161 > 255 * HashLen bytes.
    if (ResultOf(test) == "valid") expected = okm;
    ExpectHkdf(HexField(test, "ikm"), HexField(test, "salt"), HexField(test, "info"),
               test.at("size").get<size_t>(), expected);
    return Outcome::kRun;
  });
  // No skips: every size in the file, 20 to 8161, is either in [1, 8160] or must be refused.
  ExpectCounts(doc, counts, 86, 0);
}

// ExpectWycheproofKeyWrap runs one keywrap_test_schema_v1 case (key, msg, ct).
//  - valid: Wrap(msg) == ct and Unwrap(ct) == msg.
//  - invalid: Unwrap(ct) is refused; Wrap(msg) is refused exactly when msg is not key data the
//    mode can wrap, and otherwise does not give ct.
//  - acceptable (aes_wrap ShortKey only, an 8-byte key as one 16-byte block): refused both ways.
//    RFC 3394 §2 and SP 800-38F §6.2 KW need at least two semiblocks; keys that short belong in
//    KWP, which Keywarden offers as Padding::kRfc5649.
// Returns true for an acceptable case.
bool ExpectWycheproofKeyWrap(const Json& test, Padding padding) {
  const auto wrapper = AesKeyWrap::New(SecretField(test, "key"), padding);
  EXPECT_TRUE(wrapper.ok()) << wrapper.status();
  if (!wrapper.ok()) return false;
  const Bytes msg = HexField(test, "msg");
  const Bytes ct = HexField(test, "ct");
  const auto wrapped = (*wrapper)->Wrap(msg);
  const auto unwrapped = (*wrapper)->Unwrap(ct);
  const std::string result = ResultOf(test);
  if (result == "valid") {
    EXPECT_TRUE(wrapped.ok()) << wrapped.status();
    EXPECT_TRUE(unwrapped.ok()) << unwrapped.status();
    if (wrapped.ok()) {
      EXPECT_EQ(HexOf(*wrapped), HexOf(ct));
    }
    if (unwrapped.ok()) {
      EXPECT_EQ(HexOf(*unwrapped), HexOf(msg));
    }
    return false;
  }
  EXPECT_FALSE(unwrapped.ok()) << "unwrap of an " << result << " case must be refused";
  if (result == "acceptable") {
    EXPECT_TRUE(HasFlag(test, "ShortKey"));
    EXPECT_FALSE(wrapped.ok());
    return true;
  }
  EXPECT_EQ(result, "invalid");
  const bool wrappable =
      padding == Padding::kNone ? msg.size() >= 16 && msg.size() % 8 == 0 : !msg.empty();
  EXPECT_EQ(wrapped.ok(), wrappable);
  if (wrapped.ok()) {
    EXPECT_NE(HexOf(*wrapped), HexOf(ct));
  }
  return false;
}

TEST(WycheproofTest, AesKeyWrap) {
  const Json doc = LoadWycheproof("aes_wrap_test.json");
  ASSERT_TRUE(doc.is_object());
  int acceptable = 0;
  const Counts counts = ForEachWycheproofTest(doc, [&](const Json&, const Json& test) {
    if (ExpectWycheproofKeyWrap(test, Padding::kNone)) ++acceptable;
    return Outcome::kRun;
  });
  // No skips: all KEKs are 128, 192 or 256 bits, and every invalid size must be refused.
  ExpectCounts(doc, counts, 165, 0);
  // tcId 12, 54, 109: "wrapping an 8 byte key", refused by policy (see above).
  EXPECT_EQ(acceptable, 3);
}

TEST(WycheproofTest, AesKeyWrapWithPadding) {
  const Json doc = LoadWycheproof("aes_kwp_test.json");
  ASSERT_TRUE(doc.is_object());
  int acceptable = 0;
  const Counts counts = ForEachWycheproofTest(doc, [&](const Json&, const Json& test) {
    if (ExpectWycheproofKeyWrap(test, Padding::kRfc5649)) ++acceptable;
    return Outcome::kRun;
  });
  // No skips: all KEKs are 128, 192 or 256 bits and all valid key data is 1 byte or longer.
  ExpectCounts(doc, counts, 254, 0);
  EXPECT_EQ(acceptable, 0);
}

// ExpectWycheproofGcm runs one aead_test_schema_v1 case with a 12-byte IV and a 16-byte tag.
void ExpectWycheproofGcm(const AesGcm& gcm, const Json& test) {
  const Bytes iv = HexField(test, "iv");
  const Bytes aad = HexField(test, "aad");
  const Bytes msg = HexField(test, "msg");
  const Bytes sealed = Concat(HexField(test, "ct"), HexField(test, "tag"));
  const auto opened = gcm.DecryptWithNonce(iv, sealed, aad);
  if (ResultOf(test) != "valid") {
    EXPECT_EQ(ResultOf(test), "invalid");
    EXPECT_FALSE(opened.ok()) << "a forged or modified ciphertext was accepted";
    return;
  }
  const auto encrypted = gcm.EncryptWithNonce(iv, msg, aad);
  ASSERT_TRUE(encrypted.ok()) << encrypted.status();
  EXPECT_EQ(HexOf(*encrypted), HexOf(sealed));
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(HexOf(*opened), HexOf(msg));
}

TEST(WycheproofTest, AesGcm) {
  const Json doc = LoadWycheproof("aes_gcm_test.json");
  ASSERT_TRUE(doc.is_object());
  const Counts counts = ForEachWycheproofTest(doc, [](const Json& group, const Json& test) {
    const auto gcm = AesGcm::New(SecretField(test, "key"));
    EXPECT_TRUE(gcm.ok()) << gcm.status();
    if (!gcm.ok()) return Outcome::kRun;
    const Bytes iv = HexField(test, "iv");
    if (iv.size() != AesGcm::kNonceSize) {
      // The skip is an API limit, so the API must say so rather than compute something else.
      const Bytes sealed = Concat(HexField(test, "ct"), HexField(test, "tag"));
      EXPECT_FALSE((*gcm)->EncryptWithNonce(iv, HexField(test, "msg"), {}).ok());
      EXPECT_FALSE((*gcm)->DecryptWithNonce(iv, sealed, HexField(test, "aad")).ok());
      return Outcome::kSkipped;
    }
    if (group.at("tagSize").get<size_t>() != 8 * AesGcm::kTagSize) return Outcome::kSkipped;
    ExpectWycheproofGcm(**gcm, test);
    return Outcome::kRun;
  });
  // Run: the ivSize 96 groups for 128-, 192- and 256-bit keys (67 + 64 + 66 tests).
  // Skipped: AesGcm takes only 96-bit nonces (the length SP 800-38D §5.2.1.1 recommends; other
  // lengths are hashed into the counter), so the 119 tests with IVs of 0, 1, 2, 4, 6, 8, 10, 15,
  // 16, 20, 32, 64, 128 or 257 bytes are skipped, after checking that the API refuses them.
  // AesGcm also has only 128-bit tags, but every group in the file uses tagSize 128.
  ExpectCounts(doc, counts, 197, 119);
}

TEST(WycheproofTest, X25519) {
  const Json doc = LoadWycheproof("x25519_test.json");
  ASSERT_TRUE(doc.is_object());
  // How "acceptable" results are treated, by flag. RFC 7748 lets an implementation either
  // compute or refuse these; Keywarden's choice:
  //  - ZeroSharedSecret (it always comes with LowOrderPublic, sometimes with SmallPublicKey,
  //    NonCanonicalPublic, SpecialPublicKey, EdgeCaseMultiplication or Twist): the result is all
  //    zero and SharedSecret must refuse it (RFC 7748 §6.1 check, WireGuard does the same).
  //  - Twist, NonCanonicalPublic, SpecialPublicKey, EdgeCaseMultiplication, EdgeCaseShared, Ktv
  //    without ZeroSharedSecret: computed exactly as RFC 7748 §5 defines (non-canonical u
  //    reduced mod p, high bit masked; twist points multiplied), so the output must equal
  //    `shared`.
  int acceptable_refused = 0;
  int acceptable_computed = 0;
  const Counts counts = ForEachWycheproofTest(doc, [&](const Json&, const Json& test) {
    const auto pair = X25519KeyPair::FromPrivateKey(SecretField(test, "private"));
    EXPECT_TRUE(pair.ok()) << pair.status();
    if (!pair.ok()) return Outcome::kRun;
    const Bytes expected = HexField(test, "shared");
    const auto shared = pair->SharedSecret(HexField(test, "public"));
    const std::string result = ResultOf(test);
    const bool must_refuse =
        result == "invalid" || (result == "acceptable" && HasFlag(test, "ZeroSharedSecret"));
    if (must_refuse) {
      EXPECT_EQ(shared.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_TRUE(result == "invalid" || AllZero(expected));
      if (result == "acceptable") ++acceptable_refused;
    } else {
      EXPECT_FALSE(AllZero(expected)) << "an all-zero result without ZeroSharedSecret";
      EXPECT_TRUE(shared.ok()) << shared.status();
      if (shared.ok()) {
        EXPECT_EQ(HexOf(*shared), HexOf(expected));
      }
      if (result == "acceptable") ++acceptable_computed;
    }
    return Outcome::kRun;
  });
  // No skips: every case has a 32-byte private and public key and is either computed or refused.
  // 264 valid cases are computed; of the 254 acceptable ones, 31 carry ZeroSharedSecret and are
  // refused and 223 (Twist, NonCanonicalPublic, SpecialPublicKey, ...) are computed.
  ExpectCounts(doc, counts, 518, 0);
  EXPECT_EQ(acceptable_refused, 31);
  EXPECT_EQ(acceptable_computed, 223);
}

TEST(WycheproofTest, HmacSha256) {
  const Json doc = LoadWycheproof("hmac_sha256_test.json");
  ASSERT_TRUE(doc.is_object());
  const Counts counts = ForEachWycheproofTest(doc, [](const Json&, const Json& test) {
    const SecretBytes key = SecretField(test, "key");
    const Bytes msg = HexField(test, "msg");
    const Bytes tag = HexField(test, "tag");
    if (key.size() < 16) {
      EXPECT_FALSE(HmacSha256::New(key).ok());
      return Outcome::kSkipped;
    }
    const auto mac = HmacSha256::New(key);
    EXPECT_TRUE(mac.ok()) << mac.status();
    if (!mac.ok()) return Outcome::kRun;
    const absl::Status verified = (*mac)->Verify(tag, msg);
    if (tag.size() < kHmacSha256MinTagSize) {
      EXPECT_FALSE(verified.ok());
      return Outcome::kSkipped;
    }
    if (ResultOf(test) != "valid") {
      EXPECT_EQ(ResultOf(test), "invalid");
      EXPECT_FALSE(verified.ok()) << "a modified tag was accepted";
      return Outcome::kRun;
    }
    EXPECT_TRUE(verified.ok()) << verified;
    const auto full = (*mac)->Compute(msg);
    EXPECT_TRUE(full.ok()) << full.status();
    if (full.ok()) {
      EXPECT_EQ(HexOf(std::span<const uint8_t>(*full).first(tag.size())), HexOf(tag));
    }
    return Outcome::kRun;
  });
  // Skipped: none. HmacSha256 refuses keys under 16 bytes and tags under 16 bytes, and such
  // cases would be skipped (after checking the refusal), but this file has none: its keys are
  // 16, 32 or 65 bytes and its tags 16 or 32 bytes.
  ExpectCounts(doc, counts, 174, 0);
}

// --- RFC vectors ------------------------------------------------------------------------------

TEST(RfcTest, Rfc5869HkdfSha256) {
  const Json doc = LoadJson("rfc/rfc5869_hkdf.json");
  ASSERT_TRUE(doc.is_object());
  Counts counts;
  for (const Json& test : doc.at("tests")) {
    SCOPED_TRACE(::testing::Message() << "RFC 5869 " << test.at("section").get<std::string>());
    if (test.at("hash").get<std::string>() != "SHA-256") {
      ++counts.skipped;
      continue;
    }
    ++counts.run;
    // A null salt is "not provided", which HKDF treats as HashLen zeros (RFC 5869 §2.2); the
    // API takes that as an empty span.
    const Bytes salt = test.at("salt").is_null() ? Bytes() : HexField(test, "salt");
    const Bytes ikm = HexField(test, "ikm");
    const auto prk = HkdfSha256Extract(salt, ikm);
    ASSERT_TRUE(prk.ok()) << prk.status();
    EXPECT_EQ(HexOf(*prk), HexOf(HexField(test, "prk")));
    const Bytes okm = HexField(test, "okm");
    ExpectHkdf(ikm, salt, HexField(test, "info"), test.at("L").get<size_t>(),
               std::span<const uint8_t>(okm));
  }
  // Run: A.1-A.3 (SHA-256). Skipped: A.4-A.7 use SHA-1, which Keywarden does not implement.
  EXPECT_EQ(counts.run, 3);
  EXPECT_EQ(counts.skipped, 4);
  EXPECT_EQ(counts.run + counts.skipped, doc.at("numberOfTests").get<int>());
}

// ExpectWrapBothWays checks Wrap(key) == wrapped and Unwrap(wrapped) == key.
void ExpectWrapBothWays(const SecretBytes& kek, Padding padding, std::span<const uint8_t> key,
                        std::span<const uint8_t> wrapped) {
  const auto wrapper = AesKeyWrap::New(kek, padding);
  ASSERT_TRUE(wrapper.ok()) << wrapper.status();
  const auto out = (*wrapper)->Wrap(key);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(HexOf(*out), HexOf(wrapped));
  const auto back = (*wrapper)->Unwrap(wrapped);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(HexOf(*back), HexOf(key));
}

int RunRfcKeyWrapFile(std::string_view file, Padding padding) {
  const Json doc = LoadJson(file);
  if (!doc.is_object()) return 0;
  int run = 0;
  for (const Json& test : doc.at("tests")) {
    SCOPED_TRACE(::testing::Message() << file << " tcId " << test.at("tcId").get<int>());
    ExpectWrapBothWays(SecretField(test, "kek"), padding, HexField(test, "key"),
                       HexField(test, "wrapped"));
    ++run;
  }
  EXPECT_EQ(run, doc.at("numberOfTests").get<int>());
  return run;
}

TEST(RfcTest, Rfc3394AesKeyWrap) {
  EXPECT_EQ(RunRfcKeyWrapFile("rfc/rfc3394_aes_kw.json", Padding::kNone), 6);  // §4.1-§4.6
}

TEST(RfcTest, Rfc5649AesKeyWrapWithPadding) {
  // §6: the 20-octet (two-semiblock path) and the 7-octet (single AES block) example.
  EXPECT_EQ(RunRfcKeyWrapFile("rfc/rfc5649_aes_kwp.json", Padding::kRfc5649), 2);
}

// --- NIST CAVP and Botan .vec text files -------------------------------------------------------

// VectorRecord is one record of a NIST CAVP .rsp/.txt file or a Botan .vec file.
struct VectorRecord {
  std::string section;  // the last "[...]" header, without brackets
  std::string label;    // the last "# ..." comment line before the record, without "# "
  std::map<std::string, std::string, std::less<>> fields;
  bool fail = false;  // CAVP decrypt files mark a record whose input must be refused by "FAIL"

  bool Has(std::string_view name) const { return fields.find(name) != fields.end(); }
  const std::string& Field(std::string_view name) const {
    static const std::string kMissing;
    const auto it = fields.find(name);
    if (it == fields.end()) {
      ADD_FAILURE() << "vector record has no field " << name;
      return kMissing;
    }
    return it->second;
  }
};

// ParseVectorRecords splits CAVP / Botan vector text into records. A line `first_field = v`
// starts a record; later `name = value` lines add to it; a bare `FAIL` line marks it; `[name]`
// sets the section; `#` lines are comments. LF, CRLF and CR line ends and surrounding blanks are
// accepted (the XTSVS files use CRLF). Any other line fails the test.
std::vector<VectorRecord> ParseVectorRecords(std::string_view text, std::string_view first_field) {
  constexpr std::string_view kBlank = " \t";
  std::vector<VectorRecord> records;
  std::string section;
  std::string label;
  size_t line_number = 0;
  while (!text.empty()) {
    const size_t end = std::min(text.find_first_of("\r\n"), text.size());
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end);
    if (text.starts_with("\r\n")) {
      text.remove_prefix(2);
    } else if (!text.empty()) {
      text.remove_prefix(1);
    }
    ++line_number;
    line.remove_prefix(std::min(line.find_first_not_of(kBlank), line.size()));
    line.remove_suffix(line.size() - std::min(line.find_last_not_of(kBlank) + 1, line.size()));
    if (line.empty()) continue;
    if (line.front() == '#') {
      line.remove_prefix(1);
      label = std::string(line.substr(std::min(line.find_first_not_of(kBlank), line.size())));
      continue;
    }
    if (line.front() == '[' && line.back() == ']') {
      section = std::string(line.substr(1, line.size() - 2));
      continue;
    }
    if (line == "FAIL" && !records.empty()) {
      records.back().fail = true;
      continue;
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos) {
      ADD_FAILURE() << "unparsable vector line " << line_number << ": " << line;
      continue;
    }
    std::string_view name = line.substr(0, eq);
    std::string_view value = line.substr(eq + 1);
    name.remove_suffix(name.size() - std::min(name.find_last_not_of(kBlank) + 1, name.size()));
    value.remove_prefix(std::min(value.find_first_not_of(kBlank), value.size()));
    if (name == first_field) records.push_back({section, label, {}, false});
    if (records.empty()) {
      ADD_FAILURE() << "vector line " << line_number << " precedes the first record: " << line;
      continue;
    }
    records.back().fields.emplace(std::string(name), std::string(value));
  }
  return records;
}

std::vector<VectorRecord> LoadVectorRecords(std::string_view file, std::string_view first_field) {
  return ParseVectorRecords(ReadText(file), first_field);
}

// --- NIST CAVP SP 800-38F key wrap ------------------------------------------------------------

struct KeyWrapTally {
  int records = 0;
  int matched = 0;  // wrapped to C and unwrapped to P
  int refused = 0;  // FAIL records whose unwrap was refused
};

// RunCavpKeyWrap runs a KW/KWP AE or AD file. AE records (K, P -> C) and AD records (K, C -> P)
// must both wrap P to C and unwrap C to P; AD records marked FAIL must be refused by Unwrap.
KeyWrapTally RunCavpKeyWrap(std::string_view file, Padding padding) {
  KeyWrapTally tally;
  for (const VectorRecord& record : LoadVectorRecords(file, "COUNT")) {
    SCOPED_TRACE(::testing::Message()
                 << file << " [" << record.section << "] COUNT " << record.Field("COUNT"));
    ++tally.records;
    const SecretBytes kek = SecretHex(record.Field("K"));
    const Bytes wrapped = Hex(record.Field("C"));
    if (record.fail) {
      const auto wrapper = AesKeyWrap::New(kek, padding);
      EXPECT_TRUE(wrapper.ok()) << wrapper.status();
      if (wrapper.ok()) {
        EXPECT_FALSE((*wrapper)->Unwrap(wrapped).ok()) << "a FAIL record was unwrapped";
        ++tally.refused;
      }
      continue;
    }
    const Bytes key = Hex(record.Field("P"));
    // The section header is "PLAINTEXT LENGTH = <bits>": a check on the parser and the file.
    EXPECT_EQ(record.section, "PLAINTEXT LENGTH = " + std::to_string(8 * key.size()));
    ExpectWrapBothWays(kek, padding, key, wrapped);
    ++tally.matched;
  }
  return tally;
}

// Each file: 5 plaintext lengths x 100 records, AES-256 KEKs, nothing skipped.
TEST(NistCavpKeyWrapTest, KwAe256) {
  const KeyWrapTally tally = RunCavpKeyWrap("nist-cavp/keywrap/KW_AE_256.txt", Padding::kNone);
  EXPECT_EQ(tally.records, 500);
  EXPECT_EQ(tally.matched, 500);
  EXPECT_EQ(tally.refused, 0);
}

TEST(NistCavpKeyWrapTest, KwAd256) {
  const KeyWrapTally tally = RunCavpKeyWrap("nist-cavp/keywrap/KW_AD_256.txt", Padding::kNone);
  EXPECT_EQ(tally.records, 500);
  EXPECT_EQ(tally.matched, 400);
  EXPECT_EQ(tally.refused, 100);  // 20 FAIL per 100
}

TEST(NistCavpKeyWrapTest, KwpAe256) {
  const KeyWrapTally tally = RunCavpKeyWrap("nist-cavp/keywrap/KWP_AE_256.txt", Padding::kRfc5649);
  EXPECT_EQ(tally.records, 500);
  EXPECT_EQ(tally.matched, 500);
  EXPECT_EQ(tally.refused, 0);
}

TEST(NistCavpKeyWrapTest, KwpAd256) {
  const KeyWrapTally tally = RunCavpKeyWrap("nist-cavp/keywrap/KWP_AD_256.txt", Padding::kRfc5649);
  EXPECT_EQ(tally.records, 500);
  EXPECT_EQ(tally.matched, 400);
  EXPECT_EQ(tally.refused, 100);  // 20 FAIL per 100
}

// --- AES-XTS: NIST CAVP XTSVS and IEEE 1619-2007 ---------------------------------------------

// ExpectXtsBothWays checks Encrypt(tweak, pt) == ct, the same in place, and Decrypt(tweak, ct)
// == pt.
void ExpectXtsBothWays(const AesXts& xts, const Tweak& tweak, std::span<const uint8_t> pt,
                       std::span<const uint8_t> ct) {
  ASSERT_EQ(pt.size(), ct.size());
  Bytes out(pt.size());
  ASSERT_TRUE(xts.Encrypt(tweak, pt, out).ok());
  EXPECT_EQ(HexOf(out), HexOf(ct));
  Bytes in_place(pt.begin(), pt.end());
  ASSERT_TRUE(xts.Encrypt(tweak, in_place, in_place).ok());
  EXPECT_EQ(HexOf(in_place), HexOf(ct));
  ASSERT_TRUE(xts.Decrypt(tweak, ct, out).ok());
  EXPECT_EQ(HexOf(out), HexOf(pt));
}

// CavpXtsTweak returns a record's tweak: `i` (hex) or, in the "data unit seq no" form,
// DataUnitSeqNumber as a 16-byte little-endian integer.
std::optional<Tweak> CavpXtsTweak(const VectorRecord& record) {
  Tweak tweak{};
  if (record.Has("i")) {
    const Bytes i = Hex(record.Field("i"));
    EXPECT_EQ(i.size(), kXtsTweakSize);
    if (i.size() != kXtsTweakSize) return std::nullopt;
    std::copy(i.begin(), i.end(), tweak.begin());
    return tweak;
  }
  const std::optional<uint64_t> seq = ParseUint64(record.Field("DataUnitSeqNumber"));
  EXPECT_TRUE(seq.has_value());
  if (!seq.has_value()) return std::nullopt;
  return Plain64Tweak(*seq);
}

struct XtsTally {
  int encrypt = 0;       // [ENCRYPT] records run
  int decrypt = 0;       // [DECRYPT] records run
  int partial_byte = 0;  // skipped: DataUnitLen % 8 != 0
  int equal_halves = 0;  // skipped: Key1 == Key2
};

// RunCavpXts runs an XTSVS response file. Both directions are checked for every record; the
// section only decides which tally it counts in.
XtsTally RunCavpXts(std::string_view file) {
  XtsTally tally;
  for (const VectorRecord& record : LoadVectorRecords(file, "COUNT")) {
    SCOPED_TRACE(::testing::Message()
                 << file << " [" << record.section << "] COUNT " << record.Field("COUNT"));
    const std::optional<uint64_t> bits = ParseUint64(record.Field("DataUnitLen"));
    EXPECT_TRUE(bits.has_value());
    // Bit-granular data units cannot be expressed in a byte-oriented API.
    if (!bits.has_value() || *bits % 8 != 0) {
      ++tally.partial_byte;
      continue;
    }
    const SecretBytes key = SecretHex(record.Field("Key"));
    if (EqualHalves(key.Reveal(kToken))) {
      // AesXts refuses Key1 == Key2 (IEEE 1619-2018 §5.1, SP 800-38E); check that it does.
      EXPECT_FALSE(AesXts::New(key).ok());
      ++tally.equal_halves;
      continue;
    }
    const std::optional<Tweak> tweak = CavpXtsTweak(record);
    const auto xts = AesXts::New(key);
    EXPECT_TRUE(xts.ok()) << xts.status();
    if (!tweak.has_value() || !xts.ok()) continue;
    const Bytes pt = Hex(record.Field("PT"));
    const Bytes ct = Hex(record.Field("CT"));
    EXPECT_EQ(8 * pt.size(), *bits);
    ExpectXtsBothWays(**xts, *tweak, pt, ct);
    if (record.section == "ENCRYPT") {
      ++tally.encrypt;
    } else {
      EXPECT_EQ(record.section, "DECRYPT");
      ++tally.decrypt;
    }
  }
  return tally;
}

// XTS-AES-128 files: per section 500 records with data units of 128, 256 (x2), 200 and 130
// bits; the 100 records of 130 bits per section are skipped (not a whole number of bytes).
// XTS-AES-256 files: per section 500 records of 256, 384 (x2), 140 and 250 bits; the 200
// records of 140 and 250 bits per section are skipped for the same reason.
// No record in the four files has equal key halves.

TEST(NistCavpXtsTest, DataUnitSeqNoAes128) {
  const XtsTally t = RunCavpXts("nist-cavp/xts/tweak-dataunitseqno/XTSGenAES128.rsp");
  EXPECT_EQ(t.encrypt, 400);
  EXPECT_EQ(t.decrypt, 400);
  EXPECT_EQ(t.partial_byte, 200);
  EXPECT_EQ(t.equal_halves, 0);
}

TEST(NistCavpXtsTest, DataUnitSeqNoAes256) {
  const XtsTally t = RunCavpXts("nist-cavp/xts/tweak-dataunitseqno/XTSGenAES256.rsp");
  EXPECT_EQ(t.encrypt, 300);
  EXPECT_EQ(t.decrypt, 300);
  EXPECT_EQ(t.partial_byte, 400);
  EXPECT_EQ(t.equal_halves, 0);
}

TEST(NistCavpXtsTest, HexTweakAes128) {
  const XtsTally t = RunCavpXts("nist-cavp/xts/tweak-128hexstr/XTSGenAES128.rsp");
  EXPECT_EQ(t.encrypt, 400);
  EXPECT_EQ(t.decrypt, 400);
  EXPECT_EQ(t.partial_byte, 200);
  EXPECT_EQ(t.equal_halves, 0);
}

TEST(NistCavpXtsTest, HexTweakAes256) {
  const XtsTally t = RunCavpXts("nist-cavp/xts/tweak-128hexstr/XTSGenAES256.rsp");
  EXPECT_EQ(t.encrypt, 300);
  EXPECT_EQ(t.decrypt, 300);
  EXPECT_EQ(t.partial_byte, 400);
  EXPECT_EQ(t.equal_halves, 0);
}

// Botan's xts.vec: the IEEE 1619-2007 vectors 1-19 plus NIST, OpenSSL-generated and Wycheproof
// vectors, in [AES-128/XTS] and [AES-256/XTS] (the other ciphers' sections are ignored). Every
// record is checked through AesXts; those with 512-byte data units and a tweak that is a 64-bit
// little-endian number (IEEE vectors 4-14 and 19, and one more) are also checked through
// XtsSectorCipher with 512-byte sectors, which is a known answer for dm-crypt's plain64.
TEST(BotanXtsTest, Ieee1619AndMore) {
  int run = 0;
  int sector_kats = 0;
  std::vector<std::string> refused;
  for (const VectorRecord& record : LoadVectorRecords("botan/modes/xts.vec", "Key")) {
    if (record.section != "AES-128/XTS" && record.section != "AES-256/XTS") continue;
    SCOPED_TRACE(::testing::Message() << "[" << record.section << "] " << record.label);
    const SecretBytes key = SecretHex(record.Field("Key"));
    if (EqualHalves(key.Reveal(kToken))) {
      EXPECT_FALSE(AesXts::New(key).ok()) << "a key with Key1 == Key2 was accepted";
      EXPECT_FALSE(XtsSectorCipher::New(key, 512).ok());
      refused.push_back(record.label);
      continue;
    }
    // A nonce shorter than 16 bytes is zero-padded on the right (Botan's convention).
    const Bytes nonce = Hex(record.Field("Nonce"));
    ASSERT_LE(nonce.size(), kXtsTweakSize);
    Tweak tweak{};
    std::copy(nonce.begin(), nonce.end(), tweak.begin());
    const Bytes in = Hex(record.Field("In"));
    const Bytes out = Hex(record.Field("Out"));
    const auto xts = AesXts::New(key);
    ASSERT_TRUE(xts.ok()) << xts.status();
    ExpectXtsBothWays(**xts, tweak, in, out);
    ++run;

    if (in.size() != 512 || !AllZero(std::span(tweak).subspan(8))) continue;
    uint64_t sector = 0;
    for (size_t b = 0; b < 8; ++b) sector |= uint64_t{tweak[b]} << (8 * b);
    const auto cipher = XtsSectorCipher::New(key, 512);
    ASSERT_TRUE(cipher.ok()) << cipher.status();
    Bytes sectors(in.size());
    ASSERT_TRUE((*cipher)->EncryptSectors(sector, in, sectors).ok());
    EXPECT_EQ(HexOf(sectors), HexOf(out));
    ASSERT_TRUE((*cipher)->DecryptSectors(sector, out, sectors).ok());
    EXPECT_EQ(HexOf(sectors), HexOf(in));
    ++sector_kats;
  }
  // 173 AES-128 + 51 AES-256 records. Only IEEE 1619-2007 vector 1 (all-zero key, so Key1 ==
  // Key2) is not run: AesXts::New must refuse it.
  EXPECT_EQ(run, 223);
  EXPECT_EQ(refused, std::vector<std::string>{"IEEE 1619-2007 VECTOR 1"});
  // IEEE vectors 4-9 and 19 (AES-128), 10-14 (AES-256, up to sector 0xffffffffff) and one more
  // AES-256 vector with sector 0xff.
  EXPECT_EQ(sector_kats, 13);
}

// --- dm-crypt aes-xts-plain64 sectors ---------------------------------------------------------

// PatternBytes returns `n` bytes that are not periodic at any length that matters here (so an
// XTS key made of them has distinct halves).
Bytes PatternBytes(size_t n, uint8_t seed) {
  Bytes out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<uint8_t>(i * 0x9d + seed + (i >> 8));
  return out;
}

// ExpectedSectors encrypts `data` sector by sector with AesXts and plain64 tweaks counted in
// 512-byte units (dm-crypt's default, and LUKS2's).
Bytes ExpectedSectors(const AesXts& xts, size_t sector_size, uint64_t first_sector,
                      std::span<const uint8_t> data) {
  Bytes out(data.size());
  for (size_t i = 0; i < data.size() / sector_size; ++i) {
    EXPECT_TRUE(xts.Encrypt(Plain64Tweak((first_sector + i) * (sector_size / 512)),
                            data.subspan(i * sector_size, sector_size),
                            std::span(out).subspan(i * sector_size, sector_size))
                    .ok());
  }
  return out;
}

TEST(XtsSectorCipherTest, EqualsAesXtsWithPlain64Tweaks) {
  constexpr size_t kSectors = 3;
  // 2^32 - 2 makes the run cross 2^32; 2^40 + 5 is well above it; the last start ends at the
  // largest sector number.
  const uint64_t kFirstSectors[] = {0, 1, 0xFFFF'FFFE, (uint64_t{1} << 40) + 5,
                                    UINT64_MAX / 8 - (kSectors - 1)};
  for (const size_t key_size : {size_t{32}, size_t{64}}) {
    const SecretBytes key(PatternBytes(key_size, 0x3b));
    const auto xts = AesXts::New(key);
    ASSERT_TRUE(xts.ok()) << xts.status();
    for (const size_t sector_size : {size_t{512}, size_t{4096}}) {
      const auto cipher = XtsSectorCipher::New(key, sector_size);
      ASSERT_TRUE(cipher.ok()) << cipher.status();
      EXPECT_EQ((*cipher)->sector_size(), sector_size);
      const Bytes data = PatternBytes(kSectors * sector_size, 0x51);
      for (const uint64_t first : kFirstSectors) {
        SCOPED_TRACE(::testing::Message() << "key " << key_size << " B, sector " << sector_size
                                          << " B, first sector " << first);
        const Bytes expected = ExpectedSectors(**xts, sector_size, first, data);
        Bytes out(data.size());
        ASSERT_TRUE((*cipher)->EncryptSectors(first, data, out).ok());
        for (size_t i = 0; i < kSectors; ++i) {
          EXPECT_TRUE(std::equal(out.begin() + i * sector_size, out.begin() + (i + 1) * sector_size,
                                 expected.begin() + i * sector_size))
              << "sector " << first + i;
        }
        Bytes back(data.size());
        ASSERT_TRUE((*cipher)->DecryptSectors(first, out, back).ok());
        EXPECT_TRUE(back == data);
        Bytes in_place = data;
        ASSERT_TRUE((*cipher)->EncryptSectors(first, in_place, in_place).ok());
        EXPECT_TRUE(in_place == expected);
        ASSERT_TRUE((*cipher)->DecryptSectors(first, in_place, in_place).ok());
        EXPECT_TRUE(in_place == data);
      }
    }
  }
}

// LUKS2 with 4096-byte sectors does not set dm-crypt's iv_large_sectors: the IV still counts
// 512-byte units, so 4096-byte sector k has tweak 8k (the VM tests confirm it against the
// kernel). Equivalently: its bytes are the first XTS unit that eight 512-byte sectors 8k..8k+7
// would start with, stretched to 4096 bytes.
TEST(XtsSectorCipherTest, LargeSectorsCountIvsIn512ByteUnits) {
  const SecretBytes key(PatternBytes(64, 0x17));
  const auto xts = AesXts::New(key);
  const auto cipher4096 = XtsSectorCipher::New(key, 4096);
  ASSERT_TRUE(xts.ok() && cipher4096.ok());
  const Bytes data = PatternBytes(4096, 0x2c);
  for (const uint64_t k : {uint64_t{1}, uint64_t{5}, uint64_t{0x1'0000'0001}}) {
    SCOPED_TRACE(::testing::Message() << "4096-byte sector " << k);
    Bytes out(data.size());
    ASSERT_TRUE((*cipher4096)->EncryptSectors(k, data, out).ok());
    Bytes want(data.size());
    ASSERT_TRUE((*xts)->Encrypt(Plain64Tweak(8 * k), data, want).ok());
    EXPECT_TRUE(out == want);
    Bytes large_iv(data.size());
    ASSERT_TRUE((*xts)->Encrypt(Plain64Tweak(k), data, large_iv).ok());
    EXPECT_FALSE(out == large_iv) << "counted like iv_large_sectors";
  }
  // The largest first sector whose IV fits, and the first that does not.
  Bytes out(data.size());
  EXPECT_TRUE((*cipher4096)->EncryptSectors(UINT64_MAX / 8, data, out).ok());
  EXPECT_FALSE((*cipher4096)->EncryptSectors(UINT64_MAX / 8 + 1, data, out).ok());
}

TEST(XtsSectorCipherTest, RefusesBadSectorSizesAndLengths) {
  const SecretBytes key(PatternBytes(64, 0x3b));
  for (const size_t bad : {size_t{0}, size_t{16}, size_t{256}, size_t{511}, size_t{513},
                           size_t{1024}, size_t{2048}, size_t{4095}, size_t{4097}, size_t{8192}}) {
    EXPECT_FALSE(XtsSectorCipher::New(key, bad).ok()) << "sector size " << bad;
  }
  for (const size_t sector_size : {size_t{512}, size_t{4096}}) {
    SCOPED_TRACE(::testing::Message() << "sector size " << sector_size);
    const auto cipher = XtsSectorCipher::New(key, sector_size);
    ASSERT_TRUE(cipher.ok()) << cipher.status();
    const Bytes data = PatternBytes(2 * sector_size + 16, 0x44);
    Bytes out(data.size());
    for (const size_t length : {size_t{0}, size_t{16}, sector_size - 1, sector_size + 1,
                                sector_size + 16, 2 * sector_size - 8, 2 * sector_size + 16}) {
      const std::span<const uint8_t> in = std::span(data).first(length);
      const std::span<uint8_t> dst = std::span(out).first(length);
      EXPECT_FALSE((*cipher)->EncryptSectors(0, in, dst).ok()) << "length " << length;
      EXPECT_FALSE((*cipher)->DecryptSectors(0, in, dst).ok()) << "length " << length;
    }
    // Whole sectors are accepted, but not an output of another size or a run past 2^64 - 1.
    const std::span<const uint8_t> two = std::span(data).first(2 * sector_size);
    EXPECT_TRUE((*cipher)->EncryptSectors(0, two, std::span(out).first(two.size())).ok());
    EXPECT_FALSE((*cipher)->EncryptSectors(0, two, std::span(out).first(sector_size)).ok());
    const uint64_t last = UINT64_MAX / (sector_size / 512);  // the last sector whose IV fits
    EXPECT_FALSE((*cipher)->EncryptSectors(last, two, std::span(out).first(two.size())).ok());
    EXPECT_TRUE(
        (*cipher)
            ->EncryptSectors(last, two.first(sector_size), std::span(out).first(sector_size))
            .ok());
  }
}

}  // namespace
}  // namespace keywarden::crypto
