// Integration tests of the attestation core against real TPMs: swtpm instances manufactured
// with EK certificates from local CAs (tests/swtpm.h). No part of the TPM is mocked. Each test
// starts its own TPMs (a few hundred ms each) so that tests stay independent under ctest.
//
// What is checked here that the unit tests cannot: that Keywarden's reading of the TCG specs
// (EK template, Names, quote layout, KDFa/CFB/HMAC/OAEP of MakeCredential) is the TPM's.

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "keywarden/attest/measurements.h"
#include "keywarden/attest/tpm.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/attest/verify.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/crypto/x509.h"
#include "keywarden/keys/hierarchy.h"
#include "tests/swtpm.h"

namespace keywarden::attest {
namespace {

using ::keywarden::testing::SwtpmCa;
using ::keywarden::testing::SwtpmInstance;
using ::testing::HasSubstr;
using Bytes = std::vector<uint8_t>;

const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

std::unique_ptr<Tpm> OpenTpm(const SwtpmInstance& instance) {
  auto tpm = Tpm::Open(instance.tcti());
  EXPECT_TRUE(tpm.ok()) << tpm.status() << "\n" << instance.LogTail();
  return tpm.ok() ? std::move(tpm).value() : nullptr;
}

std::string Bundle(const SwtpmInstance& instance) {
  return keywarden::testing::ReadFile(instance.ca_bundle()).value_or("");
}

Bytes RandomBytes(size_t n) {
  Bytes b(n);
  EXPECT_TRUE(crypto::RandomFill(b).ok());
  return b;
}

PcrValue Hash(std::initializer_list<std::span<const uint8_t>> parts) {
  return crypto::Sha256(parts);
}

std::span<const PcrValue> Quoted(const PcrBank& bank) {
  return std::span<const PcrValue>(bank).first(kQuotedPcrCount);
}

// TpmPcrsViaTools reads the SHA-256 bank with tpm2_pcrread, an independent reader.
std::map<int, std::string> TpmPcrsViaTools(const SwtpmInstance& instance) {
  const auto result = instance.Tpm2Tool({"tpm2_pcrread", "sha256"});
  EXPECT_TRUE(result.ok()) << result;
  std::map<int, std::string> out;
  const std::regex line(R"(^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]{64})\s*$)");
  std::istringstream in(result.stdout_text);
  for (std::string l; std::getline(in, l);) {
    std::smatch m;
    if (std::regex_match(l, m, line)) {
      std::string hex = m[2];
      for (char& c : hex) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      out[std::stoi(m[1])] = hex;
    }
  }
  return out;
}

// ---- PCRs ---------------------------------------------------------------------------------------

TEST(TpmPcrs, FreshTpmMatchesTpm2Tools) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  PcrBank bank;
  {
    auto tpm = OpenTpm(instance);
    ASSERT_NE(tpm, nullptr);
    auto read = tpm->ReadPcrs();
    ASSERT_TRUE(read.ok()) << read.status();
    bank = *read;
  }  // swtpm serves one client at a time: close before tpm2-tools connects
  const PcrValue zero{};
  PcrValue ones;
  ones.fill(0xff);
  for (size_t i = 0; i < kPcrCount; ++i) {
    // PC Client: PCRs 17-22 (D-RTM) start at all ones, the others at zero.
    EXPECT_EQ(bank[i], (i >= 17 && i <= 22) ? ones : zero) << "PCR " << i;
  }
  const auto tools = TpmPcrsViaTools(instance);
  ASSERT_EQ(tools.size(), kPcrCount);
  for (size_t i = 0; i < kPcrCount; ++i) {
    EXPECT_EQ(crypto::HexEncode(bank[i]), tools.at(static_cast<int>(i))) << "PCR " << i;
  }
}

TEST(TpmPcrs, PcrEventOnPcr15IsTheClusterIdMeasurement) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  auto tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  const Bytes cluster_id = RandomBytes(32);
  ASSERT_TRUE(tpm->ExtendPcr15WithEvent(cluster_id).ok());
  auto bank = tpm->ReadPcrs();
  ASSERT_TRUE(bank.ok());
  // A fresh TPM: PCR15 = SHA256(0^32 || SHA256(clusterID)), what `keywarden derive pcr15`
  // prints (keys::ExpectedPcr15).
  const PcrValue zero{};
  EXPECT_EQ((*bank)[15], Hash({zero, Hash({cluster_id})}));
  EXPECT_EQ((*bank)[15], keys::ExpectedPcr15(cluster_id));
  for (size_t i = 0; i < 15; ++i) EXPECT_EQ((*bank)[i], zero) << "PCR " << i << " changed";

