// Unit tests of the verifier (keywarden/attest/verify.h) without a TPM: AK and EK public areas
// and quotes are built by hand with tpm2-tss's marshaling and signed with a software P-256 key;
// EK certificate chains are made with the openssl command-line tool. Every check has a test
// that makes exactly that check fail. tests/attest_tpm_test.cc runs the same functions on what
// a real TPM (swtpm) produces.

#include "keywarden/attest/verify.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_tpm2_types.h>

#include <functional>
#include <string>
#include <vector>

#include "keywarden/crypto/asymmetric.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/crypto/tpm_kdf.h"
#include "src/attest/tpm_types.h"
#include "tests/subprocess.h"

namespace keywarden::attest {
namespace {

using Bytes = std::vector<uint8_t>;
using ::testing::HasSubstr;
const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

// ---- builders --------------------------------------------------------------------------------

Bytes AkPublicBytes(const crypto::EcP256PublicKey& key,
                    const std::function<void(TPMT_PUBLIC&)>& edit = nullptr) {
  TPM2B_PUBLIC pub = AkTemplate();
  pub.publicArea.unique.ecc.x.size = 32;
  pub.publicArea.unique.ecc.y.size = 32;
  std::copy(key.x.begin(), key.x.end(), pub.publicArea.unique.ecc.x.buffer);
  std::copy(key.y.begin(), key.y.end(), pub.publicArea.unique.ecc.y.buffer);
  if (edit) edit(pub.publicArea);
  Bytes out = MarshalPublic(pub);
  EXPECT_FALSE(out.empty());
  return out;
}

std::array<PcrValue, kQuotedPcrCount> SomePcrs() {
  std::array<PcrValue, kQuotedPcrCount> pcrs{};
  for (size_t i = 0; i < pcrs.size(); ++i) pcrs[i].fill(static_cast<uint8_t>(i * 7 + 1));
  return pcrs;
}

// QuoteBuilder makes a TPMS_ATTEST like TPM2_Quote does, signs it with a software AK, and lets
// a test change any field first.
struct QuoteBuilder {
  crypto::EcdsaP256PrivateKey key = *crypto::EcdsaP256PrivateKey::Generate();
  Bytes nonce = Bytes(32, 0x5a);
  std::array<PcrValue, kQuotedPcrCount> pcrs = SomePcrs();

  AkPublic Ak() const { return *ParseAkPublic(AkPublicBytes(key.public_key())); }

  TPMS_ATTEST Info() const {
    TPMS_ATTEST info{};
    info.magic = TPM2_GENERATED_VALUE;
    info.type = TPM2_ST_ATTEST_QUOTE;
    const TpmName name = Ak().name;
    info.qualifiedSigner.size = name.size();
    std::copy(name.begin(), name.end(), info.qualifiedSigner.name);
    info.extraData.size = static_cast<UINT16>(nonce.size());
    std::copy(nonce.begin(), nonce.end(), info.extraData.buffer);
    info.clockInfo.clock = 123456;
    info.clockInfo.resetCount = 3;
    info.clockInfo.restartCount = 1;
    info.clockInfo.safe = 1;
    info.firmwareVersion = 0x2019102300000000ull;
    TPMS_QUOTE_INFO& quote = info.attested.quote;
    quote.pcrSelect.count = 1;
    quote.pcrSelect.pcrSelections[0].hash = TPM2_ALG_SHA256;
    quote.pcrSelect.pcrSelections[0].sizeofSelect = 3;
    quote.pcrSelect.pcrSelections[0].pcrSelect[0] = 0xff;
    quote.pcrSelect.pcrSelections[0].pcrSelect[1] = 0xff;
    const auto digest = PcrDigest(pcrs);
    quote.pcrDigest.size = digest.size();
    std::copy(digest.begin(), digest.end(), quote.pcrDigest.buffer);
    return info;
  }

  static Bytes Marshal(const TPMS_ATTEST& info) {
    Bytes out(sizeof(TPMS_ATTEST));
    size_t offset = 0;
    EXPECT_EQ(Tss2_MU_TPMS_ATTEST_Marshal(&info, out.data(), out.size(), &offset), TSS2_RC_SUCCESS);
    out.resize(offset);
    return out;
  }

  static Bytes MarshalSignature(const TPMT_SIGNATURE& sig) {
    Bytes out(sizeof(TPMT_SIGNATURE));
    size_t offset = 0;
    EXPECT_EQ(Tss2_MU_TPMT_SIGNATURE_Marshal(&sig, out.data(), out.size(), &offset),
              TSS2_RC_SUCCESS);
    out.resize(offset);
    return out;
  }

