// The managed-mode key hierarchy, byte-compatible with Constellation (DESIGN.md §2).
//
//   KEK               = HKDF-Extract(salt, masterKey)                 (RFC 5869 §2.2 PRK)
//   DEK(id, n)        = HKDF-Expand(KEK, "key-" || id, n)             (RFC 5869 §2.3)
//   measurementSecret = DEK("measurementSecret", 32)
//   clusterID         = HKDF(measurementSecret, measurementSalt, "key-clusterID", 32)
//   state-disk key    = DEK(lowercase(UUID), 32)
//   PCR 15            = SHA256(0^32 || SHA256(clusterID))             (TPM2_PCR_Event)
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/statusor.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::keys {

inline constexpr size_t kDigestSize = 32;
using ClusterId = std::array<uint8_t, kDigestSize>;
using PcrValue = std::array<uint8_t, kDigestSize>;

// kDefaultDekSize is the DEK length when a caller does not ask for one.
inline constexpr size_t kDefaultDekSize = 32;
// kMaxDekSize is HKDF-Expand's limit, 255 * 32.
inline constexpr size_t kMaxDekSize = crypto::kHkdfSha256MaxOutput;
// kMeasurementSaltSize is the size of the public salt made at init.
inline constexpr size_t kMeasurementSaltSize = 32;

// Kek is the key-encryption key of managed mode: the HKDF PRK of the master secret. It holds
// only the KEK (never the master key) and derives DEKs with one HKDF-Expand each.
// Thread-safe.
class Kek {
 public:
  // FromMasterSecret computes KEK = HKDF-Extract(salt, key).
  static absl::StatusOr<std::unique_ptr<Kek>> FromMasterSecret(const MasterSecret& secret);
  // FromBytes wraps a stored 32-byte KEK.
  static absl::StatusOr<std::unique_ptr<Kek>> FromBytes(const SecretBytes& kek);

  // DeriveDek returns DEK(id, length) = HKDF-Expand(KEK, "key-" || id, length) for `length`
  // in [1, kMaxDekSize]. `id` is used as given (case-sensitive) and may be empty.
  absl::StatusOr<SecretBytes> DeriveDek(std::string_view id, size_t length) const;
  // MeasurementSecret returns DEK("measurementSecret", 32).
  absl::StatusOr<SecretBytes> MeasurementSecret() const;
  // StateDiskKey returns DEK(lowercase(uuid), 32). `uuid` must be a textual UUID
  // (8-4-4-4-12 hex digits, either case); INVALID_ARGUMENT otherwise.
  absl::StatusOr<SecretBytes> StateDiskKey(std::string_view uuid) const;

  // bytes returns the 32-byte KEK, for storing it in the key service's store.
  const SecretBytes& bytes() const { return kek_; }

 private:
  Kek(SecretBytes kek, std::unique_ptr<crypto::HkdfSha256Expander> expander)
      : kek_(std::move(kek)), expander_(std::move(expander)) {}
  SecretBytes kek_;
  std::unique_ptr<crypto::HkdfSha256Expander> expander_;
};

// DeriveClusterId returns HKDF(measurementSecret, measurementSalt, "key-clusterID", 32).
absl::StatusOr<ClusterId> DeriveClusterId(const SecretBytes& measurement_secret,
                                          std::span<const uint8_t> measurement_salt);

// ExpectedPcr15 returns the SHA-256 PCR 15 of a node that measured `cluster_id` once with
// TPM2_PCR_Event into a zero PCR: SHA256(0^32 || SHA256(cluster_id)).
PcrValue ExpectedPcr15(std::span<const uint8_t> cluster_id);

// NormalizeUuid checks that `uuid` is 8-4-4-4-12 hex digits and returns it lower-cased.
absl::StatusOr<std::string> NormalizeUuid(std::string_view uuid);

}  // namespace keywarden::keys