  // Any later event: PCR15 = SHA256(old || SHA256(data)), up to TPM2B_EVENT's 1024 bytes.
  const Bytes big = RandomBytes(kMaxPcrEventSize);
  ASSERT_TRUE(tpm->ExtendPcr15WithEvent(big).ok());
  auto after = tpm->ReadPcrs();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ((*after)[15], Hash({(*bank)[15], Hash({big})}));

  EXPECT_EQ(tpm->ExtendPcr15WithEvent(RandomBytes(kMaxPcrEventSize + 1)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tpm->ExtendPcr15WithEvent({}).code(), absl::StatusCode::kInvalidArgument);
  auto unchanged = tpm->ReadPcrs();
  EXPECT_EQ((*unchanged)[15], (*after)[15]);

  // A reboot (TPM2_Startup(CLEAR)) resets PCR 15.
  tpm.reset();
  ASSERT_TRUE(instance.Restart());
  tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  EXPECT_EQ((*tpm->ReadPcrs())[15], zero);
}

// ---- quotes -------------------------------------------------------------------------------------

TEST(TpmQuote, VerifiesAndEveryTamperingFails) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  auto tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  EXPECT_EQ(tpm->Quote(RandomBytes(32)).status().code(), absl::StatusCode::kFailedPrecondition);

  auto ak_info = tpm->CreateAk();
  ASSERT_TRUE(ak_info.ok()) << ak_info.status();
  auto ak = ParseAkPublic(ak_info->tpm2b_public);
  ASSERT_TRUE(ak.ok()) << ak.status();
  EXPECT_EQ(ak->name, ak_info->name);  // our Name computation agrees with ESAPI's