  TPMT_SIGNATURE SignRaw(const Bytes& attest) const {
    auto s = key.Sign(attest);
    EXPECT_TRUE(s.ok());
    TPMT_SIGNATURE sig{};
    sig.sigAlg = TPM2_ALG_ECDSA;
    sig.signature.ecdsa.hash = TPM2_ALG_SHA256;
    sig.signature.ecdsa.signatureR.size = static_cast<UINT16>(s->r.size());
    std::copy(s->r.begin(), s->r.end(), sig.signature.ecdsa.signatureR.buffer);
    sig.signature.ecdsa.signatureS.size = static_cast<UINT16>(s->s.size());
    std::copy(s->s.begin(), s->s.end(), sig.signature.ecdsa.signatureS.buffer);
    return sig;
  }
  Bytes Sign(const Bytes& attest) const { return MarshalSignature(SignRaw(attest)); }
};

// ---- names and AK public areas ----------------------------------------------------------------

TEST(ParseAkPublic, AcceptsTheAkTemplateAndComputesItsName) {
  auto key = crypto::EcdsaP256PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  const Bytes bytes = AkPublicBytes(key->public_key());
  auto ak = ParseAkPublic(bytes);
  ASSERT_TRUE(ak.ok()) << ak.status();
  EXPECT_EQ(ak->key, key->public_key());
  EXPECT_EQ(ak->tpm2b_public, bytes);
  // Name = 0x000B || SHA-256(TPMT_PUBLIC), the bytes after the 2-byte TPM2B size.
  const auto digest = crypto::Sha256({std::span<const uint8_t>(bytes).subspan(2)});
  EXPECT_EQ(ak->name[0], 0x00);
  EXPECT_EQ(ak->name[1], 0x0b);
  EXPECT_TRUE(std::equal(digest.begin(), digest.end(), ak->name.begin() + 2));
  EXPECT_EQ(AkName(*ak), *ComputeName(bytes));
  // The TPM2B size field covers exactly the TPMT_PUBLIC.
  EXPECT_EQ((size_t{bytes[0]} << 8 | bytes[1]), bytes.size() - 2);
}

struct AkCase {
  const char* what;
  std::function<void(TPMT_PUBLIC&)> edit;
  const char* message;
};

TEST(ParseAkPublic, RefusesEveryNonAkShape) {
  auto key = crypto::EcdsaP256PrivateKey::Generate();
  ASSERT_TRUE(key.ok());
  const std::vector<AkCase> cases = {
      {"unrestricted", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; },
       "not restricted"},
      {"decrypt", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_DECRYPT; },
       "decryption key"},
      {"not sign", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SIGN_ENCRYPT; },
       "not a signing key"},
      {"not fixedTPM", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDTPM; },
       "may leave its TPM"},
      {"not fixedParent", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_FIXEDPARENT; },
       "may leave its TPM"},
      {"imported", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_SENSITIVEDATAORIGIN; },
       "sensitiveDataOrigin"},
      {"RSA type", [](TPMT_PUBLIC& p) { p.type = TPM2_ALG_RSA; }, nullptr},
      {"SHA-1 name", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA1; }, "nameAlg"},
      {"storage parent",
       [](TPMT_PUBLIC& p) {
         p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
         p.parameters.eccDetail.symmetric.keyBits.aes = 128;
         p.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
       },
       "symmetric"},
      {"ECDSA-SHA384",
       [](TPMT_PUBLIC& p) {
         p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA384;
       },
       "ECDSA with SHA-256"},
      {"ECDAA", [](TPMT_PUBLIC& p) { p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDAA; },
       "ECDSA with SHA-256"},
      {"P-384", [](TPMT_PUBLIC& p) { p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384; },
       "curve"},
      {"KDF",
       [](TPMT_PUBLIC& p) {
         p.parameters.eccDetail.kdf.scheme = TPM2_ALG_KDF1_SP800_56A;
         p.parameters.eccDetail.kdf.details.kdf1_sp800_56a.hashAlg = TPM2_ALG_SHA256;
       },
       "KDF"},
      {"point off the curve", [](TPMT_PUBLIC& p) { p.unique.ecc.y.buffer[31] ^= 1; },
       "not on P-256"},
      {"empty point", [](TPMT_PUBLIC& p) { p.unique.ecc.x.size = 0; }, "coordinates"},
  };
  for (const AkCase& c : cases) {
    auto parsed = ParseAkPublic(AkPublicBytes(key->public_key(), c.edit));
    ASSERT_FALSE(parsed.ok()) << c.what;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kFailedPrecondition) << c.what;
    if (c.message != nullptr) {
      EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(c.message)) << c.what;
    }
  }
}

