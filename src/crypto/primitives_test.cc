// Behaviour and negative tests for the crypto primitives. Known answers are in kat_test.cc.
#define OPENSSL_SUPPRESS_DEPRECATED  // RAND_set_rand_method: used to make the CSPRNG fail
#include <gtest/gtest.h>
#include <openssl/rand.h>

#include <set>
#include <string>
#include <thread>

#include "keywarden/crypto/aes_gcm.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/key_wrap.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/crypto/x25519.h"
#include "keywarden/crypto/xts.h"

namespace keywarden::crypto {
namespace {

const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

SecretBytes Random(size_t n) { return *RandomSecret(n); }

std::vector<uint8_t> Vec(const SecretBytes& s) {
  const auto v = s.Reveal(kToken);
  return {v.begin(), v.end()};
}

// The message of a failed operation must not contain the key, in hex or raw.
void ExpectNoKeyIn(const absl::Status& status, const SecretBytes& key) {
  const std::string message(status.message());
  EXPECT_EQ(message.find(HexEncode(key.Reveal(kToken))), std::string::npos);
  const auto k = key.Reveal(kToken);
  EXPECT_EQ(message.find(std::string(k.begin(), k.begin() + 8)), std::string::npos);
}

// --- CSPRNG ---------------------------------------------------------------------------------

TEST(RandomTest, OutputsDiffer) {
  std::set<std::vector<uint8_t>> seen;
  for (int i = 0; i < 64; ++i) seen.insert(Vec(Random(16)));
  EXPECT_EQ(seen.size(), 64u);
}

int FailingBytes(unsigned char*, int) { return 0; }
int FailingStatus() { return 0; }

// A RAND method whose generator always fails, as an unseedable one would.
class FailingRandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    method_.bytes = FailingBytes;
    method_.status = FailingStatus;
    ASSERT_EQ(RAND_set_rand_method(&method_), 1);
  }
  void TearDown() override { RAND_set_rand_method(nullptr); }
  RAND_METHOD method_{};
};

TEST_F(FailingRandTest, FailsClosed) {
  std::vector<uint8_t> buffer(64, 0xAA);
  absl::Status s = RandomFill(buffer);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(std::all_of(buffer.begin(), buffer.end(), [](uint8_t b) { return b == 0; }));
  EXPECT_FALSE(RandomSecret(32).ok());
  EXPECT_FALSE(X25519KeyPair::Generate().ok());
  auto gcm = AesGcm::New(SecretBytes(std::vector<uint8_t>(32, 1)));
  ASSERT_TRUE(gcm.ok());
  EXPECT_EQ((*gcm)->Encrypt(buffer, {}).status().code(), absl::StatusCode::kUnavailable);
}

TEST(ConstantTimeEqualsTest, ComparesContentAndLength) {
  const std::vector<uint8_t> a = {1, 2, 3}, b = {1, 2, 3}, c = {1, 2, 4}, d = {1, 2};
  EXPECT_TRUE(ConstantTimeEquals(a, b));
  EXPECT_FALSE(ConstantTimeEquals(a, c));
  EXPECT_FALSE(ConstantTimeEquals(a, d));
  EXPECT_TRUE(ConstantTimeEquals({}, {}));
}

// --- HKDF -----------------------------------------------------------------------------------

