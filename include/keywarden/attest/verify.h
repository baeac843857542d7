// The verifier side of TPM remote attestation: pure functions over the bytes an attester sends
// (TPM-marshaled structures, TCG TPM2 Library Part 2) and the verifier's own expectations. No
// TPM is needed here. docs/formats/attestation.md states every byte rule these functions check.
//
// A verifier uses them in this order:
//   1. VerifyEkCertificate: the EK certificate chains to a TPM manufacturer's CA -> EK public key.
//   2. ParseAkPublic: the attestation key is a restricted P-256 ECDSA/SHA-256 signing key.
//   3. VerifyQuote: the AK signed a quote of the claimed PCR values with the verifier's nonce.
//   4. MakeCredential(EK, AK name, secret): only the TPM holding both the EK and that AK can
//      recover the secret (TPM2_ActivateCredential), which binds the AK to the genuine TPM.
//
// Thread-safe: every function is pure apart from randomness (MakeCredential).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/crypto/asymmetric.h"
#include "keywarden/crypto/x509.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::attest {

// PcrValue is one SHA-256 PCR.
inline constexpr size_t kPcrSize = 32;
using PcrValue = std::array<uint8_t, kPcrSize>;

// kQuotedPcrCount: quotes cover SHA-256 PCRs 0 to 15 (the static and OS PCRs, PCR 15 included,
// which carries the clusterID); 16-23 are debug, locality and application PCRs that reset.
inline constexpr size_t kQuotedPcrCount = 16;
// kMaxQualifyingDataSize is the largest qualifying data (TPM2B_DATA) accepted: a SHA-512
// digest. Keywarden sends 32 bytes.
inline constexpr size_t kMaxQualifyingDataSize = 64;
// kMaxCredentialSecretSize: TPM2_MakeCredential refuses a credential larger than the digest of
// the EK's nameAlg (Part 3 §12.6, TPM_RC_SIZE); the default EK uses SHA-256.
inline constexpr size_t kMaxCredentialSecretSize = 32;
// kNameSize is the size of a SHA-256 TPM Name: nameAlg (2 bytes, TPM_ALG_SHA256) || digest.
inline constexpr size_t kNameSize = 2 + 32;
using TpmName = std::array<uint8_t, kNameSize>;

// kMaxPublicAreaSize bounds a TPM2B_PUBLIC input (the structure's own maximum is ~ 0x300).
inline constexpr size_t kMaxPublicAreaSize = 2048;
// kMaxAttestSize bounds the TPMS_ATTEST input (sizeof(TPMS_ATTEST) in tpm2-tss ~ 2.3 KiB).
inline constexpr size_t kMaxAttestSize = 4096;

// AkPublic is a parsed attestation-key public area.
struct AkPublic {
  // tpm2b_public is the marshaled TPM2B_PUBLIC as given.
  std::vector<uint8_t> tpm2b_public;
  // key is the P-256 public point (TPMS_ECC_POINT unique.ecc).
  crypto::EcP256PublicKey key;
  // name is the AK's Name: 0x000B || SHA-256(TPMT_PUBLIC) (Part 1 §16).
  TpmName name{};
};

// ComputeName returns the Name of the object whose marshaled TPM2B_PUBLIC is `tpm2b_public`:
// nameAlg || H_nameAlg(marshaled TPMT_PUBLIC) (TCG TPM2 Part 1 §16, Part 2 §10.5.3). Only
// nameAlg SHA-256 is accepted. INVALID_ARGUMENT for a malformed, non-canonical or
// trailing-data structure or another nameAlg.
absl::StatusOr<TpmName> ComputeName(std::span<const uint8_t> tpm2b_public);

// ParseAkPublic parses a marshaled TPM2B_PUBLIC (Part 2 §12.2.5) and accepts it only as an
// attestation key Keywarden can rely on:
//   type TPM_ALG_ECC, nameAlg TPM_ALG_SHA256,
//   objectAttributes with fixedTPM, fixedParent, sensitiveDataOrigin, restricted and sign set
//   and decrypt clear (Part 2 §8.3: a restricted signing key only signs digests the TPM
//   produced itself, so it cannot be made to sign a forged TPMS_ATTEST),
//   parameters: symmetric TPM_ALG_NULL, scheme TPM_ALG_ECDSA with hashAlg TPM_ALG_SHA256,
//   curveID TPM_ECC_NIST_P256, kdf TPM_ALG_NULL,
//   unique: a valid P-256 point.
// Errors: INVALID_ARGUMENT when the bytes do not parse; FAILED_PRECONDITION naming the first
// property that is not an acceptable AK (e.g. "AK is not restricted", "AK is a decryption key").
// RSA AKs are not supported.
absl::StatusOr<AkPublic> ParseAkPublic(std::span<const uint8_t> tpm2b_public);

