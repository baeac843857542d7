// Ed25519 signatures (RFC 8032 §5.1, "pure" Ed25519: no context, no pre-hash).
//
// Used for the network registry's signed node credentials and entries
// (include/keywarden/net/registry.h, docs/formats/network-registry.md).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

// kEd25519SeedSize is the size of an Ed25519 private key as RFC 8032 §5.1.5 defines it (the
// 32-byte "secret key" / seed the signing scalar and prefix are hashed from).
inline constexpr size_t kEd25519SeedSize = 32;
inline constexpr size_t kEd25519PublicKeySize = 32;
inline constexpr size_t kEd25519SignatureSize = 64;

using Ed25519PublicKeyBytes = std::array<uint8_t, kEd25519PublicKeySize>;
using Ed25519Signature = std::array<uint8_t, kEd25519SignatureSize>;

// Ed25519KeyPair is a signing key: the 32-byte seed, in SecretBytes, and its public key.
// Move-only; Sign is const and thread-safe.
class Ed25519KeyPair {
 public:
  // Generate makes a key pair from a fresh CSPRNG seed; fails closed (UNAVAILABLE).
  static absl::StatusOr<Ed25519KeyPair> Generate();
  // FromSeed takes a 32-byte seed (RFC 8032 §5.1.5) and computes its public key.
  // INVALID_ARGUMENT for any other size.
  static absl::StatusOr<Ed25519KeyPair> FromSeed(const SecretBytes& seed);

  const Ed25519PublicKeyBytes& public_key() const { return public_key_; }
  const SecretBytes& seed() const { return seed_; }

  // Sign returns the RFC 8032 §5.1.6 signature of `message` (deterministic).
  absl::StatusOr<Ed25519Signature> Sign(std::span<const uint8_t> message) const;

 private:
  Ed25519KeyPair(SecretBytes seed, const Ed25519PublicKeyBytes& public_key)
      : seed_(std::move(seed)), public_key_(public_key) {}
  SecretBytes seed_;
  Ed25519PublicKeyBytes public_key_;
};

// Ed25519Verify says whether `signature` is a valid RFC 8032 §5.1.7 signature of `message`
// under `public_key`. Wrong sizes, a public key that is not a point, and a non-canonical S
// (S >= L, which OpenSSL refuses) are all simply false.
bool Ed25519Verify(std::span<const uint8_t> public_key, std::span<const uint8_t> message,
                   std::span<const uint8_t> signature);

}  // namespace keywarden::crypto
