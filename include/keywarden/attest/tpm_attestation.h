// The TPM behind aTLS: an issuer that quotes with a node's TPM, and a validator that checks
// such documents (EK chain, AK, quote, measurements, PCR 15). docs/attestation.md.
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "keywarden/attest/measurements.h"
#include "keywarden/attest/tpm.h"
#include "keywarden/attest/verify.h"
#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/x509.h"

namespace keywarden::attest {

inline constexpr uint32_t kDocumentVersion = 1;

// TpmIssuer issues version-1 documents with one TPM: an AK made at construction, a quote per
// document over SHA-256 PCRs 0-15 with qualifying data QuoteQualifyingData(nonce, key hash).
// Thread-safe (calls are serialized: a TPM does one command at a time).
class TpmIssuer final : public crypto::AttestationIssuer {
 public:
  static absl::StatusOr<std::unique_ptr<TpmIssuer>> New(std::unique_ptr<Tpm> tpm);
  absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                    std::span<const uint8_t> tls_key_hash) override;

  // The TPM operations a node needs besides quoting, serialized with Issue: credential
  // activation with this issuer's AK (release.h's OpenSealed), and PCR reads and the one
  // PCR 15 extension of a node's boot.
  absl::StatusOr<SecretBytes> ActivateCredential(std::span<const uint8_t> credential_blob,
                                                 std::span<const uint8_t> encrypted_secret);
  absl::StatusOr<PcrBank> ReadPcrs();
  absl::Status ExtendPcr15WithEvent(std::span<const uint8_t> data);

 private:
  TpmIssuer(std::unique_ptr<Tpm> tpm, AkInfo ak, std::vector<uint8_t> ek_public,
            std::vector<uint8_t> ek_certificate)
      : tpm_(std::move(tpm)),
        ak_(std::move(ak)),
        ek_public_(std::move(ek_public)),
        ek_certificate_(std::move(ek_certificate)) {}
  std::mutex mu_;
  std::unique_ptr<Tpm> tpm_;
  AkInfo ak_;
  std::vector<uint8_t> ek_public_;
  std::vector<uint8_t> ek_certificate_;
};

// Pcr15Rule says which PCR 15 values a validator accepts.
struct Pcr15Rule {
  bool allow_zero = true;             // a fresh node (nothing measured yet)
  std::set<PcrValue> allowed_values;  // e.g. keys::ExpectedPcr15(clusterID) for members
};

// ValidatedDocument is what a validator learned from a document it accepted.
struct ValidatedDocument {
  std::string ek_fingerprint;  // hex SHA-256 of the EK's TPM2B_PUBLIC
  crypto::RsaPublicKey ek;     // for MakeCredential
  TpmName ak_name{};
  std::array<PcrValue, kQuotedPcrCount> pcrs{};
};

// CheckDocument verifies a version-1 document against a CA bundle, base measurements and the
// PCR 15 rule, binding `nonce` and `tls_key_hash`. PERMISSION_DENIED naming the failed check.
// Every call verifies everything, the EK certificate's whole chain included (nothing is cached
// between calls). This form parses `ca_bundle_pem` on every call; verifiers that check many
// documents use the CaStore form (TpmValidator does).
absl::StatusOr<ValidatedDocument> CheckDocument(std::string_view document,
                                                std::span<const uint8_t> nonce,
                                                std::span<const uint8_t> tls_key_hash,
                                                std::string_view ca_bundle_pem,
                                                const Measurements& measurements,
                                                const Pcr15Rule& pcr15);
// CheckDocument with the CA bundle parsed once (crypto::CaStore::FromPem); same checks.
absl::StatusOr<ValidatedDocument> CheckDocument(std::string_view document,
                                                std::span<const uint8_t> nonce,
                                                std::span<const uint8_t> tls_key_hash,
                                                const crypto::CaStore& ca_store,
                                                const Measurements& measurements,
                                                const Pcr15Rule& pcr15);

// TpmValidator is CheckDocument behind aTLS's validator interface; the peer identity is
// "ek-sha256:<hex>". The CA bundle is parsed once, at construction, into a crypto::CaStore;
// every Validate still verifies the EK certificate's chain in full. A bundle that does not parse
// makes every Validate fail (PERMISSION_DENIED with the parse error). Thread-safe.
class TpmValidator final : public crypto::AttestationValidator {
 public:
  TpmValidator(std::string ca_bundle_pem, Measurements measurements, Pcr15Rule pcr15);
  absl::StatusOr<crypto::AttestationResult> Validate(
      std::string_view document, std::span<const uint8_t> nonce,
      std::span<const uint8_t> tls_key_hash) override;

 private:
  const absl::StatusOr<std::shared_ptr<const crypto::CaStore>> ca_store_;
  const Measurements measurements_;
  const Pcr15Rule pcr15_;
};

}  // namespace keywarden::attest
