// Tests of the crypto primitives behind TPM attestation: KDFa and AES-CFB (tpm_kdf.h) from the
// public vectors in tests/data/tpm_crypto_vectors.json, ECDSA P-256 against Wycheproof, and
// RSA-OAEP cross-checked by decrypting with the openssl command-line tool.

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "keywarden/crypto/asymmetric.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/tpm_kdf.h"
#include "keywarden/secret_bytes.h"
#include "tests/subprocess.h"
#include "tests/vectors.h"

namespace keywarden::crypto {
namespace {

using ::keywarden::testing::Hex;
using ::keywarden::testing::SecretHex;
using Bytes = std::vector<uint8_t>;

const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

std::string HexOf(const SecretBytes& s) { return HexEncode(s.Reveal(kToken)); }

nlohmann::json LoadLocal(const std::string& name) {
  const auto text = keywarden::testing::ReadFile(std::string(KEYWARDEN_SOURCE_DIR) + "/" + name);
  if (!text) {
    ADD_FAILURE() << "cannot read " << name;
    return nullptr;
  }
  return nlohmann::json::parse(*text);
}

// --- KDFa ------------------------------------------------------------------------------------

TEST(KdfaSha256, KnownAnswers) {
  const nlohmann::json doc = LoadLocal("tests/data/tpm_crypto_vectors.json");
  size_t run = 0;
  for (const auto& v : doc["kdfa_sha256"]) {
    const SecretBytes key = SecretHex(v["key"].get<std::string>());
    auto out =
        KdfaSha256(key, v["label"].get<std::string>(), Hex(v["context_u"].get<std::string>()),
                   Hex(v["context_v"].get<std::string>()), v["bits"].get<size_t>());
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(HexOf(*out), v["result"].get<std::string>()) << v["source"];
    ++run;
  }
  EXPECT_EQ(run, 2u);
}

TEST(KdfaSha256, LengthIsPartOfTheInput) {
  // [L]_32 is hashed into every block, so a 128-bit output is not a prefix of a 256-bit one.
  const SecretBytes seed = *RandomSecret(32);
  const Bytes name = Hex("000b" + std::string(64, 'a'));
  auto k128 = KdfaSha256(seed, "STORAGE", name, {}, 128);
  auto k256 = KdfaSha256(seed, "STORAGE", name, {}, 256);
  ASSERT_TRUE(k128.ok() && k256.ok());
  EXPECT_EQ(k128->size(), 16u);
  EXPECT_EQ(k256->size(), 32u);
  EXPECT_NE(HexOf(*k128), HexOf(*k256).substr(0, 32));
}

TEST(KdfaSha256, LabelAndContextsMatter) {
  const SecretBytes seed = *RandomSecret(32);
  const Bytes u = {1, 2, 3};
  const std::string base = HexOf(*KdfaSha256(seed, "STORAGE", u, {}, 256));
  EXPECT_NE(base, HexOf(*KdfaSha256(seed, "INTEGRITY", u, {}, 256)));
  EXPECT_NE(base, HexOf(*KdfaSha256(seed, "STORAGE", Bytes{1, 2, 4}, {}, 256)));
  EXPECT_NE(base, HexOf(*KdfaSha256(*RandomSecret(32), "STORAGE", u, {}, 256)));
  // Part 1 §11.4.10.2 hashes Context = contextU || contextV: only the concatenation counts.
  EXPECT_EQ(base, HexOf(*KdfaSha256(seed, "STORAGE", {}, u, 256)));
  EXPECT_EQ(base, HexOf(*KdfaSha256(seed, "STORAGE", Bytes{1}, Bytes{2, 3}, 256)));
  auto long_out = KdfaSha256(seed, "STORAGE", u, {}, 1024);  // four HMAC blocks
  ASSERT_TRUE(long_out.ok());
  EXPECT_EQ(long_out->size(), 128u);
}

TEST(KdfaSha256, RejectsBadParameters) {
  const SecretBytes seed = *RandomSecret(32);
  EXPECT_EQ(KdfaSha256(seed, "STORAGE", {}, {}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KdfaSha256(seed, "STORAGE", {}, {}, kKdfaMaxBits + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KdfaSha256(seed, std::string_view("STOR\0AGE", 8), {}, {}, 128).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(KdfaSha256(SecretBytes(), "STORAGE", {}, {}, 128).ok());  // HMAC pads empty keys
}

// --- AES-CFB ---------------------------------------------------------------------------------

TEST(AesCfb, KnownAnswerAndRoundTrip) {
  const nlohmann::json doc = LoadLocal("tests/data/tpm_crypto_vectors.json");
  size_t run = 0;
  for (const auto& v : doc["aes_cfb128"]) {
    const SecretBytes key = SecretHex(v["key"].get<std::string>());
    const Bytes iv_bytes = Hex(v["iv"].get<std::string>());
    ASSERT_EQ(iv_bytes.size(), kAesCfbIvSize);
    std::span<const uint8_t, kAesCfbIvSize> iv(iv_bytes.data(), kAesCfbIvSize);
    const Bytes plaintext = Hex(v["plaintext"].get<std::string>());
    auto ct = AesCfbEncrypt(key, iv, plaintext);
    ASSERT_TRUE(ct.ok()) << ct.status();
    EXPECT_EQ(HexEncode(*ct), v["ciphertext"].get<std::string>());
    // CFB is a stream mode: any prefix of the plaintext encrypts to the same prefix, which is
    // what a 34-byte TPM2B_DIGEST credential relies on.
    auto partial = AesCfbEncrypt(key, iv, std::span(plaintext).first(34));
    ASSERT_TRUE(partial.ok());
    EXPECT_EQ(HexEncode(*partial), v["ciphertext"].get<std::string>().substr(0, 68));
    auto back = AesCfbDecrypt(key, iv, *ct);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(HexOf(*back), v["plaintext"].get<std::string>());
    ++run;
  }
  EXPECT_EQ(run, 1u);
}

TEST(AesCfb, RejectsBadKeySizes) {
  const std::array<uint8_t, kAesCfbIvSize> iv{};
  const Bytes data(10, 0);
  for (size_t size : {0, 8, 15, 17, 33}) {
    EXPECT_EQ(AesCfbEncrypt(SecretBytes(size), iv, data).status().code(),
              absl::StatusCode::kInvalidArgument)
        << size;
    EXPECT_EQ(AesCfbDecrypt(SecretBytes(size), iv, data).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  EXPECT_TRUE(AesCfbEncrypt(SecretBytes(16), iv, {}).ok());
}

// --- ECDSA P-256 -----------------------------------------------------------------------------

// Coordinate turns a Wycheproof hex integer (may carry a 00 sign byte) into 32 bytes.
std::array<uint8_t, 32> Coordinate(const std::string& hex) {
  Bytes b = Hex(hex);
  while (b.size() > 32 && b.front() == 0) b.erase(b.begin());
  std::array<uint8_t, 32> out{};
  EXPECT_LE(b.size(), 32u);
  std::copy(b.begin(), b.end(), out.end() - static_cast<std::ptrdiff_t>(b.size()));
  return out;
}

TEST(EcdsaP256Sha256Verify, Wycheproof) {
  const nlohmann::json doc = keywarden::testing::LoadJson(
      "wycheproof/testvectors_v1/ecdsa_secp256r1_sha256_p1363_test.json");
  size_t valid = 0, invalid = 0;
  for (const auto& group : doc["testGroups"]) {
    EcP256PublicKey key;
    key.x = Coordinate(group["publicKey"]["wx"].get<std::string>());
    key.y = Coordinate(group["publicKey"]["wy"].get<std::string>());
    for (const auto& t : group["tests"]) {
      const Bytes sig = Hex(t["sig"].get<std::string>());
      const Bytes msg = Hex(t["msg"].get<std::string>());
      EcdsaSignature s;
      if (sig.size() == 64) {  // P1363: r || s, each 32 bytes; other sizes are malformed
        s.r.assign(sig.begin(), sig.begin() + 32);
        s.s.assign(sig.begin() + 32, sig.end());
      }
      const absl::Status status = EcdsaP256Sha256Verify(key, msg, s);
      const std::string result = t["result"].get<std::string>();
      if (result == "valid") {
        EXPECT_TRUE(status.ok()) << "tcId " << t["tcId"] << ": " << status;
        ++valid;
      } else {
        ASSERT_EQ(result, "invalid");
        EXPECT_FALSE(status.ok()) << "tcId " << t["tcId"] << " " << t["comment"];
        ++invalid;
      }
    }
  }
  EXPECT_EQ(valid, 173u);
  EXPECT_EQ(invalid, 89u);
}

TEST(EcdsaP256, SignVerifyAndNegatives) {
  auto key = EcdsaP256PrivateKey::Generate();
  ASSERT_TRUE(key.ok()) << key.status();
  const Bytes msg = {'q', 'u', 'o', 't', 'e'};
  auto sig = key->Sign(msg);
  ASSERT_TRUE(sig.ok()) << sig.status();
  EXPECT_EQ(sig->r.size(), 32u);
  EXPECT_TRUE(EcdsaP256Sha256Verify(key->public_key(), msg, *sig).ok());

  const Bytes other_msg = {'q', 'u', 'o', 't', 'f'};
  EXPECT_EQ(EcdsaP256Sha256Verify(key->public_key(), other_msg, *sig).code(),
            absl::StatusCode::kPermissionDenied);
  auto other = EcdsaP256PrivateKey::Generate();
  EXPECT_EQ(EcdsaP256Sha256Verify(other->public_key(), msg, *sig).code(),
            absl::StatusCode::kPermissionDenied);
  EcdsaSignature flipped = *sig;
  flipped.s[5] ^= 1;
  EXPECT_EQ(EcdsaP256Sha256Verify(key->public_key(), msg, flipped).code(),
            absl::StatusCode::kPermissionDenied);
  EcdsaSignature zero_r = *sig;
  std::fill(zero_r.r.begin(), zero_r.r.end(), 0);
  EXPECT_EQ(EcdsaP256Sha256Verify(key->public_key(), msg, zero_r).code(),
            absl::StatusCode::kPermissionDenied);
  EcdsaSignature long_r = *sig;
  long_r.r.insert(long_r.r.begin(), 0);  // 33 bytes
  EXPECT_EQ(EcdsaP256Sha256Verify(key->public_key(), msg, long_r).code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(EcdsaP256Sha256Verify(key->public_key(), msg, EcdsaSignature{}).code(),
            absl::StatusCode::kPermissionDenied);
  // A signature with leading zero bytes stripped (as TPMs may send r and s) still verifies.
  EcdsaSignature trimmed = *sig;
  while (trimmed.r.size() > 1 && trimmed.r.front() == 0) trimmed.r.erase(trimmed.r.begin());
  EXPECT_TRUE(EcdsaP256Sha256Verify(key->public_key(), msg, trimmed).ok());
}

TEST(EcdsaP256, RejectsPointsOffTheCurve) {
  auto key = EcdsaP256PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  EcP256PublicKey bad = key->public_key();
  bad.y[31] ^= 1;
  EXPECT_EQ(ValidateEcP256PublicKey(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateEcP256PublicKey(EcP256PublicKey{}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateEcP256PublicKey(key->public_key()).ok());
  auto sig = key->Sign(Bytes{1});
  EXPECT_EQ(EcdsaP256Sha256Verify(bad, Bytes{1}, *sig).code(), absl::StatusCode::kInvalidArgument);
}

// --- RSA-OAEP --------------------------------------------------------------------------------

// MakeRsaKey generates an RSA key with the openssl CLI and returns its public half.
RsaPublicKey MakeRsaKey(const keywarden::testing::TempDir& dir, int bits) {
  using keywarden::testing::Run;
  const std::string key = (dir / "rsa.key").string();
  auto gen = Run({"openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                  "rsa_keygen_bits:" + std::to_string(bits), "-out", key});
  EXPECT_TRUE(gen.ok()) << gen;
  auto mod = Run({"openssl", "rsa", "-in", key, "-noout", "-modulus"});
  EXPECT_TRUE(mod.ok()) << mod;
  std::string hex = mod.stdout_text.substr(mod.stdout_text.find('=') + 1);
  while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r')) hex.pop_back();
  return RsaPublicKey{Hex(hex), 65537};
}

TEST(RsaOaepSha256Encrypt, OpensslDecryptsWithTheSameLabel) {
  keywarden::testing::TempDir dir;
  const RsaPublicKey key = MakeRsaKey(dir, 2048);
  ASSERT_EQ(key.modulus.size(), 256u);
  const Bytes seed = Hex(std::string(64, '5'));
  const Bytes label = {'I', 'D', 'E', 'N', 'T', 'I', 'T', 'Y', 0};
  auto ct = RsaOaepSha256Encrypt(key, seed, label);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->size(), 256u);
  dir.WriteFile("ct.bin", std::string(ct->begin(), ct->end()));
  auto decrypt = [&](const std::string& label_hex) {
    return keywarden::testing::Run({"openssl", "pkeyutl", "-decrypt", "-inkey",
                                    (dir / "rsa.key").string(), "-in", (dir / "ct.bin").string(),
                                    "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt",
                                    "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256",
                                    "-pkeyopt", "rsa_oaep_label:" + label_hex});
  };
  const auto ok = decrypt("4944454e5449545900");  // "IDENTITY\0"
  ASSERT_TRUE(ok.ok()) << ok;
  EXPECT_EQ(ok.stdout_text, std::string(seed.begin(), seed.end()));
  // The NUL is part of the label: without it, decryption fails.
  EXPECT_FALSE(decrypt("4944454e54495459").ok());
  // Two encryptions differ (fresh OAEP seed).
  EXPECT_NE(HexEncode(*ct), HexEncode(*RsaOaepSha256Encrypt(key, seed, label)));
}

TEST(RsaOaepSha256Encrypt, RejectsBadKeysAndLongPlaintexts) {
  keywarden::testing::TempDir dir;
  const RsaPublicKey key = MakeRsaKey(dir, 2048);
  EXPECT_EQ(RsaOaepSha256Encrypt(key, Bytes(256 - 66 + 1, 1), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(RsaOaepSha256Encrypt(key, Bytes(256 - 66, 1), {}).ok());
  RsaPublicKey even = key;
  even.exponent = 65536;
  EXPECT_EQ(RsaOaepSha256Encrypt(even, Bytes{1}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  RsaPublicKey small = key;
  small.modulus.resize(128);  // 1024 bits
  small.modulus[0] |= 0x80;
  small.modulus.back() |= 1;
  EXPECT_EQ(RsaOaepSha256Encrypt(small, Bytes{1}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RsaOaepSha256Encrypt(RsaPublicKey{}, Bytes{1}, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keywarden::crypto