TEST(ParseAkPublic, RefusesMalformedBytes) {
  auto key = crypto::EcdsaP256PrivateKey::Generate();
  const Bytes good = AkPublicBytes(key->public_key());
  Bytes trailing = good;
  trailing.push_back(0);
  Bytes truncated(good.begin(), good.end() - 1);
  Bytes wrong_size = good;
  wrong_size[1] ^= 0x01;  // the TPM2B size no longer matches the structure
  for (const Bytes& bad : {trailing, truncated, wrong_size, Bytes{}, Bytes{0x00}}) {
    EXPECT_EQ(ParseAkPublic(bad).status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(ComputeName(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// ---- quotes ------------------------------------------------------------------------------------

TEST(VerifyQuote, AcceptsAWellFormedQuote) {
  QuoteBuilder q;
  const Bytes attest = QuoteBuilder::Marshal(q.Info());
  auto info = VerifyQuote(q.Ak(), attest, q.Sign(attest), q.nonce, q.pcrs);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->clock, 123456u);
  EXPECT_EQ(info->reset_count, 3u);
  EXPECT_EQ(info->restart_count, 1u);
  EXPECT_TRUE(info->safe);
  EXPECT_EQ(info->firmware_version, 0x2019102300000000ull);
  EXPECT_EQ(info->qualified_signer.size(), kNameSize);
}

// Expect runs VerifyQuote on an attest built from `edit`ed fields, correctly signed, and checks
// the status code and a message fragment.
void ExpectQuoteRejected(const QuoteBuilder& q, const std::function<void(TPMS_ATTEST&)>& edit,
                         absl::StatusCode code, const char* fragment) {
  TPMS_ATTEST info = q.Info();
  edit(info);
  const Bytes attest = QuoteBuilder::Marshal(info);
  auto result = VerifyQuote(q.Ak(), attest, q.Sign(attest), q.nonce, q.pcrs);
  ASSERT_FALSE(result.ok()) << fragment;
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(fragment));
}

TEST(VerifyQuote, EachFieldCheckHasItsOwnError) {
  QuoteBuilder q;
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.magic = 0xff544348; }, absl::StatusCode::kPermissionDenied,
      "magic");
  ExpectQuoteRejected(
      q,
      [](TPMS_ATTEST& a) {
        a.type = TPM2_ST_ATTEST_CERTIFY;
        a.attested.certify = TPMS_CERTIFY_INFO{};
      },
      absl::StatusCode::kFailedPrecondition, "not TPM_ST_ATTEST_QUOTE");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.extraData.buffer[0] ^= 1; }, absl::StatusCode::kPermissionDenied,
      "qualifying data");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.extraData.size = 31; }, absl::StatusCode::kPermissionDenied,
      "qualifying data");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.attested.quote.pcrSelect.pcrSelections[0].hash = TPM2_ALG_SHA1; },
      absl::StatusCode::kFailedPrecondition, "PCRs 0-15");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.attested.quote.pcrSelect.pcrSelections[0].pcrSelect[1] = 0x7f; },
      absl::StatusCode::kFailedPrecondition, "PCRs 0-15");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.attested.quote.pcrSelect.pcrSelections[0].pcrSelect[2] = 0x01; },
      absl::StatusCode::kFailedPrecondition, "PCRs 0-15");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.attested.quote.pcrSelect.pcrSelections[0].sizeofSelect = 1; },
      absl::StatusCode::kFailedPrecondition, "PCRs 0-15");
  ExpectQuoteRejected(
      q,
      [](TPMS_ATTEST& a) {
        a.attested.quote.pcrSelect.count = 2;
        a.attested.quote.pcrSelect.pcrSelections[1] = a.attested.quote.pcrSelect.pcrSelections[0];
        a.attested.quote.pcrSelect.pcrSelections[1].hash = TPM2_ALG_SHA384;
      },
      absl::StatusCode::kFailedPrecondition, "PCRs 0-15");
  ExpectQuoteRejected(
      q, [](TPMS_ATTEST& a) { a.attested.quote.pcrDigest.buffer[7] ^= 1; },
      absl::StatusCode::kPermissionDenied, "PCR digest");
}

TEST(VerifyQuote, PcrValuesMustMatchTheDigest) {
  QuoteBuilder q;
  const Bytes attest = QuoteBuilder::Marshal(q.Info());
  const Bytes sig = q.Sign(attest);
  for (size_t i : {0u, 7u, 15u}) {
    auto pcrs = q.pcrs;
    pcrs[i][31] ^= 1;
    auto result = VerifyQuote(q.Ak(), attest, sig, q.nonce, pcrs);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << i;
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("PCR digest"));
  }
  // Order matters: swapping two PCRs changes the digest.
  auto swapped = q.pcrs;
  std::swap(swapped[1], swapped[2]);
  EXPECT_FALSE(VerifyQuote(q.Ak(), attest, sig, q.nonce, swapped).ok());
}

