// Public-key primitives for remote attestation: RSA-OAEP encryption to a TPM's endorsement key
// and ECDSA P-256 signatures (an attestation key's quote signatures).
//
// Keys are passed as plain value types (big-endian integers and curve coordinates), so that
// callers outside src/crypto never see an OpenSSL type.
#pragma once

#include <array>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden::crypto {

// RsaPublicKey is an RSA public key: the modulus n as a big-endian unsigned integer without
// leading zero bytes, and the public exponent e.
struct RsaPublicKey {
  std::vector<uint8_t> modulus;
  uint32_t exponent = 0;

  friend bool operator==(const RsaPublicKey&, const RsaPublicKey&) = default;
};

// RsaOaepSha256Encrypt encrypts `plaintext` to `key` with RSAES-OAEP (RFC 8017 §7.1) using
// SHA-256 for both the label hash and MGF1, and the given `label` (the bytes exactly as given;
// TPM labels such as "IDENTITY\0" include their NUL). The modulus must be 2048 to 4096 bits and
// the exponent odd and at least 3; the plaintext at most k - 66 bytes (k = modulus size).
// INVALID_ARGUMENT for a bad key or a long plaintext. Randomized (fresh OAEP seed per call);
// fails closed if the CSPRNG fails. Thread-safe.
absl::StatusOr<std::vector<uint8_t>> RsaOaepSha256Encrypt(const RsaPublicKey& key,
                                                          std::span<const uint8_t> plaintext,
                                                          std::span<const uint8_t> label);

// kP256CoordinateSize is the size of a P-256 field element, coordinate or scalar.
inline constexpr size_t kP256CoordinateSize = 32;

// EcP256PublicKey is a point on NIST P-256 in affine coordinates, each big-endian and exactly
// kP256CoordinateSize bytes (left-padded with zeros).
struct EcP256PublicKey {
  std::array<uint8_t, kP256CoordinateSize> x{};
  std::array<uint8_t, kP256CoordinateSize> y{};

  friend bool operator==(const EcP256PublicKey&, const EcP256PublicKey&) = default;
};

// EcdsaSignature is an ECDSA signature as the integers (r, s), each big-endian. TPMs send them
// as TPM2B_ECC_PARAMETERs, which may be shorter than the curve size (leading zeros dropped).
struct EcdsaSignature {
  std::vector<uint8_t> r;
  std::vector<uint8_t> s;
};

// ValidateEcP256PublicKey returns OK when `key` is a point on P-256 other than the point at
// infinity (SP 800-56A §5.6.2.3.4 partial validation, enough for a prime-order curve),
// INVALID_ARGUMENT otherwise.
absl::Status ValidateEcP256PublicKey(const EcP256PublicKey& key);

// EcdsaP256Sha256Verify checks an ECDSA signature (FIPS 186-4 §6.4) over SHA-256(`message`)
// with a P-256 public key. r and s must each be 1 to 32 bytes and encode integers in [1, n-1].
// Returns OK when the signature verifies, PERMISSION_DENIED "signature does not verify" when it
// does not (including out-of-range r or s), INVALID_ARGUMENT for a key not on the curve.
// Thread-safe.
absl::Status EcdsaP256Sha256Verify(const EcP256PublicKey& key, std::span<const uint8_t> message,
                                   const EcdsaSignature& signature);

// EcdsaP256PrivateKey is a P-256 signing key generated in process. Keywarden's attestation keys
// live in TPMs; this class is for tests and tools that must produce quote-shaped signatures
// without one. Move-only; the key is freed (and wiped by OpenSSL) on destruction. Thread-safe.
class EcdsaP256PrivateKey {
 public:
  // Generate makes a fresh key from the CSPRNG.
  static absl::StatusOr<EcdsaP256PrivateKey> Generate();

  EcdsaP256PrivateKey(EcdsaP256PrivateKey&&) noexcept;
  EcdsaP256PrivateKey& operator=(EcdsaP256PrivateKey&&) noexcept;
  ~EcdsaP256PrivateKey();

  const EcP256PublicKey& public_key() const { return public_key_; }

  // Sign returns an ECDSA signature over SHA-256(`message`), r and s each left-padded to 32
  // bytes.
  absl::StatusOr<EcdsaSignature> Sign(std::span<const uint8_t> message) const;

 private:
  struct State;
  EcdsaP256PrivateKey(std::unique_ptr<State> state, EcP256PublicKey public_key);
  std::unique_ptr<State> state_;
  EcP256PublicKey public_key_;
};

}  // namespace keywarden::crypto