  ASSERT_TRUE(tpm->ExtendPcr15WithEvent(RandomBytes(32)).ok());
  auto bank = tpm->ReadPcrs();
  ASSERT_TRUE(bank.ok());
  const Bytes nonce = RandomBytes(32);
  auto quote = tpm->Quote(nonce);
  ASSERT_TRUE(quote.ok()) << quote.status();
  auto info = VerifyQuote(*ak, quote->attest, quote->signature, nonce, Quoted(*bank));
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->safe);

  // The quote's qualifiedSigner is the AK's Qualified Name under the EK (Part 1 §16):
  // QN(EK) = 000B || SHA256(TPM_RH_ENDORSEMENT || Name(EK)); QN(AK) = 000B || SHA256(QN(EK) ||
  // Name(AK)). This pins down that the AK really is the EK's child.
  auto ek_public = tpm->EkPublic();
  ASSERT_TRUE(ek_public.ok());
  const TpmName ek_name = *ComputeName(*ek_public);
  const Bytes endorsement = {0x40, 0x00, 0x00, 0x0b};
  const auto qn_ek_digest = Hash({endorsement, ek_name});
  Bytes qn_ek = {0x00, 0x0b};
  qn_ek.insert(qn_ek.end(), qn_ek_digest.begin(), qn_ek_digest.end());
  const auto qn_ak_digest = Hash({qn_ek, ak->name});
  Bytes qn_ak = {0x00, 0x0b};
  qn_ak.insert(qn_ak.end(), qn_ak_digest.begin(), qn_ak_digest.end());
  EXPECT_EQ(info->qualified_signer, qn_ak);

  auto expect = [&](const absl::StatusOr<QuoteInfo>& r, absl::StatusCode code,
                    const char* fragment) {
    ASSERT_FALSE(r.ok()) << fragment;
    EXPECT_EQ(r.status().code(), code) << r.status();
    EXPECT_THAT(std::string(r.status().message()), HasSubstr(fragment));
  };
  // Another nonce (a replayed quote).
  expect(VerifyQuote(*ak, quote->attest, quote->signature, RandomBytes(32), Quoted(*bank)),
         absl::StatusCode::kPermissionDenied, "qualifying data");
  // Other PCR values: a node claiming a fresh PCR 15, or a changed PCR 0.
  PcrBank claimed = *bank;
  claimed[15] = PcrValue{};
  expect(VerifyQuote(*ak, quote->attest, quote->signature, nonce, Quoted(claimed)),
         absl::StatusCode::kPermissionDenied, "PCR digest");
  claimed = *bank;
  claimed[0][0] ^= 1;
  expect(VerifyQuote(*ak, quote->attest, quote->signature, nonce, Quoted(claimed)),
         absl::StatusCode::kPermissionDenied, "PCR digest");
  // A flipped signature byte (the last byte of s).
  Bytes bad_signature = quote->signature;
  bad_signature.back() ^= 0x01;
  expect(VerifyQuote(*ak, quote->attest, bad_signature, nonce, Quoted(*bank)),
         absl::StatusCode::kPermissionDenied, "signature");
  // A flipped attest byte (in the clock info).
  Bytes bad_attest = quote->attest;
  bad_attest[bad_attest.size() - 40] ^= 0x01;
  EXPECT_FALSE(VerifyQuote(*ak, bad_attest, quote->signature, nonce, Quoted(*bank)).ok());

  // Another AK: a second AK of the same TPM does not verify the first one's quote.
  auto ak2_info = tpm->CreateAk();
  ASSERT_TRUE(ak2_info.ok()) << ak2_info.status();
  EXPECT_NE(ak2_info->name, ak_info->name);
  auto ak2 = ParseAkPublic(ak2_info->tpm2b_public);
  ASSERT_TRUE(ak2.ok());
  expect(VerifyQuote(*ak2, quote->attest, quote->signature, nonce, Quoted(*bank)),
         absl::StatusCode::kPermissionDenied, "signature");
  // ... and signs its own quotes, which verify with it only.
  auto quote2 = tpm->Quote(nonce);
  ASSERT_TRUE(quote2.ok());
  EXPECT_TRUE(VerifyQuote(*ak2, quote2->attest, quote2->signature, nonce, Quoted(*bank)).ok());
  expect(VerifyQuote(*ak, quote2->attest, quote2->signature, nonce, Quoted(*bank)),
         absl::StatusCode::kPermissionDenied, "signature");

  // After a PCR change the old values no longer match a new quote.
  ASSERT_TRUE(tpm->ExtendPcr15WithEvent(RandomBytes(8)).ok());
  auto quote3 = tpm->Quote(nonce);
  ASSERT_TRUE(quote3.ok());
  expect(VerifyQuote(*ak2, quote3->attest, quote3->signature, nonce, Quoted(*bank)),
         absl::StatusCode::kPermissionDenied, "PCR digest");

  // Qualifying data sizes: 64 bytes is the most.
  const Bytes long_nonce = RandomBytes(kMaxQualifyingDataSize);
  auto quote4 = tpm->Quote(long_nonce);
  ASSERT_TRUE(quote4.ok()) << quote4.status();
  EXPECT_TRUE(
      VerifyQuote(*ak2, quote4->attest, quote4->signature, long_nonce, Quoted(*tpm->ReadPcrs()))
          .ok());
  EXPECT_EQ(tpm->Quote(RandomBytes(kMaxQualifyingDataSize + 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tpm->Quote({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TpmQuote, MeasurementsFromReadPcrsMatchTheQuote) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  auto tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  auto ak_info = tpm->CreateAk();
  ASSERT_TRUE(ak_info.ok());
  auto bank = tpm->ReadPcrs();
  ASSERT_TRUE(bank.ok());
  // `keywarden measurements read` output, parsed back, accepts this TPM's quoted PCRs...
  auto measurements = ParseMeasurementsJson(ToJson(*bank));
  ASSERT_TRUE(measurements.ok()) << measurements.status();
  const Bytes nonce = RandomBytes(32);
  auto quote = tpm->Quote(nonce);
  ASSERT_TRUE(quote.ok());
  ASSERT_TRUE(VerifyQuote(*ParseAkPublic(ak_info->tpm2b_public), quote->attest, quote->signature,
                          nonce, Quoted(*bank))
                  .ok());
  EXPECT_TRUE(Compare(*measurements, *bank).ok());
  // ... and refuses it once the node measured a clusterID into PCR 15.
  ASSERT_TRUE(tpm->ExtendPcr15WithEvent(RandomBytes(32)).ok());
  const Comparison after = Compare(*measurements, *tpm->ReadPcrs());
  ASSERT_EQ(after.failures.size(), 1u);
  EXPECT_EQ(after.failures[0].index, 15u);
}

// ---- EK and its certificate ------------------------------------------------------------------

TEST(TpmEk, CertificateChainsToItsOwnCaOnly) {
  auto ca = std::make_shared<SwtpmCa>();
  auto other_ca = std::make_shared<SwtpmCa>();
  SwtpmInstance node(ca);
  SwtpmInstance foreign(other_ca);  // a TPM whose EK comes from an unknown CA
  ASSERT_TRUE(node.Start());
  ASSERT_TRUE(foreign.Start());
  auto tpm = OpenTpm(node);
  auto foreign_tpm = OpenTpm(foreign);
  ASSERT_NE(tpm, nullptr);
  ASSERT_NE(foreign_tpm, nullptr);

  auto cert = tpm->ReadEkCertificate();
  ASSERT_TRUE(cert.ok()) << cert.status();
  auto key = VerifyEkCertificate(*cert, Bundle(node));
  ASSERT_TRUE(key.ok()) << key.status();
  // The certified key is the EK the TPM uses.
  auto ek_public = tpm->EkPublic();
  ASSERT_TRUE(ek_public.ok()) << ek_public.status();
  auto ek_key = ParseEkPublic(*ek_public);
  ASSERT_TRUE(ek_key.ok()) << ek_key.status();
  EXPECT_EQ(*key, *ek_key);

  // Not by the other CA, even though its certificates carry the same names
  // (swtpm-localca-rootca / swtpm-localca): only the signatures differ.
  auto wrong = VerifyEkCertificate(*cert, Bundle(foreign));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied) << wrong.status();
  auto foreign_cert = foreign_tpm->ReadEkCertificate();
  ASSERT_TRUE(foreign_cert.ok());
  EXPECT_EQ(VerifyEkCertificate(*foreign_cert, Bundle(node)).status().code(),
            absl::StatusCode::kPermissionDenied);
  EXPECT_TRUE(VerifyEkCertificate(*foreign_cert, Bundle(foreign)).ok());
  // The root alone is not enough: swtpm signs EK certificates with the intermediate.
  const auto root_only = keywarden::testing::ReadFile(ca->root_cert()).value_or("");
  EXPECT_EQ(VerifyEkCertificate(*cert, root_only).status().code(),
            absl::StatusCode::kPermissionDenied);

  // swtpm also stores a certificate for its ECC (P-384) EK; it chains, but it is not the RSA EK
  // Keywarden uses.
  auto ecc_cert = tpm->ReadNvCertificate(kEccP384EkCertificateNvIndex);
  ASSERT_TRUE(ecc_cert.ok()) << ecc_cert.status();
  EXPECT_EQ(VerifyEkCertificate(*ecc_cert, Bundle(node)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(tpm->ReadNvCertificate(kEccEkCertificateNvIndex).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(tpm->ReadNvCertificate(0x81000000).status().code(), absl::StatusCode::kInvalidArgument);
}

// The parsed-once CA store gives exactly the answers of the per-call PEM form, every time:
// nothing it keeps turns a refusal into an acceptance (or back).
TEST(TpmEk, CaStoreAgreesWithThePemFormOnEveryCall) {
  auto ca = std::make_shared<SwtpmCa>();
  SwtpmInstance node(ca);
  SwtpmInstance foreign;  // its own CA
  ASSERT_TRUE(node.Start());
  ASSERT_TRUE(foreign.Start());
  auto tpm = OpenTpm(node);
  auto foreign_tpm = OpenTpm(foreign);
  ASSERT_NE(tpm, nullptr);
  ASSERT_NE(foreign_tpm, nullptr);
  auto cert = tpm->ReadEkCertificate();
  auto foreign_cert = foreign_tpm->ReadEkCertificate();
  ASSERT_TRUE(cert.ok() && foreign_cert.ok());
  auto store = crypto::CaStore::FromPem(Bundle(node));
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->anchor_count(), 2u);
  for (int round = 0; round < 3; ++round) {  // later rounds reuse the parsed leaves
    auto key = VerifyEkCertificate(*cert, **store);
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(*key, *VerifyEkCertificate(*cert, Bundle(node)));
    EXPECT_EQ(VerifyEkCertificate(*foreign_cert, **store).status().code(),
              absl::StatusCode::kPermissionDenied);
    std::vector<uint8_t> tampered = *cert;
    tampered[tampered.size() - 10] ^= 1;  // inside the signature
    EXPECT_FALSE(VerifyEkCertificate(tampered, **store).ok());
  }
  // A store of the root alone refuses (swtpm signs with the intermediate), as the PEM form does.
  auto root_only =
      crypto::CaStore::FromPem(keywarden::testing::ReadFile(ca->root_cert()).value_or(""));
  ASSERT_TRUE(root_only.ok());
  EXPECT_EQ(VerifyEkCertificate(*cert, **root_only).status().code(),
            absl::StatusCode::kPermissionDenied);
  // Bundles that are not PEM certificates are refused when parsed.
  EXPECT_EQ(crypto::CaStore::FromPem("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      crypto::CaStore::FromPem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
          .status()
          .code(),
      absl::StatusCode::kInvalidArgument);
  // A validator given a damaged bundle refuses every document.
  TpmValidator broken("not a bundle", Measurements{}, Pcr15Rule{});
  std::array<uint8_t, 32> zeros{};
  EXPECT_EQ(broken.Validate("x", zeros, zeros).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST(TpmEk, TemplateEkEqualsThePersistentEk) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  Bytes persistent_public;
  {
    auto tpm = OpenTpm(instance);
    ASSERT_NE(tpm, nullptr);
    auto pub = tpm->EkPublic();  // swtpm_setup left the EK at 0x81010001
    ASSERT_TRUE(pub.ok()) << pub.status();
    persistent_public = *pub;
  }
  // Remove the persistent EK: the next Tpm must create it from the default template, and get
  // the very same key (the EK certificate's key).
  const auto evict = instance.Tpm2Tool({"tpm2_evictcontrol", "-C", "o", "-c", "0x81010001"});
  ASSERT_TRUE(evict.ok()) << evict;
  const auto handles = instance.Tpm2Tool({"tpm2_getcap", "handles-persistent"});
  ASSERT_TRUE(handles.ok());
  ASSERT_EQ(handles.stdout_text.find("0x81010001"), std::string::npos);

  auto tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  auto created = tpm->EkPublic();
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(*created, persistent_public);
  auto cert = tpm->ReadEkCertificate();
  ASSERT_TRUE(cert.ok());
  auto key = VerifyEkCertificate(*cert, Bundle(instance));
  ASSERT_TRUE(key.ok());
  EXPECT_EQ(*key, *ParseEkPublic(*created));

  // The transient EK works for credential activation too.
  auto ak = tpm->CreateAk();
  ASSERT_TRUE(ak.ok()) << ak.status();
  auto secret = crypto::RandomSecret(32);
  auto credential = MakeCredential(*key, ak->name, *secret);
  ASSERT_TRUE(credential.ok());
  auto recovered = tpm->ActivateCredential(credential->blob, credential->encrypted_secret);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_TRUE(std::ranges::equal(recovered->Reveal(kToken), secret->Reveal(kToken)));
}

// ---- credential activation -------------------------------------------------------------------

TEST(TpmCredential, SoftwareMakeCredentialAndTpmActivateCredentialAgree) {
  auto ca = std::make_shared<SwtpmCa>();
  SwtpmInstance node(ca);
  SwtpmInstance other(ca);
  ASSERT_TRUE(node.Start());
  ASSERT_TRUE(other.Start());
  auto tpm = OpenTpm(node);
  auto other_tpm = OpenTpm(other);
  ASSERT_NE(tpm, nullptr);
  ASSERT_NE(other_tpm, nullptr);
  auto ek = VerifyEkCertificate(*tpm->ReadEkCertificate(), Bundle(node));
  auto other_ek = VerifyEkCertificate(*other_tpm->ReadEkCertificate(), Bundle(other));
  ASSERT_TRUE(ek.ok() && other_ek.ok());
  ASSERT_NE(*ek, *other_ek);

  EXPECT_EQ(tpm->ActivateCredential(Bytes(68, 1), Bytes(256, 1)).status().code(),
            absl::StatusCode::kFailedPrecondition);  // no AK yet
  auto ak = tpm->CreateAk();
  auto other_ak = other_tpm->CreateAk();
  ASSERT_TRUE(ak.ok() && other_ak.ok());

  // The secret comes back, for every size the TPM accepts.
  for (size_t size : {size_t{1}, size_t{16}, kMaxCredentialSecretSize}) {
    auto secret = crypto::RandomSecret(size);
    auto credential = MakeCredential(*ek, ak->name, *secret);
    ASSERT_TRUE(credential.ok()) << credential.status();
    auto recovered = tpm->ActivateCredential(credential->blob, credential->encrypted_secret);
    ASSERT_TRUE(recovered.ok()) << size << ": " << recovered.status();
    EXPECT_TRUE(std::ranges::equal(recovered->Reveal(kToken), secret->Reveal(kToken))) << size;
  }

  auto secret = crypto::RandomSecret(32);
  auto refused = [&](const Bytes& blob, const Bytes& encrypted, const char* what) {
    auto r = tpm->ActivateCredential(blob, encrypted);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << what << ": " << r.status();
  };
  // Made for another AK Name (the other TPM's AK): the TPM's integrity check fails.
  auto for_other_ak = MakeCredential(*ek, other_ak->name, *secret);
  ASSERT_TRUE(for_other_ak.ok());
  refused(for_other_ak->blob, for_other_ak->encrypted_secret, "other AK name");
  // Made to another TPM's EK with this AK's Name: the seed does not decrypt.
  auto for_other_ek = MakeCredential(*other_ek, ak->name, *secret);
  ASSERT_TRUE(for_other_ek.ok());
  refused(for_other_ek->blob, for_other_ek->encrypted_secret, "other EK");
  // ... while that TPM cannot use it either (its AK has another Name).
  EXPECT_EQ(other_tpm->ActivateCredential(for_other_ek->blob, for_other_ek->encrypted_secret)
                .status()
                .code(),
            absl::StatusCode::kPermissionDenied);
  // Tampering: the outer HMAC, the encrypted identity, the encrypted seed.
  auto good = MakeCredential(*ek, ak->name, *secret);
  ASSERT_TRUE(good.ok());
  for (size_t i : {size_t{5}, size_t{40}, good->blob.size() - 1}) {
    Bytes blob = good->blob;
    blob[i] ^= 0x01;
    refused(blob, good->encrypted_secret, "tampered blob");
  }
  Bytes encrypted = good->encrypted_secret;
  encrypted[100] ^= 0x01;
  refused(good->blob, encrypted, "tampered seed");
  // The untampered credential still works after all those refusals...
  auto recovered = tpm->ActivateCredential(good->blob, good->encrypted_secret);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_TRUE(std::ranges::equal(recovered->Reveal(kToken), secret->Reveal(kToken)));
  // ... but not once the AK it names is replaced.
  ASSERT_TRUE(tpm->CreateAk().ok());
  refused(good->blob, good->encrypted_secret, "replaced AK");
}

// ---- resources, concurrency and failures -----------------------------------------------------

TEST(TpmResources, NothingStaysLoaded) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  {
    auto tpm = OpenTpm(instance);
    ASSERT_NE(tpm, nullptr);
    // More operations than the TPM has object slots (3) or a leak would show up as 0x902.
    for (int round = 0; round < 3; ++round) {
      auto ak = tpm->CreateAk();
      ASSERT_TRUE(ak.ok()) << round << ": " << ak.status();
      auto ek = VerifyEkCertificate(*tpm->ReadEkCertificate(), Bundle(instance));
      ASSERT_TRUE(ek.ok());
      for (int i = 0; i < 4; ++i) {
        ASSERT_TRUE(tpm->Quote(RandomBytes(32)).ok()) << round << "/" << i;
        auto credential = MakeCredential(*ek, ak->name, *crypto::RandomSecret(32));
        ASSERT_TRUE(tpm->ActivateCredential(credential->blob, credential->encrypted_secret).ok());
      }
      // A refused activation must not leak its objects and session either.
      auto wrong = MakeCredential(*ek, ak->name, *crypto::RandomSecret(32));
      wrong->blob[3] ^= 1;
      EXPECT_FALSE(tpm->ActivateCredential(wrong->blob, wrong->encrypted_secret).ok());
    }
  }
  for (const char* what : {"handles-transient", "handles-loaded-session"}) {
    const auto r = instance.Tpm2Tool({"tpm2_getcap", what});
    ASSERT_TRUE(r.ok()) << r;
    EXPECT_EQ(r.stdout_text.find("0x"), std::string::npos) << what << ":\n" << r.stdout_text;
  }
}

TEST(TpmResources, ATpmResetInvalidatesTheSavedAk) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  auto tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  ASSERT_TRUE(tpm->CreateAk().ok());
  ASSERT_TRUE(tpm->Quote(RandomBytes(32)).ok());
  tpm.reset();
  ASSERT_TRUE(instance.Restart());
  // A Tpm opened before the reset would hold a context the TPM no longer accepts; a new Tpm
  // has no AK until it creates one.
  tpm = OpenTpm(instance);
  ASSERT_NE(tpm, nullptr);
  EXPECT_EQ(tpm->Quote(RandomBytes(32)).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(tpm->CreateAk().ok());
  EXPECT_TRUE(tpm->Quote(RandomBytes(32)).ok());
}

TEST(TpmResources, TwoTpmsQuoteConcurrently) {
  auto ca = std::make_shared<SwtpmCa>();
  SwtpmInstance a(ca);
  SwtpmInstance b(ca);
  ASSERT_TRUE(a.Start());
  ASSERT_TRUE(b.Start());
  ASSERT_NE(a.port(), b.port());
  struct Result {
    AkInfo ak;
    attest::Quote quote;
    PcrBank bank;
    absl::Status status;
  };
  const Bytes nonce = RandomBytes(32);
  auto work = [&nonce](const std::string& tcti, Result* out) {
    // One Tpm per thread (Tpm is thread-compatible).
    auto tpm = Tpm::Open(tcti);
    if (!tpm.ok()) {
      out->status = tpm.status();
      return;
    }
    auto ak = (*tpm)->CreateAk();
    auto extend = (*tpm)->ExtendPcr15WithEvent(std::span(nonce).first(8));
    auto bank = (*tpm)->ReadPcrs();
    auto quote = (*tpm)->Quote(nonce);
    if (!ak.ok() || !extend.ok() || !bank.ok() || !quote.ok()) {
      out->status = absl::InternalError("TPM operation failed");
      return;
    }
    *out = Result{*ak, *quote, *bank, absl::OkStatus()};
  };
  Result ra, rb;
  std::thread ta(work, a.tcti(), &ra);
  std::thread tb(work, b.tcti(), &rb);
  ta.join();
  tb.join();
  ASSERT_TRUE(ra.status.ok()) << ra.status;
  ASSERT_TRUE(rb.status.ok()) << rb.status;
  auto ak_a = ParseAkPublic(ra.ak.tpm2b_public);
  auto ak_b = ParseAkPublic(rb.ak.tpm2b_public);
  ASSERT_TRUE(ak_a.ok() && ak_b.ok());
  EXPECT_TRUE(VerifyQuote(*ak_a, ra.quote.attest, ra.quote.signature, nonce, Quoted(ra.bank)).ok());
  EXPECT_TRUE(VerifyQuote(*ak_b, rb.quote.attest, rb.quote.signature, nonce, Quoted(rb.bank)).ok());
  EXPECT_FALSE(
      VerifyQuote(*ak_a, rb.quote.attest, rb.quote.signature, nonce, Quoted(rb.bank)).ok());
}

TEST(TpmOpen, FailsCleanly) {
  EXPECT_EQ(Tpm::Open("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tpm::Open(std::string("swtpm:port=1\0x", 14)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tpm::Open("no-such-tcti:foo").status().code(), absl::StatusCode::kUnavailable);
  // Nothing listens there: a stopped TPM.
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  const std::string tcti = instance.tcti();
  ASSERT_TRUE(instance.Stop());
  EXPECT_EQ(Tpm::Open(tcti).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace keywarden::attest

namespace keywarden::attest {
namespace {

// `keywarden measurements read` prints what the TPM holds, in a form ParseMeasurements reads
// back, after a PCR 15 extension too; an unreachable TPM is a clear error.
TEST(MeasurementsReadCli, PrintsTheTpmsPcrs) {
  SwtpmInstance instance;
  ASSERT_TRUE(instance.Start());
  {
    auto tpm = OpenTpm(instance);
    ASSERT_TRUE(tpm);
    const Bytes event = RandomBytes(32);
    ASSERT_TRUE(tpm->ExtendPcr15WithEvent(event).ok());
  }
  auto tpm = OpenTpm(instance);
  ASSERT_TRUE(tpm);
  auto bank = tpm->ReadPcrs();
  ASSERT_TRUE(bank.ok());
  for (const std::string format : {"json", "yaml"}) {
    SCOPED_TRACE(format);
    const auto r = keywarden::testing::Run(
        {KEYWARDEN_BINARY, "measurements", "read", "--tpm", instance.tcti(), "--format", format});
    ASSERT_TRUE(r.ok()) << r;
    auto parsed = ParseMeasurements(r.stdout_text);
    ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << r.stdout_text;
    EXPECT_EQ(parsed->size(), 24u);
    EXPECT_TRUE(Compare(*parsed, *bank).ok());
    EXPECT_NE((*parsed)[15].expected, PcrValue{}) << "PCR 15 was extended";
  }
  const auto bad =
      keywarden::testing::Run({KEYWARDEN_BINARY, "measurements", "read", "--tpm", "swtpm:port=1"});
  EXPECT_EQ(bad.exit_code, 1) << bad;
  EXPECT_THAT(bad.stderr_text, HasSubstr("cannot open TPM"));
}

}  // namespace
}  // namespace keywarden::attest