TEST(HkdfTest, RefusesOutputLengthsOutsideRfcRange) {
  const auto ikm = Vec(Random(32));
  EXPECT_EQ(HkdfSha256(ikm, {}, {}, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(HkdfSha256(ikm, {}, {}, kHkdfSha256MaxOutput + 1).ok());
  EXPECT_TRUE(HkdfSha256(ikm, {}, {}, kHkdfSha256MaxOutput).ok());
  auto expander = HkdfSha256Expander::New(Random(32));
  ASSERT_TRUE(expander.ok());
  EXPECT_FALSE((*expander)->Expand({}, 0).ok());
  EXPECT_FALSE((*expander)->Expand({}, kHkdfSha256MaxOutput + 1).ok());
  EXPECT_EQ((*expander)->Expand({}, kHkdfSha256MaxOutput)->size(), kHkdfSha256MaxOutput);
}

TEST(HkdfTest, ExpanderRefusesShortPrk) { EXPECT_FALSE(HkdfSha256Expander::New(Random(31)).ok()); }

TEST(HkdfTest, ExpandPartsEqualsConcatenatedInfo) {
  auto expander = *HkdfSha256Expander::New(Random(32));
  const std::vector<uint8_t> a = {'k', 'e', 'y', '-'}, b = {'i', 'd'};
  const std::vector<uint8_t> ab = {'k', 'e', 'y', '-', 'i', 'd'};
  EXPECT_EQ(Vec(*expander->ExpandParts({a, b}, 100)), Vec(*expander->Expand(ab, 100)));
}

TEST(HkdfTest, ExpanderMatchesOneShotAcrossLengths) {
  const SecretBytes ikm = Random(32);
  const auto salt = Vec(Random(32));
  const std::vector<uint8_t> info = {'i', 'n', 'f', 'o'};
  auto prk = *HkdfSha256Extract(salt, ikm.Reveal(kToken));
  auto expander = *HkdfSha256Expander::New(prk);
  for (size_t n : {1u, 31u, 32u, 33u, 64u, 65u, 1000u, 8160u}) {
    EXPECT_EQ(Vec(*expander->Expand(info, n)), Vec(*HkdfSha256(ikm.Reveal(kToken), salt, info, n)))
        << n;
  }
}

TEST(HkdfTest, ExpanderIsThreadSafe) {
  auto expander = *HkdfSha256Expander::New(Random(32));
  std::vector<std::vector<uint8_t>> expected;
  for (int i = 0; i < 16; ++i) {
    const std::vector<uint8_t> info = {static_cast<uint8_t>(i)};
    expected.push_back(Vec(*expander->Expand(info, 32)));
  }
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 500; ++round) {
        const int i = round % 16;
        const std::vector<uint8_t> info = {static_cast<uint8_t>(i)};
        if (Vec(*expander->Expand(info, 32)) != expected[i]) ++mismatches;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// --- HMAC -----------------------------------------------------------------------------------

TEST(HmacTest, VerifyAcceptsFullAndTruncatedTagsAndRefusesForgeries) {
  auto hmac = *HmacSha256::New(Random(32));
  const std::vector<uint8_t> msg = {'m', 's', 'g'};
  auto tag = *hmac->Compute(msg);
  EXPECT_TRUE(hmac->Verify(tag, msg).ok());
  EXPECT_TRUE(hmac->Verify(std::span<const uint8_t>(tag).first(16), msg).ok());
  EXPECT_FALSE(hmac->Verify(std::span<const uint8_t>(tag).first(15), msg).ok());
  auto flipped = tag;
  flipped[31] ^= 0x80;
  EXPECT_EQ(hmac->Verify(flipped, msg).message(), "tag mismatch");
  const std::vector<uint8_t> other = {'m', 's', 'h'};
  EXPECT_FALSE(hmac->Verify(tag, other).ok());
  EXPECT_FALSE(HmacSha256::New(Random(15)).ok());
}

// --- AES key wrap ---------------------------------------------------------------------------

TEST(KeyWrapTest, RoundTripsBothModes) {
  const SecretBytes kek = Random(32);
  for (auto padding : {AesKeyWrap::Padding::kNone, AesKeyWrap::Padding::kRfc5649}) {
    auto wrap = *AesKeyWrap::New(kek, padding);
    const SecretBytes key = Random(32);
    auto wrapped = *wrap->Wrap(key.Reveal(kToken));
    EXPECT_EQ(wrapped.size(), 40u);
    EXPECT_EQ(Vec(*wrap->Unwrap(wrapped)), Vec(key));
  }
  auto kwp = *AesKeyWrap::New(kek, AesKeyWrap::Padding::kRfc5649);
  for (size_t n : {1u, 7u, 9u, 20u, 65u}) {
    const SecretBytes key = Random(n);
    EXPECT_EQ(Vec(*kwp->Unwrap(*kwp->Wrap(key.Reveal(kToken)))), Vec(key)) << n;
  }
}

TEST(KeyWrapTest, RefusesBadLengthsAndKeks) {
  auto kw = *AesKeyWrap::New(Random(32), AesKeyWrap::Padding::kNone);
  EXPECT_FALSE(kw->Wrap(Vec(Random(8))).ok());
  EXPECT_FALSE(kw->Wrap(Vec(Random(20))).ok());
  EXPECT_FALSE(kw->Wrap({}).ok());
  auto kwp = *AesKeyWrap::New(Random(32), AesKeyWrap::Padding::kRfc5649);
  EXPECT_FALSE(kwp->Wrap({}).ok());
  EXPECT_FALSE(AesKeyWrap::New(Random(20), AesKeyWrap::Padding::kNone).ok());
}

TEST(KeyWrapTest, TamperingWrongKekAndTruncationGiveOneGenericError) {
  const SecretBytes kek = Random(32);
  for (auto padding : {AesKeyWrap::Padding::kNone, AesKeyWrap::Padding::kRfc5649}) {
    auto wrap = *AesKeyWrap::New(kek, padding);
    auto other = *AesKeyWrap::New(Random(32), padding);
    const auto wrapped = *wrap->Wrap(Vec(Random(32)));
    std::vector<absl::Status> failures;
    for (size_t i = 0; i < wrapped.size(); ++i) {
      auto flipped = wrapped;
      flipped[i] ^= 1;
      failures.push_back(wrap->Unwrap(flipped).status());
    }
    failures.push_back(other->Unwrap(wrapped).status());
    failures.push_back(wrap->Unwrap(std::span(wrapped).first(wrapped.size() - 8)).status());
    failures.push_back(wrap->Unwrap(std::span(wrapped).first(wrapped.size() - 1)).status());
    failures.push_back(wrap->Unwrap({}).status());
    for (const auto& s : failures) {
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(s.message(), "unwrap failed");
      ExpectNoKeyIn(s, kek);
    }
  }
}

// --- AES-GCM --------------------------------------------------------------------------------

TEST(AesGcmTest, RoundTripWithFreshNonces) {
  auto gcm = *AesGcm::New(Random(32));
  const std::vector<uint8_t> pt = {'h', 'e', 'l', 'l', 'o'}, aad = {'a', 'd'};
  auto c1 = *gcm->Encrypt(pt, aad);
  auto c2 = *gcm->Encrypt(pt, aad);
  EXPECT_EQ(c1.size(), AesGcm::kNonceSize + pt.size() + AesGcm::kTagSize);
  EXPECT_NE(c1, c2);
  EXPECT_EQ(Vec(*gcm->Decrypt(c1, aad)), pt);
  EXPECT_EQ(Vec(*gcm->Decrypt(*gcm->Encrypt({}, aad), aad)), std::vector<uint8_t>{});
}

TEST(AesGcmTest, AnyTamperingIsRefusedWithOneError) {
  const SecretBytes key = Random(32);
  auto gcm = *AesGcm::New(key);
  const std::vector<uint8_t> pt(40, 7), aad = {'x'};
  const auto ct = *gcm->Encrypt(pt, aad);
  for (size_t i = 0; i < ct.size(); ++i) {
    auto flipped = ct;
    flipped[i] ^= 0x01;
    auto r = gcm->Decrypt(flipped, aad);
    ASSERT_FALSE(r.ok()) << i;
    EXPECT_EQ(r.status().message(), "decryption failed");
  }
  const std::vector<uint8_t> other_aad = {'y'};
  EXPECT_FALSE(gcm->Decrypt(ct, other_aad).ok());
  EXPECT_FALSE(gcm->Decrypt(std::span(ct).first(ct.size() - 1), aad).ok());
  EXPECT_FALSE(gcm->Decrypt(std::span(ct).first(AesGcm::kNonceSize + 15), aad).ok());
  auto r = (*AesGcm::New(Random(32)))->Decrypt(ct, aad);
  EXPECT_EQ(r.status().message(), "decryption failed");
  ExpectNoKeyIn(r.status(), key);
}

TEST(AesGcmTest, RefusesBadKeysAndNonces) {
  EXPECT_FALSE(AesGcm::New(Random(31)).ok());
  auto gcm = *AesGcm::New(Random(32));
  const std::vector<uint8_t> nonce(16, 0), pt = {1};
  EXPECT_FALSE(gcm->EncryptWithNonce(nonce, pt, {}).ok());
}

// --- AES-XTS --------------------------------------------------------------------------------

TEST(XtsTest, RefusesEqualHalvesAndBadSizes) {
  std::vector<uint8_t> key(64, 0x42);
  auto r = AesXts::New(SecretBytes(key));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(r.status().message()).find("halves are equal"), std::string::npos);
  EXPECT_FALSE(XtsSectorCipher::New(SecretBytes(key), 4096).ok());
  EXPECT_FALSE(AesXts::New(Random(48)).ok());
  EXPECT_FALSE(XtsSectorCipher::New(Random(64), 1024).ok());
}

TEST(XtsTest, SectorRoundTripInPlaceAndTweakSeparation) {
  auto cipher = *XtsSectorCipher::New(Random(64), 4096);
  std::vector<uint8_t> plain(3 * 4096);
  ASSERT_TRUE(RandomFill(plain).ok());
  std::vector<uint8_t> buf = plain;
  ASSERT_TRUE(cipher->EncryptSectors(10, buf, buf).ok());
  EXPECT_NE(buf, plain);
  // Same plaintext in two sectors encrypts differently (the tweak is the sector number).
  std::vector<uint8_t> same(2 * 4096, 0), out(2 * 4096);
  ASSERT_TRUE(cipher->EncryptSectors(0, same, out).ok());
  EXPECT_FALSE(std::equal(out.begin(), out.begin() + 4096, out.begin() + 4096));
  ASSERT_TRUE(cipher->DecryptSectors(10, buf, buf).ok());
  EXPECT_EQ(buf, plain);
  // Decrypting at the wrong sector number gives garbage, not the plaintext.
  std::vector<uint8_t> enc(4096), dec(4096);
  ASSERT_TRUE(cipher->EncryptSectors(5, std::span(plain).first(4096), enc).ok());
  ASSERT_TRUE(cipher->DecryptSectors(6, enc, dec).ok());
  EXPECT_FALSE(std::equal(dec.begin(), dec.end(), plain.begin()));
}

TEST(XtsTest, RefusesPartialSectorsOverlapAndOverflow) {
  auto cipher = *XtsSectorCipher::New(Random(64), 512);
  std::vector<uint8_t> buf(1024), out(1024);
  EXPECT_FALSE(cipher->EncryptSectors(0, std::span(buf).first(100), out).ok());
  EXPECT_FALSE(cipher->EncryptSectors(0, {}, out).ok());
  EXPECT_FALSE(cipher->EncryptSectors(0, buf, std::span(out).first(512)).ok());
  EXPECT_FALSE(
      cipher->EncryptSectors(0, std::span(buf).first(512), std::span(buf).subspan(1, 512)).ok());
  EXPECT_FALSE(cipher->EncryptSectors(UINT64_MAX, buf, out).ok());
  EXPECT_TRUE(
      cipher->EncryptSectors(UINT64_MAX, std::span(buf).first(512), std::span(out).first(512))
          .ok());
}

// --- X25519 ---------------------------------------------------------------------------------

TEST(X25519Test, KeyAgreementAndClamping) {
  auto a = *X25519KeyPair::Generate();
  auto b = *X25519KeyPair::Generate();
  EXPECT_NE(a.public_key(), b.public_key());
  EXPECT_EQ(Vec(*a.SharedSecret(b.public_key())), Vec(*b.SharedSecret(a.public_key())));
  const auto k = a.private_key().Reveal(kToken);
  EXPECT_EQ(k[0] & 7, 0);
  EXPECT_EQ(k[31] & 0xc0, 0x40);
  auto again = *X25519KeyPair::FromPrivateKey(a.private_key());
  EXPECT_EQ(again.public_key(), a.public_key());
}

TEST(X25519Test, RefusesSmallOrderPeerAndBadSizes) {
  auto a = *X25519KeyPair::Generate();
  const X25519PublicKey zero{};
  EXPECT_EQ(a.SharedSecret(zero).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(a.SharedSecret(std::vector<uint8_t>(31, 9)).ok());
  EXPECT_FALSE(X25519KeyPair::FromPrivateKey(Random(31)).ok());
}

TEST(X25519Test, WireGuardEncoding) {
  auto a = *X25519KeyPair::Generate();
  const std::string pub = EncodeWireGuardPublicKey(a.public_key());
  EXPECT_EQ(pub.size(), 44u);
  EXPECT_EQ(pub.back(), '=');
  EXPECT_EQ(*DecodeWireGuardPublicKey(pub), a.public_key());
  const SecretBytes priv_text = EncodeWireGuardPrivateKey(a.private_key());
  const auto t = priv_text.Reveal(kToken);
  auto priv = *DecodeWireGuardPrivateKey(
      std::string_view(reinterpret_cast<const char*>(t.data()), t.size()));
  EXPECT_EQ(Vec(priv), Vec(a.private_key()));
  EXPECT_FALSE(DecodeWireGuardPublicKey(pub.substr(0, 43)).ok());
  EXPECT_FALSE(DecodeWireGuardPublicKey(pub + "A").ok());
  std::string bad = pub;
  bad[3] = '*';
  EXPECT_FALSE(DecodeWireGuardPublicKey(bad).ok());
  // 33 bytes of base64 is 44 characters without padding: not a key.
  EXPECT_FALSE(DecodeWireGuardPublicKey(Base64Encode(std::vector<uint8_t>(33, 1))).ok());
  EXPECT_FALSE(DecodeWireGuardPrivateKey(Base64Encode(std::vector<uint8_t>(33, 1))).ok());
}

// --- SHA-256 --------------------------------------------------------------------------------

TEST(Sha256Test, PartsConcatenate) {
  const std::vector<uint8_t> abc = {'a', 'b', 'c'}, a = {'a'}, bc = {'b', 'c'};
  EXPECT_EQ(Sha256({abc}), Sha256({a, bc}));
  // FIPS 180-2 Appendix B.1: SHA-256("abc").
  EXPECT_EQ(HexEncode(Sha256({abc})),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace keywarden::crypto
