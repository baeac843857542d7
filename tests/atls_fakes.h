// Deterministic stand-ins for the TPM attestation issuer and validator, for aTLS tests and
// benchmarks. They keep the property aTLS relies on: a document binds one nonce and one TLS key
// hash, and cannot be forged or altered without the shared MAC key.
//
// FakeIssuer's document:
//   "KWFAKE1" (7) | identity length (1) | identity | nonce (32) | key hash (32)
//   | HMAC-SHA256(mac_key, everything before) (32)
// FakeValidator checks the MAC, then that nonce and key hash are exactly those aTLS passes (as a
// TPM validator checks a quote's qualifying data), and returns the identity.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/random.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/status.h"

namespace keywarden::atls_fakes {

inline constexpr std::string_view kMagic = "KWFAKE1";
inline constexpr size_t kMacSize = 32;

// FakeMacKey returns a fixed 32-byte MAC key (deterministic documents); `seed` picks another.
inline SecretBytes FakeMacKey(uint8_t seed = 0x42) {
  return SecretBytes(std::vector<uint8_t>(32, seed));
}

inline std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// FakeIssuer issues documents for `identity`. Thread-safe.
class FakeIssuer : public crypto::AttestationIssuer {
 public:
  FakeIssuer(std::string identity, const SecretBytes& mac_key)
      : identity_(std::move(identity)), mac_(*crypto::HmacSha256::New(mac_key)) {}

  absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                    std::span<const uint8_t> tls_key_hash) override {
    issued_.fetch_add(1);
    return Make(nonce, tls_key_hash);
  }

  // Make builds a document without counting it (for tests that forge scenarios).
  absl::StatusOr<std::string> Make(std::span<const uint8_t> nonce,
                                   std::span<const uint8_t> tls_key_hash) const {
    if (identity_.size() > 255) return InvalidArgumentError("identity too long");
    std::string doc(kMagic);
    doc.push_back(static_cast<char>(identity_.size()));
    doc += identity_;
    doc.append(reinterpret_cast<const char*>(nonce.data()), nonce.size());
    doc.append(reinterpret_cast<const char*>(tls_key_hash.data()), tls_key_hash.size());
    ASSIGN_OR_RETURN(const auto tag, mac_->Compute(Bytes(doc)));
    doc.append(reinterpret_cast<const char*>(tag.data()), tag.size());
    return doc;
  }

  int issued() const { return issued_.load(); }

 private:
  const std::string identity_;
  const std::unique_ptr<crypto::HmacSha256> mac_;
  std::atomic<int> issued_{0};
};

// FakeValidator accepts documents from FakeIssuers sharing its MAC key. Thread-safe. It records
// every (nonce, key hash) it was asked about, so tests can check freshness.
class FakeValidator : public crypto::AttestationValidator {
 public:
  explicit FakeValidator(const SecretBytes& mac_key) : mac_(*crypto::HmacSha256::New(mac_key)) {}

  absl::StatusOr<crypto::AttestationResult> Validate(
      std::string_view document, std::span<const uint8_t> nonce,
      std::span<const uint8_t> tls_key_hash) override {
    calls_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      nonces_.emplace_back(nonce.begin(), nonce.end());
      key_hashes_.emplace_back(tls_key_hash.begin(), tls_key_hash.end());
    }
    const size_t fixed =
        kMagic.size() + 1 + crypto::kAtlsNonceSize + crypto::kAtlsKeyHashSize + kMacSize;
    if (document.size() < fixed || document.substr(0, kMagic.size()) != kMagic) {
      return PermissionDeniedError("fake: not a fake attestation document");
    }
    const size_t id_size = static_cast<uint8_t>(document[kMagic.size()]);
    if (document.size() != fixed + id_size) return PermissionDeniedError("fake: bad length");
    const std::string_view signed_part = document.substr(0, document.size() - kMacSize);
    if (!mac_->Verify(Bytes(document.substr(signed_part.size())), Bytes(signed_part)).ok()) {
      return PermissionDeniedError("fake: document MAC does not verify");
    }
    const std::string_view identity = document.substr(kMagic.size() + 1, id_size);
    const auto doc_nonce =
        Bytes(document.substr(kMagic.size() + 1 + id_size, crypto::kAtlsNonceSize));
    const auto doc_hash = Bytes(document.substr(
        kMagic.size() + 1 + id_size + crypto::kAtlsNonceSize, crypto::kAtlsKeyHashSize));
    if (!crypto::ConstantTimeEquals(doc_nonce, nonce)) {
      return PermissionDeniedError("fake: document binds another nonce (stale or replayed)");
    }
    if (!crypto::ConstantTimeEquals(doc_hash, tls_key_hash)) {
      return PermissionDeniedError("fake: document binds another TLS key");
    }
    return crypto::AttestationResult{std::string(identity)};
  }

  int calls() const { return calls_.load(); }
  std::vector<std::vector<uint8_t>> nonces() const {
    std::lock_guard<std::mutex> lock(mu_);
    return nonces_;
  }
  std::vector<std::vector<uint8_t>> key_hashes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return key_hashes_;
  }

 private:
  const std::unique_ptr<crypto::HmacSha256> mac_;
  std::atomic<int> calls_{0};
  mutable std::mutex mu_;
  std::vector<std::vector<uint8_t>> nonces_;      // guarded by mu_
  std::vector<std::vector<uint8_t>> key_hashes_;  // guarded by mu_
};

}  // namespace keywarden::atls_fakes
