#include "keywarden/attest/tpm_attestation.h"

#include "attest.pb.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::attest {
namespace {

std::string Bytes(std::span<const uint8_t> b) { return std::string(b.begin(), b.end()); }
std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

template <typename... Args>
absl::Status Deny(fmt::format_string<Args...> f, Args&&... a) {
  return PermissionDeniedError("attestation refused: {}", fmt::format(f, std::forward<Args>(a)...));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TpmIssuer>> TpmIssuer::New(std::unique_ptr<Tpm> tpm) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> ek_public, tpm->EkPublic());
  ASSIGN_OR_RETURN(std::vector<uint8_t> ek_certificate, tpm->ReadEkCertificate());
  ASSIGN_OR_RETURN(AkInfo ak, tpm->CreateAk());
  return std::unique_ptr<TpmIssuer>(new TpmIssuer(std::move(tpm), std::move(ak),
                                                  std::move(ek_public), std::move(ek_certificate)));
}

absl::StatusOr<std::string> TpmIssuer::Issue(std::span<const uint8_t> nonce,
                                             std::span<const uint8_t> tls_key_hash) {
  ASSIGN_OR_RETURN(auto qualifying, QuoteQualifyingData(nonce, tls_key_hash));
  std::lock_guard<std::mutex> lock(mu_);
  // The quote signs a digest of the PCRs; the document carries the values. A PCR extended
  // between the two reads would make them disagree: read, quote, and check, twice at most.
  for (int attempt = 0; attempt < 2; ++attempt) {
    ASSIGN_OR_RETURN(PcrBank bank, tpm_->ReadPcrs());
    ASSIGN_OR_RETURN(Quote quote, tpm_->Quote(qualifying));
    auto ak = ParseAkPublic(ak_.tpm2b_public);
    if (!ak.ok()) return ak.status();
    const std::span<const PcrValue> quoted = std::span<const PcrValue>(bank).first(kQuotedPcrCount);
    if (!VerifyQuote(*ak, quote.attest, quote.signature, qualifying, quoted).ok()) continue;
    AttestationDocument document;
    document.set_version(kDocumentVersion);
    document.set_quote_attest(Bytes(quote.attest));
    document.set_quote_signature(Bytes(quote.signature));
    for (const PcrValue& pcr : quoted) document.add_pcrs(Bytes(pcr));
    document.set_ak_public(Bytes(ak_.tpm2b_public));
    document.set_ek_certificate(Bytes(ek_certificate_));
    document.set_ek_public(Bytes(ek_public_));
    return document.SerializeAsString();
  }
  return UnavailableError("the TPM's PCRs kept changing while it quoted them");
}

absl::StatusOr<SecretBytes> TpmIssuer::ActivateCredential(
    std::span<const uint8_t> credential_blob, std::span<const uint8_t> encrypted_secret) {
  std::lock_guard<std::mutex> lock(mu_);
  return tpm_->ActivateCredential(credential_blob, encrypted_secret);
}

absl::StatusOr<PcrBank> TpmIssuer::ReadPcrs() {
  std::lock_guard<std::mutex> lock(mu_);
  return tpm_->ReadPcrs();
}

absl::Status TpmIssuer::ExtendPcr15WithEvent(std::span<const uint8_t> data) {
  std::lock_guard<std::mutex> lock(mu_);
  return tpm_->ExtendPcr15WithEvent(data);
}

absl::StatusOr<ValidatedDocument> CheckDocument(std::string_view document,
                                                std::span<const uint8_t> nonce,
                                                std::span<const uint8_t> tls_key_hash,
                                                std::string_view ca_bundle_pem,
                                                const Measurements& measurements,
                                                const Pcr15Rule& pcr15) {
  auto store = crypto::CaStore::FromPem(ca_bundle_pem);
  if (!store.ok()) return Deny("EK certificate: {}", StatusMessage(store.status()));
  return CheckDocument(document, nonce, tls_key_hash, **store, measurements, pcr15);
}

