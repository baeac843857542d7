// X.509 certificate path validation (RFC 5280 §6, as OpenSSL implements it) against a bundle of
// trusted CA certificates, and extraction of the leaf's public key. Used to check a TPM's
// endorsement-key certificate against its manufacturer's CAs (src/attest/verify.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/crypto/asymmetric.h"

namespace keywarden::crypto {

// VerifiedCertificate is what a successful VerifyCertificateChain learnt about the leaf.
struct VerifiedCertificate {
  // spki_der is the leaf's DER SubjectPublicKeyInfo.
  std::vector<uint8_t> spki_der;
  // rsa_public_key is set when the leaf's key is RSA.
  std::optional<RsaPublicKey> rsa_public_key;
  // ec_p256_public_key is set when the leaf's key is EC on P-256.
  std::optional<EcP256PublicKey> ec_p256_public_key;
  // subject and issuer are the leaf's names in RFC 2253 form, for logs (public data).
  std::string subject;
  std::string issuer;
  // chain_length counts the certificates of the verified path, leaf and trust anchor included.
  size_t chain_length = 0;
};

// kMaxCertificateSize bounds one DER certificate (TPM EK certificates are 1-2 KiB).
inline constexpr size_t kMaxCertificateSize = 64 * 1024;
// kMaxTrustBundleSize bounds a PEM trust bundle.
inline constexpr size_t kMaxTrustBundleSize = 4 * 1024 * 1024;

// VerifyCertificateChain checks that `leaf_der` (one DER certificate, nothing after it) chains
// to a certificate in `trusted_pem` (one or more PEM "CERTIFICATE" blocks; every one is a trust
// anchor, so an intermediate CA listed there ends the path at that CA), optionally through
// `untrusted_intermediates_der`. OpenSSL's default policy applies: every signature, validity
// periods against the current time, CA basic constraints and key usage on issuers, path length,
// and refusal of any certificate with a critical extension OpenSSL does not understand
// (X509_V_ERR_UNHANDLED_CRITICAL_EXTENSION). No purpose (extended key usage) is required of the
// leaf, and no host name is checked.
//
// Errors: INVALID_ARGUMENT for malformed or oversized input (a leaf that is not exactly one DER
// certificate, a bundle with no certificate); PERMISSION_DENIED "certificate chain does not
// verify: <OpenSSL reason> (depth N)" when path validation fails. Thread-safe.
absl::StatusOr<VerifiedCertificate> VerifyCertificateChain(
    std::span<const uint8_t> leaf_der, std::string_view trusted_pem,
    std::span<const std::vector<uint8_t>> untrusted_intermediates_der = {});

// CaStore is a PEM trust bundle parsed once into an OpenSSL X509_STORE, for verifiers that check
// many certificates against the same CAs (the join service checks one EK certificate per join):
// VerifyCertificateChain(leaf, pem) re-parses the bundle and re-decodes the anchors' keys on
// every call, a CaStore does that once. Verify applies exactly VerifyCertificateChain's policy;
// no verification result is cached: every call checks every signature, validity period (against
// the current time) and extension of the path. What is kept is decoding work only: the leaves
// most recently given, as parsed from their exact DER bytes (bounded), so that a node that joins
// again is not re-decoded (OpenSSL 3.0 decodes a certificate's public key through its provider
// decoders, ~0.1 ms). Verify is thread-safe (OpenSSL locks the store's lookups and a
// certificate's extension cache), so one CaStore may be shared by any number of threads.
class CaStore {
 public:
  // FromPem parses `trusted_pem` (one or more PEM "CERTIFICATE" blocks; every one is a trust
  // anchor). INVALID_ARGUMENT for an empty, oversized or damaged bundle, or one with no
  // certificate (the messages VerifyCertificateChain gives).
  static absl::StatusOr<std::shared_ptr<const CaStore>> FromPem(std::string_view trusted_pem);

  CaStore(const CaStore&) = delete;
  CaStore& operator=(const CaStore&) = delete;
  ~CaStore();

  // Verify is VerifyCertificateChain(leaf_der, <this bundle>, untrusted_intermediates_der), with
  // the same checks, results and errors.
  absl::StatusOr<VerifiedCertificate> Verify(
      std::span<const uint8_t> leaf_der,
      std::span<const std::vector<uint8_t>> untrusted_intermediates_der = {}) const;

  // anchor_count is the number of certificates the bundle held.
  size_t anchor_count() const { return anchor_count_; }

 private:
  struct State;
  CaStore(std::unique_ptr<State> state, size_t anchor_count);
  std::unique_ptr<State> state_;
  size_t anchor_count_;
};

}  // namespace keywarden::crypto