// AkName returns the Name of a parsed AK (its `name` field), for symmetry with the brief's API.
inline const TpmName& AkName(const AkPublic& ak) { return ak.name; }

// QuoteInfo is what a verified quote says besides the PCR digest, for audit logs.
struct QuoteInfo {
  uint64_t clock = 0;          // TPMS_CLOCK_INFO.clock (ms the TPM has been powered)
  uint32_t reset_count = 0;    // TPM resets (reboots) since the TPM was cleared
  uint32_t restart_count = 0;  // TPM restarts since the last reset
  bool safe = false;           // clock has not been rolled back
  uint64_t firmware_version = 0;
  // qualified_signer is the AK's Qualified Name as the TPM reports it (Part 1 §16: for an AK
  // under the EK, 0x000B || SHA-256(QN(EK) || Name(AK)), QN(EK) = 0x000B || SHA-256(0x4000000B
  // || Name(EK))). Not checked: the signature already binds the quote to the AK, and credential
  // activation binds the AK to the EK's TPM.
  std::vector<uint8_t> qualified_signer;
};

// VerifyQuote checks a TPM2_Quote (Part 3 §18.4) made by `ak`:
//   `attest` is the marshaled TPMS_ATTEST (the contents of the TPM2B_ATTEST, without its size),
//   `signature` the marshaled TPMT_SIGNATURE, `expected_qualifying_data` the verifier's fresh
//   value (1 to kMaxQualifyingDataSize bytes), `pcr_values` the 16 SHA-256 PCRs 0..15 the
//   attester claims.
// Checks, in this order, each failing with its own message:
//   malformed attest or signature structure (trailing bytes too)    INVALID_ARGUMENT
//   signature not ECDSA with SHA-256                                 FAILED_PRECONDITION
//   ECDSA P-256 signature over SHA-256(attest) does not verify       PERMISSION_DENIED
//   magic != TPM_GENERATED_VALUE (0xff544347)                        PERMISSION_DENIED
//   type != TPM_ST_ATTEST_QUOTE (0x8018)                             FAILED_PRECONDITION
//   extraData != expected_qualifying_data (stale or replayed quote)  PERMISSION_DENIED
//   PCR selection is not exactly SHA-256 {0..15}                     FAILED_PRECONDITION
//   pcrDigest != SHA-256(PCR0 || ... || PCR15)                       PERMISSION_DENIED
// The signature is checked first: nothing in the attest is trusted before it verifies.
// INVALID_ARGUMENT for a wrong number of PCR values or a bad qualifying data size.
absl::StatusOr<QuoteInfo> VerifyQuote(const AkPublic& ak, std::span<const uint8_t> attest,
                                      std::span<const uint8_t> signature,
                                      std::span<const uint8_t> expected_qualifying_data,
                                      std::span<const PcrValue> pcr_values);

// kQualifyingDataLabel starts the quote qualifying data of attestation document v1.
inline constexpr std::string_view kQualifyingDataLabel = "keywarden-attest-v1";

// QuoteQualifyingData returns SHA-256("keywarden-attest-v1" || nonce || tls_key_hash), the
// qualifying data of a v1 attestation document's quote (docs/attestation.md): the verifier's
// fresh nonce (1 to 64 bytes; aTLS sends 32) and SHA-256 of the attester's TLS
// SubjectPublicKeyInfo (exactly 32 bytes, as aTLS hands it to issuers and validators).
// INVALID_ARGUMENT for other sizes.
absl::StatusOr<std::array<uint8_t, 32>> QuoteQualifyingData(std::span<const uint8_t> nonce,
                                                            std::span<const uint8_t> tls_key_hash);

// PcrDigest returns SHA-256 of the concatenated `pcr_values`, the pcrDigest a TPM puts in a
// quote over those PCRs in ascending order (Part 3 §18.4.1 with a SHA-256 signing scheme).
std::array<uint8_t, 32> PcrDigest(std::span<const PcrValue> pcr_values);