absl::StatusOr<ValidatedDocument> CheckDocument(std::string_view document,
                                                std::span<const uint8_t> nonce,
                                                std::span<const uint8_t> tls_key_hash,
                                                const crypto::CaStore& ca_store,
                                                const Measurements& measurements,
                                                const Pcr15Rule& pcr15) {
  AttestationDocument doc;
  if (!doc.ParseFromArray(document.data(), static_cast<int>(document.size()))) {
    return Deny("the document is not a valid AttestationDocument");
  }
  if (doc.version() != kDocumentVersion) {
    return Deny("document version {} (this verifier knows {})", doc.version(), kDocumentVersion);
  }
  if (doc.pcrs_size() != static_cast<int>(kQuotedPcrCount)) {
    return Deny("the document has {} PCR values, not {}", doc.pcrs_size(), kQuotedPcrCount);
  }
  ValidatedDocument out;
  for (int i = 0; i < doc.pcrs_size(); ++i) {
    if (doc.pcrs(i).size() != kPcrSize) return Deny("PCR {} is not {} bytes", i, kPcrSize);
    std::copy(doc.pcrs(i).begin(), doc.pcrs(i).end(), out.pcrs[i].begin());
  }
  auto ek = VerifyEkCertificate(Span(doc.ek_certificate()), ca_store);
  if (!ek.ok()) return Deny("EK certificate: {}", StatusMessage(ek.status()));
  auto ek_public = ParseEkPublic(Span(doc.ek_public()));
  if (!ek_public.ok()) return Deny("EK public: {}", StatusMessage(ek_public.status()));
  if (!(*ek_public == *ek)) return Deny("the EK public key is not the certificate's key");
  auto ak = ParseAkPublic(Span(doc.ak_public()));
  if (!ak.ok()) return Deny("AK: {}", StatusMessage(ak.status()));
  ASSIGN_OR_RETURN(auto qualifying, QuoteQualifyingData(nonce, tls_key_hash));
  auto quote =
      VerifyQuote(*ak, Span(doc.quote_attest()), Span(doc.quote_signature()), qualifying, out.pcrs);
  if (!quote.ok()) return Deny("quote: {}", StatusMessage(quote.status()));
  const Comparison comparison = Compare(measurements, out.pcrs);
  if (!comparison.ok()) {
    return Deny("PCR {} does not match the base measurements", comparison.failures[0].index);
  }
  const PcrValue& p15 = out.pcrs[15];
  const bool zero = p15 == PcrValue{};
  if (!((zero && pcr15.allow_zero) || (!zero && pcr15.allowed_values.count(p15) != 0))) {
    if (zero) return Deny("PCR 15 is zero: a fresh node, where a member was expected");
    return Deny(
        "PCR 15 is {}: not a value this verifier accepts (another cluster, or a node "
        "that already measured one when it should be fresh)",
        crypto::HexEncode(p15));
  }
  out.ek = *ek;
  out.ak_name = AkName(*ak);
  out.ek_fingerprint = crypto::HexEncode(crypto::Sha256({Span(doc.ek_public())}));
  return out;
}

TpmValidator::TpmValidator(std::string ca_bundle_pem, Measurements measurements, Pcr15Rule pcr15)
    : ca_store_(crypto::CaStore::FromPem(ca_bundle_pem)),
      measurements_(std::move(measurements)),
      pcr15_(std::move(pcr15)) {}

absl::StatusOr<crypto::AttestationResult> TpmValidator::Validate(
    std::string_view document, std::span<const uint8_t> nonce,
    std::span<const uint8_t> tls_key_hash) {
  // A bundle that did not parse refuses every document, with the reason CheckDocument would give.
  if (!ca_store_.ok()) return Deny("EK certificate: {}", StatusMessage(ca_store_.status()));
  ASSIGN_OR_RETURN(ValidatedDocument checked, CheckDocument(document, nonce, tls_key_hash,
                                                            **ca_store_, measurements_, pcr15_));
  crypto::AttestationResult result;
  result.peer_identity = "ek-sha256:" + checked.ek_fingerprint;
  return result;
}

}  // namespace keywarden::attest
