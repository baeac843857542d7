#include "keywarden/crypto/x25519.h"

#include <openssl/crypto.h>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

// RFC 7748 §5 decodeScalar25519 clamping, as WireGuard applies it to stored private keys.
void Clamp(std::span<uint8_t> k) {
  k[0] &= 248;
  k[31] &= 127;
  k[31] |= 64;
}

absl::StatusOr<internal::PkeyPtr> PrivateKey(const SecretBytes& private_key) {
  const auto k = private_key.Reveal(InsecureSecretAccess::Get());
  internal::PkeyPtr pkey(
      EVP_PKEY_new_raw_private_key_ex(nullptr, "X25519", nullptr, k.data(), k.size()));
  if (!pkey) return internal::OpenSslError("X25519 private key");
  return pkey;
}

constexpr size_t kWireGuardKeyTextSize = 44;

}  // namespace

absl::StatusOr<X25519KeyPair> X25519KeyPair::Generate() {
  ASSIGN_OR_RETURN(SecretBytes private_key, RandomSecret(kX25519KeySize));
  return FromPrivateKey(private_key);
}

absl::StatusOr<X25519KeyPair> X25519KeyPair::FromPrivateKey(const SecretBytes& private_key) {
  if (private_key.size() != kX25519KeySize) {
    return InvalidArgumentError("X25519 private key of {} bytes; want {}", private_key.size(),
                                kX25519KeySize);
  }
  SecretBytes clamped = private_key.Clone();
  Clamp(clamped.MutableReveal(InsecureSecretAccess::Get()));
  ASSIGN_OR_RETURN(internal::PkeyPtr pkey, PrivateKey(clamped));
  X25519PublicKey public_key{};
  size_t size = public_key.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), public_key.data(), &size) != 1 ||
      size != public_key.size()) {
    return internal::OpenSslError("X25519 public key");
  }
  return X25519KeyPair(std::move(clamped), public_key);
}

absl::StatusOr<SecretBytes> X25519KeyPair::SharedSecret(
    std::span<const uint8_t> peer_public_key) const {
  if (peer_public_key.size() != kX25519KeySize) {
    return InvalidArgumentError("X25519 public key of {} bytes; want {}", peer_public_key.size(),
                                kX25519KeySize);
  }
  ASSIGN_OR_RETURN(internal::PkeyPtr own, PrivateKey(private_key_));
  internal::PkeyPtr peer(EVP_PKEY_new_raw_public_key_ex(
      nullptr, "X25519", nullptr, peer_public_key.data(), peer_public_key.size()));
  if (!peer) return internal::OpenSslError("X25519 peer key");
  internal::PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, own.get(), nullptr));
  if (!ctx || EVP_PKEY_derive_init(ctx.get()) != 1 ||
      EVP_PKEY_derive_set_peer_ex(ctx.get(), peer.get(), 0) != 1) {
    return internal::OpenSslError("X25519 derive setup");
  }
  SecretBytes shared(kX25519KeySize);
  size_t size = shared.size();
  // OpenSSL fails the derivation when the result is all zeros (RFC 7748 §6.1), which is what a
  // small-order peer key produces.
  if (EVP_PKEY_derive(ctx.get(), shared.MutableReveal(InsecureSecretAccess::Get()).data(), &size) !=
          1 ||
      size != kX25519KeySize) {
    ERR_clear_error();
    return InvalidArgumentError("X25519 peer public key gives an all-zero shared secret");
  }
  return shared;
}

std::string EncodeWireGuardPublicKey(const X25519PublicKey& key) { return Base64Encode(key); }

absl::StatusOr<X25519PublicKey> DecodeWireGuardPublicKey(std::string_view text) {
  if (text.size() != kWireGuardKeyTextSize) {
    return InvalidArgumentError("WireGuard key must be {} base64 characters; got {}",
                                kWireGuardKeyTextSize, text.size());
  }
  ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, Base64Decode(text));
  if (bytes.size() != kX25519KeySize) {
    return InvalidArgumentError("WireGuard key decodes to {} bytes; want {}", bytes.size(),
                                kX25519KeySize);
  }
  X25519PublicKey key{};
  std::copy(bytes.begin(), bytes.end(), key.begin());
  return key;
}

SecretBytes EncodeWireGuardPrivateKey(const SecretBytes& private_key) {
  return Base64EncodeSecret(private_key);
}

absl::StatusOr<SecretBytes> DecodeWireGuardPrivateKey(std::string_view text) {
  if (text.size() != kWireGuardKeyTextSize) {
    return InvalidArgumentError("WireGuard key must be {} base64 characters; got {}",
                                kWireGuardKeyTextSize, text.size());
  }
  ASSIGN_OR_RETURN(SecretBytes key, Base64DecodeSecret(text));
  if (key.size() != kX25519KeySize) {
    return InvalidArgumentError("WireGuard key decodes to {} bytes; want {}", key.size(),
                                kX25519KeySize);
  }
  return key;
}

}  // namespace keywarden::crypto