TEST(VerifyQuote, SignatureIsCheckedBeforeAnyField) {
  QuoteBuilder q;
  const Bytes attest = QuoteBuilder::Marshal(q.Info());
  const Bytes sig = q.Sign(attest);
  auto expect_signature_error = [&](const Bytes& a, const Bytes& s, const AkPublic& ak) {
    auto result = VerifyQuote(ak, a, s, q.nonce, q.pcrs);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied);
    EXPECT_THAT(std::string(result.status().message()), HasSubstr("signature does not verify"));
  };
  // A flipped bit anywhere in the signed bytes: the signature fails first, even where the
  // field check would also fail (magic, nonce).
  for (size_t i : {size_t{0}, size_t{10}, attest.size() / 2, attest.size() - 1}) {
    Bytes tampered = attest;
    tampered[i] ^= 0x01;
    // A flip that breaks the structure is INVALID_ARGUMENT; every other one must fail on the
    // signature, never on a field check.
    auto result = VerifyQuote(q.Ak(), tampered, sig, q.nonce, q.pcrs);
    ASSERT_FALSE(result.ok()) << i;
    if (result.status().code() != absl::StatusCode::kInvalidArgument) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied) << i;
      EXPECT_THAT(std::string(result.status().message()), HasSubstr("signature")) << i;
    }
  }
  // Flipped signature bytes: in r, in s.
  TPMT_SIGNATURE raw = q.SignRaw(attest);
  TPMT_SIGNATURE bad_r = raw;
  bad_r.signature.ecdsa.signatureR.buffer[3] ^= 1;
  expect_signature_error(attest, QuoteBuilder::MarshalSignature(bad_r), q.Ak());
  TPMT_SIGNATURE bad_s = raw;
  bad_s.signature.ecdsa.signatureS.buffer[30] ^= 1;
  expect_signature_error(attest, QuoteBuilder::MarshalSignature(bad_s), q.Ak());
  // Another AK.
  QuoteBuilder other;
  expect_signature_error(attest, sig, other.Ak());
}

