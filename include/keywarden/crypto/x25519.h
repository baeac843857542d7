// X25519 (RFC 7748) key pairs and WireGuard's key encoding.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

inline constexpr size_t kX25519KeySize = 32;
using X25519PublicKey = std::array<uint8_t, kX25519KeySize>;

// X25519KeyPair is a Curve25519 Diffie-Hellman key pair. The private key is kept clamped
// (RFC 7748 §5), as WireGuard stores it. Move-only.
class X25519KeyPair {
 public:
  // Generate makes a fresh key pair from the CSPRNG; fails closed.
  static absl::StatusOr<X25519KeyPair> Generate();
  // FromPrivateKey takes a 32-byte private key (clamped on the way in) and computes its public
  // key.
  static absl::StatusOr<X25519KeyPair> FromPrivateKey(const SecretBytes& private_key);

  const X25519PublicKey& public_key() const { return public_key_; }
  const SecretBytes& private_key() const { return private_key_; }

  // SharedSecret returns X25519(private, peer_public). A peer key that yields the all-zero
  // output (a small-order point, RFC 7748 §6.1) is refused with INVALID_ARGUMENT.
  absl::StatusOr<SecretBytes> SharedSecret(std::span<const uint8_t> peer_public_key) const;

 private:
  X25519KeyPair(SecretBytes private_key, X25519PublicKey public_key)
      : private_key_(std::move(private_key)), public_key_(public_key) {}
  SecretBytes private_key_;
  X25519PublicKey public_key_;
};

// WireGuard encodes keys as standard base64 of the 32 bytes (44 characters with one '=').
std::string EncodeWireGuardPublicKey(const X25519PublicKey& key);
absl::StatusOr<X25519PublicKey> DecodeWireGuardPublicKey(std::string_view text);
SecretBytes EncodeWireGuardPrivateKey(const SecretBytes& private_key);
absl::StatusOr<SecretBytes> DecodeWireGuardPrivateKey(std::string_view text);

}  // namespace keywarden::crypto