// ParseEkPublic parses a marshaled TPM2B_PUBLIC and accepts it only as an RSA-2048 EK made
// from the TCG default template (EK Credential Profile 2.0 Annex B, template L-1): nameAlg
// SHA-256, attributes fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|
// decrypt (0x000300B2), authPolicy = PolicySecret(TPM_RH_ENDORSEMENT), symmetric AES-128-CFB,
// scheme NULL, 2048 bits, default exponent. MakeCredential's byte rules depend on exactly these
// parameters. Returns the RSA public key. INVALID_ARGUMENT when malformed,
// FAILED_PRECONDITION naming the first deviation from the template.
absl::StatusOr<crypto::RsaPublicKey> ParseEkPublic(std::span<const uint8_t> tpm2b_public);

// VerifyEkCertificate checks that `ek_cert_der` (DER, nothing after it) chains to a CA in
// `ca_bundle_pem` (optionally through `intermediates_der`) and that its key is RSA-2048, and
// returns that key. See crypto::VerifyCertificateChain for the path-validation policy; EK
// certificates carry a critical subjectAltName holding a directoryName with the TCG
// manufacturer/model/version attributes (2.23.133.2.1-3), which OpenSSL understands; a critical
// extension it does not understand fails closed. Errors: INVALID_ARGUMENT (malformed),
// PERMISSION_DENIED (does not chain), FAILED_PRECONDITION (not an RSA-2048 key).
absl::StatusOr<crypto::RsaPublicKey> VerifyEkCertificate(
    std::span<const uint8_t> ek_cert_der, std::string_view ca_bundle_pem,
    std::span<const std::vector<uint8_t>> intermediates_der = {});

// VerifyEkCertificate with a CA bundle parsed once (crypto::CaStore::FromPem): the same checks
// and errors, without re-parsing the bundle on every call. Every call still verifies the whole
// path (signatures, validity at the current time); nothing is cached.
absl::StatusOr<crypto::RsaPublicKey> VerifyEkCertificate(
    std::span<const uint8_t> ek_cert_der, const crypto::CaStore& ca_store,
    std::span<const std::vector<uint8_t>> intermediates_der = {});

// Credential is the output of MakeCredential, in the two parameters of TPM2_ActivateCredential.
struct Credential {
  // blob is the contents of the TPM2B_ID_OBJECT (without its own size field):
  // TPM2B_DIGEST(outerHMAC) || encIdentity.
  std::vector<uint8_t> blob;
  // encrypted_secret is the contents of the TPM2B_ENCRYPTED_SECRET: the RSA-OAEP ciphertext of
  // the seed (256 bytes for RSA-2048).
  std::vector<uint8_t> encrypted_secret;
};

// MakeCredential does TPM2_MakeCredential (Part 3 §12.6) in software for an EK made from the
// default RSA template (`ek`, e.g. from VerifyEkCertificate) and the Name of the object that is
// to receive `secret` (1 to kMaxCredentialSecretSize bytes), following Part 1 §24:
//   seed             = 32 random bytes
//   encrypted_secret = RSA-OAEP-SHA256(EK, seed, label "IDENTITY\0")   (Part 1 Annex B.10)
//   symKey           = KDFa(SHA256, seed, "STORAGE", name, "", 128)    (§24.4)
//   encIdentity      = AES-128-CFB(symKey, IV = 0, TPM2B_DIGEST(secret))
//   hmacKey          = KDFa(SHA256, seed, "INTEGRITY", "", "", 256)    (§24.5)
//   outerHMAC        = HMAC-SHA256(hmacKey, encIdentity || name)
//   blob             = TPM2B_DIGEST(outerHMAC) || encIdentity
// `object_name` must be a SHA-256 Name (kNameSize bytes starting 0x000B). The TPM releases the
// secret only if it holds the EK's private key and a loaded object of that Name.
// INVALID_ARGUMENT for bad sizes or a key that is not RSA-2048; UNAVAILABLE if the CSPRNG fails.
absl::StatusOr<Credential> MakeCredential(const crypto::RsaPublicKey& ek,
                                          std::span<const uint8_t> object_name,
                                          const SecretBytes& secret);

namespace internal {
// MakeCredentialBlob is the deterministic half of MakeCredential: the blob for a given seed
// (32 bytes). Exposed for tests that check the byte rules.
absl::StatusOr<std::vector<uint8_t>> MakeCredentialBlob(std::span<const uint8_t> object_name,
                                                        const SecretBytes& secret,
                                                        const SecretBytes& seed);
}  // namespace internal

}  // namespace keywarden::attest