TEST(VerifyQuote, SignatureSchemeMustBeEcdsaSha256) {
  QuoteBuilder q;
  const Bytes attest = QuoteBuilder::Marshal(q.Info());
  TPMT_SIGNATURE sha384 = q.SignRaw(attest);
  sha384.signature.ecdsa.hash = TPM2_ALG_SHA384;
  auto result =
      VerifyQuote(q.Ak(), attest, QuoteBuilder::MarshalSignature(sha384), q.nonce, q.pcrs);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
  TPMT_SIGNATURE rsa{};
  rsa.sigAlg = TPM2_ALG_RSASSA;
  rsa.signature.rsassa.hash = TPM2_ALG_SHA256;
  rsa.signature.rsassa.sig.size = 256;
  result = VerifyQuote(q.Ak(), attest, QuoteBuilder::MarshalSignature(rsa), q.nonce, q.pcrs);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(VerifyQuote, RefusesMalformedInputs) {
  QuoteBuilder q;
  const Bytes attest = QuoteBuilder::Marshal(q.Info());
  const Bytes sig = q.Sign(attest);
  auto code = [&](const Bytes& a, const Bytes& s, const Bytes& nonce,
                  std::span<const PcrValue> pcrs) {
    return VerifyQuote(q.Ak(), a, s, nonce, pcrs).status().code();
  };
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  Bytes trailing = attest;
  trailing.push_back(0);
  EXPECT_EQ(code(trailing, sig, q.nonce, q.pcrs), kInvalid);
  EXPECT_EQ(code(Bytes(attest.begin(), attest.end() - 1), sig, q.nonce, q.pcrs), kInvalid);
  EXPECT_EQ(code(Bytes{}, sig, q.nonce, q.pcrs), kInvalid);
  Bytes sig_trailing = sig;
  sig_trailing.push_back(0);
  EXPECT_EQ(code(attest, sig_trailing, q.nonce, q.pcrs), kInvalid);
  EXPECT_EQ(code(attest, Bytes(sig.begin(), sig.end() - 1), q.nonce, q.pcrs), kInvalid);
  EXPECT_EQ(code(attest, sig, Bytes{}, q.pcrs), kInvalid);
  EXPECT_EQ(code(attest, sig, Bytes(kMaxQualifyingDataSize + 1, 0), q.pcrs), kInvalid);
  EXPECT_EQ(code(attest, sig, q.nonce, std::span(q.pcrs).first(15)), kInvalid);
  std::vector<PcrValue> seventeen(q.pcrs.begin(), q.pcrs.end());
  seventeen.push_back(PcrValue{});
  EXPECT_EQ(code(attest, sig, q.nonce, seventeen), kInvalid);
}

TEST(QuoteQualifyingData, BindsLabelNonceAndKeyHash) {
  const Bytes nonce(32, 0x11);
  const Bytes key_hash(32, 0x22);
  auto data = QuoteQualifyingData(nonce, key_hash);
  ASSERT_TRUE(data.ok()) << data.status();
  const std::string label = "keywarden-attest-v1";
  Bytes concatenated(label.begin(), label.end());
  concatenated.insert(concatenated.end(), nonce.begin(), nonce.end());
  concatenated.insert(concatenated.end(), key_hash.begin(), key_hash.end());
  EXPECT_EQ(*data, crypto::Sha256({concatenated}));
  Bytes other_hash = key_hash;
  other_hash[31] ^= 1;
  EXPECT_NE(*data, *QuoteQualifyingData(nonce, other_hash));
  EXPECT_EQ(QuoteQualifyingData({}, key_hash).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuoteQualifyingData(Bytes(65, 0), key_hash).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(QuoteQualifyingData(nonce, Bytes(31, 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(PcrDigest, IsSha256OfTheConcatenation) {
  const auto pcrs = SomePcrs();
  Bytes concatenated;
  for (const auto& p : pcrs) concatenated.insert(concatenated.end(), p.begin(), p.end());
  EXPECT_EQ(PcrDigest(pcrs), crypto::Sha256({concatenated}));
}

// ---- EK public area
// ------------------------------------------------------------------------------

Bytes EkPublicBytes(const std::function<void(TPMT_PUBLIC&)>& edit = nullptr) {
  TPM2B_PUBLIC pub = EkTemplate();
  for (size_t i = 0; i < 256; ++i)
    pub.publicArea.unique.rsa.buffer[i] = static_cast<uint8_t>(i | 1);
  pub.publicArea.unique.rsa.buffer[0] = 0xc5;
  if (edit) edit(pub.publicArea);
  return MarshalPublic(pub);
}

TEST(ParseEkPublic, AcceptsTheDefaultTemplate) {
  auto key = ParseEkPublic(EkPublicBytes());
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->modulus.size(), 256u);
  EXPECT_EQ(key->modulus[0], 0xc5);
  EXPECT_EQ(key->exponent, 65537u);
}

TEST(ParseEkPublic, RefusesEveryDeviationFromTheTemplate) {
  const std::vector<std::pair<const char*, std::function<void(TPMT_PUBLIC&)>>> cases = {
      {"userWithAuth", [](TPMT_PUBLIC& p) { p.objectAttributes |= TPMA_OBJECT_USERWITHAUTH; }},
      {"not restricted", [](TPMT_PUBLIC& p) { p.objectAttributes &= ~TPMA_OBJECT_RESTRICTED; }},
      {"policy", [](TPMT_PUBLIC& p) { p.authPolicy.buffer[0] ^= 1; }},
      {"no policy", [](TPMT_PUBLIC& p) { p.authPolicy.size = 0; }},
      {"AES-256", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.symmetric.keyBits.aes = 256; }},
      {"CBC", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CBC; }},
      {"OAEP scheme",
       [](TPMT_PUBLIC& p) {
         p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_OAEP;
         p.parameters.rsaDetail.scheme.details.oaep.hashAlg = TPM2_ALG_SHA256;
       }},
      {"RSA-3072", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.keyBits = 3072; }},
      {"exponent 3", [](TPMT_PUBLIC& p) { p.parameters.rsaDetail.exponent = 3; }},
      {"SHA-384 name", [](TPMT_PUBLIC& p) { p.nameAlg = TPM2_ALG_SHA384; }},
      {"short modulus", [](TPMT_PUBLIC& p) { p.unique.rsa.size = 255; }},
      {"small modulus", [](TPMT_PUBLIC& p) { p.unique.rsa.buffer[0] = 0x05; }},
  };
  for (const auto& [what, edit] : cases) {
    EXPECT_EQ(ParseEkPublic(EkPublicBytes(edit)).status().code(),
              absl::StatusCode::kFailedPrecondition)
        << what;
  }
  auto key = crypto::EcdsaP256PrivateKey::Generate();
  EXPECT_EQ(ParseEkPublic(AkPublicBytes(key->public_key())).status().code(),
            absl::StatusCode::kFailedPrecondition);
  Bytes trailing = EkPublicBytes();
  trailing.push_back(1);
  EXPECT_EQ(ParseEkPublic(trailing).status().code(), absl::StatusCode::kInvalidArgument);
}

// ---- EK certificates
// -----------------------------------------------------------------------------

// TestPki is a CA hierarchy made with the openssl CLI: root -> intermediate -> EK-shaped leaf
// certificates (critical subjectAltName with the TCG directoryName attributes, EKU
// tcg-kp-EKCertificate, keyUsage keyEncipherment), plus variants that must fail.
class TestPki {
 public:
  TestPki() {
    dir_.WriteFile("oids.cnf",
                   "openssl_conf = openssl_init\n[openssl_init]\noid_section = tcg_oids\n"
                   "[tcg_oids]\ntpmManufacturer = 2.23.133.2.1\ntpmModel = 2.23.133.2.2\n"
                   "tpmVersion = 2.23.133.2.3\n");
    dir_.WriteFile(
        "ext.cnf",
        "[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "[ek]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,keyEncipherment\n"
        "extendedKeyUsage=2.23.133.8.1\nsubjectAltName=critical,dirName:tpm_dn\n"
        "[ek_unknown]\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,keyEncipherment\n1.3.6.1.4.1.99999.1=critical,ASN1:NULL\n"
        "[tpm_dn]\ntpmManufacturer=id:00001014\ntpmModel=swtpm\n"
        "tpmVersion=id:20191023\n");
    // Keys are made once and shared (RSA key generation dominates the cost); the CAs use P-256.
    ok_ = RunOk({"openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                 "-out", "ek.key"}) &&
          RunOk({"openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072",
                 "-out", "rsa3072.key"}) &&
          RunOk({"openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-out", "p256.key"}) &&
          MakeCa("root", "") && MakeCa("int", "root") && MakeCa("other", "") &&
          MakeLeaf("ek", "ek.key", "int", "ek", "2") &&
          MakeLeaf("ek_other", "ek.key", "other", "ek", "2") &&
          MakeLeaf("ek_expired", "ek.key", "int", "ek", "-1") &&
          MakeLeaf("ek_unknown", "ek.key", "int", "ek_unknown", "2") &&
          MakeLeaf("ek_rsa3072", "rsa3072.key", "int", "ek", "2") &&
          MakeLeaf("ek_ec", "p256.key", "int", "ek", "2");
  }
  bool ok() const { return ok_; }

  std::string Pem(const std::string& name) const {
    return keywarden::testing::ReadFile(dir_ / (name + ".pem")).value_or("");
  }
  Bytes Der(const std::string& name) const {
    const std::string der = keywarden::testing::ReadFile(dir_ / (name + ".der")).value_or("");
    return Bytes(der.begin(), der.end());
  }
  // Modulus returns the hex modulus of a leaf's key as the openssl CLI prints it.
  std::string Modulus(const std::string& name) const {
    auto r = keywarden::testing::Run(
        {"openssl", "rsa", "-in", (dir_ / (name + ".key")).string(), "-noout", "-modulus"});
    std::string hex = r.stdout_text.substr(r.stdout_text.find('=') + 1);
    while (!hex.empty() && hex.back() == '\n') hex.pop_back();
    for (char& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return hex;
  }
  std::filesystem::path Key(const std::string& name) const { return dir_ / (name + ".key"); }

 private:
  bool RunOk(std::vector<std::string> argv) {
    keywarden::testing::RunOptions options;
    options.working_dir = dir_.path();
    options.env_overrides = {{"OPENSSL_CONF", (dir_ / "oids.cnf").string()}};
    const auto result = keywarden::testing::Run(std::move(argv), options);
    EXPECT_TRUE(result.ok()) << result;
    return result.ok();
  }
  bool MakeCa(const std::string& name, const std::string& issuer) {
    const std::vector<std::string> key = {
        "-newkey", "ec",      "-pkeyopt",   "ec_paramgen_curve:prime256v1",
        "-nodes",  "-keyout", name + ".key"};
    if (issuer.empty()) {
      std::vector<std::string> argv = {"openssl", "req", "-x509"};
      argv.insert(argv.end(), key.begin(), key.end());
      argv.insert(argv.end(), {"-out", name + ".pem", "-subj", "/CN=test " + name, "-days", "2",
                               "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
                               "keyUsage=critical,keyCertSign,cRLSign"});
      return RunOk(std::move(argv));
    }
    std::vector<std::string> argv = {"openssl", "req", "-new"};
    argv.insert(argv.end(), key.begin(), key.end());
    argv.insert(argv.end(), {"-out", name + ".csr", "-subj", "/CN=test " + name});
    return RunOk(std::move(argv)) &&
           RunOk({"openssl", "x509", "-req", "-in", name + ".csr", "-CA", issuer + ".pem", "-CAkey",
                  issuer + ".key", "-set_serial", "7", "-days", "2", "-extfile", "ext.cnf",
                  "-extensions", "ca", "-out", name + ".pem"});
  }
  // MakeLeaf issues a DER certificate `name`.der for the key file `key` with the extension
  // section `extensions`, valid for `days` days (-1: expired yesterday).
  bool MakeLeaf(const std::string& name, const std::string& key, const std::string& issuer,
                const std::string& extensions, const std::string& days) {
    return RunOk({"openssl", "req", "-new", "-key", key, "-out", name + ".csr", "-subj",
                  "/CN=" + name}) &&
           RunOk({"openssl",     "x509",          "-req",     "-in",           name + ".csr",
                  "-CA",         issuer + ".pem", "-CAkey",   issuer + ".key", "-set_serial",
                  "9",           "-days",         days,       "-extfile",      "ext.cnf",
                  "-extensions", extensions,      "-outform", "DER",           "-out",
                  name + ".der"});
  }

  keywarden::testing::TempDir dir_{"kw-test-pki"};
  bool ok_ = false;
};

class EkCertificateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { pki_ = new TestPki(); }
  static void TearDownTestSuite() {
    delete pki_;
    pki_ = nullptr;
  }
  void SetUp() override { ASSERT_TRUE(pki_->ok()); }
  std::string Bundle() const { return pki_->Pem("int") + pki_->Pem("root"); }
  static TestPki* pki_;
};
TestPki* EkCertificateTest::pki_ = nullptr;

TEST_F(EkCertificateTest, ChainsToTheBundleAndReturnsTheKey) {
  auto key = VerifyEkCertificate(pki_->Der("ek"), Bundle());
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(crypto::HexEncode(key->modulus), pki_->Modulus("ek"));
  EXPECT_EQ(key->exponent, 65537u);
  // The intermediate may come with the document instead of the bundle.
  const Bytes intermediate = [&] {
    auto r = keywarden::testing::Run({"openssl", "x509", "-outform", "DER"}, pki_->Pem("int"));
    return Bytes(r.stdout_text.begin(), r.stdout_text.end());
  }();
  EXPECT_TRUE(
      VerifyEkCertificate(pki_->Der("ek"), pki_->Pem("root"), std::vector<Bytes>{intermediate})
          .ok());
}

TEST_F(EkCertificateTest, RefusesOtherCasAndBrokenChains) {
  auto code_and_message = [](const absl::StatusOr<crypto::RsaPublicKey>& r) {
    return std::make_pair(r.status().code(), std::string(r.status().message()));
  };
  // Issued by another CA.
  auto other = code_and_message(VerifyEkCertificate(pki_->Der("ek_other"), Bundle()));
  EXPECT_EQ(other.first, absl::StatusCode::kPermissionDenied);
  // Trusting only the other CA.
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek"), pki_->Pem("other")).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Root only, intermediate missing.
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek"), pki_->Pem("root")).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Expired.
  auto expired = code_and_message(VerifyEkCertificate(pki_->Der("ek_expired"), Bundle()));
  EXPECT_EQ(expired.first, absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(expired.second, HasSubstr("expired"));
  // An unknown critical extension fails closed.
  auto unknown = code_and_message(VerifyEkCertificate(pki_->Der("ek_unknown"), Bundle()));
  EXPECT_EQ(unknown.first, absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(unknown.second, HasSubstr("critical extension"));
}

TEST_F(EkCertificateTest, RefusesKeysOtherThanRsa2048) {
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek_rsa3072"), Bundle()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek_ec"), Bundle()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(EkCertificateTest, RefusesMalformedInput) {
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  Bytes trailing = pki_->Der("ek");
  trailing.push_back(0);  // e.g. NV padding left on
  EXPECT_EQ(VerifyEkCertificate(trailing, Bundle()).status().code(), kInvalid);
  Bytes truncated = pki_->Der("ek");
  truncated.resize(truncated.size() - 10);
  EXPECT_EQ(VerifyEkCertificate(truncated, Bundle()).status().code(), kInvalid);
  EXPECT_EQ(VerifyEkCertificate(Bytes{}, Bundle()).status().code(), kInvalid);
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek"), "").status().code(), kInvalid);
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek"), "not a certificate").status().code(), kInvalid);
  EXPECT_EQ(VerifyEkCertificate(pki_->Der("ek"), Bundle() + "-----BEGIN CERTIFICATE-----\nAAAA\n")
                .status()
                .code(),
            kInvalid);
}

// ---- MakeCredential ----------------------------------------------------------------------------

TpmName SomeName(uint8_t fill) {
  TpmName name{};
  name[1] = 0x0b;
  std::fill(name.begin() + 2, name.end(), fill);
  return name;
}

TEST(MakeCredentialBlob, FollowsPart1Section24) {
  // Re-derive every piece from the seed with the primitives and check the blob's layout:
  // TPM2B_DIGEST(outerHMAC) || AES-128-CFB(KDFa(seed,"STORAGE",name,,128), 0, TPM2B(secret)),
  // outerHMAC = HMAC(KDFa(seed,"INTEGRITY",,,256), encIdentity || name).
  const SecretBytes seed = *crypto::RandomSecret(32);
  const SecretBytes secret = *crypto::RandomSecret(32);
  const TpmName name = SomeName(0x42);
  auto blob = internal::MakeCredentialBlob(name, secret, seed);
  ASSERT_TRUE(blob.ok()) << blob.status();
  ASSERT_EQ(blob->size(), 2u + 32u + 2u + 32u);
  EXPECT_EQ((*blob)[0], 0x00);
  EXPECT_EQ((*blob)[1], 0x20);
  const std::span<const uint8_t> outer_hmac = std::span(*blob).subspan(2, 32);
  const std::span<const uint8_t> enc_identity = std::span(*blob).subspan(34);

  auto hmac_key = crypto::KdfaSha256(seed, "INTEGRITY", {}, {}, 256);
  auto hmac = crypto::HmacSha256::New(*hmac_key);
  Bytes mac_input(enc_identity.begin(), enc_identity.end());
  mac_input.insert(mac_input.end(), name.begin(), name.end());
  EXPECT_TRUE((*hmac)->Verify(outer_hmac, mac_input).ok());

  auto sym_key = crypto::KdfaSha256(seed, "STORAGE", name, {}, 128);
  ASSERT_EQ(sym_key->size(), 16u);
  const std::array<uint8_t, 16> iv{};
  auto plain = crypto::AesCfbDecrypt(*sym_key, iv, enc_identity);
  ASSERT_TRUE(plain.ok());
  const auto p = plain->Reveal(kToken);
  EXPECT_EQ(p[0], 0x00);
  EXPECT_EQ(p[1], 32);
  EXPECT_TRUE(std::equal(p.begin() + 2, p.end(), secret.Reveal(kToken).begin()));
}

TEST(MakeCredentialBlob, NameAndSeedChangeEverything) {
  const SecretBytes seed = *crypto::RandomSecret(32);
  const SecretBytes secret = *crypto::RandomSecret(16);
  auto a = internal::MakeCredentialBlob(SomeName(1), secret, seed);
  auto b = internal::MakeCredentialBlob(SomeName(2), secret, seed);
  auto c = internal::MakeCredentialBlob(SomeName(1), secret, *crypto::RandomSecret(32));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->size(), 2u + 32u + 2u + 16u);
  // A different name changes the HMAC and the encryption key.
  EXPECT_FALSE(std::equal(a->begin(), a->begin() + 34, b->begin()));
  EXPECT_FALSE(std::equal(a->begin() + 34, a->end(), b->begin() + 34));
  EXPECT_NE(*a, *c);
  // Deterministic for a given seed.
  EXPECT_EQ(*a, *internal::MakeCredentialBlob(SomeName(1), secret, seed));
}

TEST_F(EkCertificateTest, MakeCredentialSeedIsOaepEncryptedToTheEk) {
  // Decrypt encrypted_secret with the EK's private key (openssl CLI, OAEP-SHA256, label
  // "IDENTITY\0") and check that the seed inside produces exactly the blob.
  auto ek = VerifyEkCertificate(pki_->Der("ek"), Bundle());
  ASSERT_TRUE(ek.ok());
  const SecretBytes secret = *crypto::RandomSecret(32);
  const TpmName name = SomeName(0x77);
  auto credential = MakeCredential(*ek, name, secret);
  ASSERT_TRUE(credential.ok()) << credential.status();
  EXPECT_EQ(credential->encrypted_secret.size(), 256u);
  keywarden::testing::TempDir dir;
  const auto ct = dir.WriteFile(
      "ct", std::string(credential->encrypted_secret.begin(), credential->encrypted_secret.end()));
  auto r = keywarden::testing::Run(
      {"openssl", "pkeyutl", "-decrypt", "-inkey", pki_->Key("ek").string(), "-in", ct.string(),
       "-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt",
       "rsa_mgf1_md:sha256", "-pkeyopt", "rsa_oaep_label:4944454e5449545900"});
  ASSERT_TRUE(r.ok()) << r;
  ASSERT_EQ(r.stdout_text.size(), 32u);
  const SecretBytes seed(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(r.stdout_text.data()), r.stdout_text.size()));
  EXPECT_EQ(credential->blob, *internal::MakeCredentialBlob(name, secret, seed));
}

TEST(MakeCredential, RefusesBadInputs) {
  crypto::RsaPublicKey ek;
  ek.modulus.assign(256, 0xab);
  ek.exponent = 65537;
  const TpmName name = SomeName(3);
  const auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(MakeCredential(ek, name, SecretBytes()).status().code(), kInvalid);
  EXPECT_EQ(MakeCredential(ek, name, SecretBytes(kMaxCredentialSecretSize + 1)).status().code(),
            kInvalid);
  EXPECT_EQ(MakeCredential(ek, std::span(name).first(33), SecretBytes(32)).status().code(),
            kInvalid);
  TpmName sha1_name = name;
  sha1_name[1] = 0x04;
  EXPECT_EQ(MakeCredential(ek, sha1_name, SecretBytes(32)).status().code(), kInvalid);
  crypto::RsaPublicKey big = ek;
  big.modulus.assign(384, 0xab);
  EXPECT_EQ(MakeCredential(big, name, SecretBytes(32)).status().code(), kInvalid);
  crypto::RsaPublicKey small_top = ek;
  small_top.modulus[0] = 0x01;  // 2041 bits
  EXPECT_EQ(MakeCredential(small_top, name, SecretBytes(32)).status().code(), kInvalid);
}

}  // namespace
}  // namespace keywarden::attest
