// Ed25519 through OpenSSL's EVP_PKEY_ED25519 (RFC 8032 §5.1).
//
// Security: the seed lives in SecretBytes; OpenSSL copies it into the EVP_PKEY it builds for
// each signature (allocated from its secure heap and wiped when the key is freed). One-shot
// EVP_DigestSign / EVP_DigestVerify with a NULL digest is OpenSSL's interface for pure Ed25519.
#include "keywarden/crypto/ed25519.h"

#include <openssl/evp.h>

#include "keywarden/crypto/random.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, internal::Deleter<EVP_MD_CTX, EVP_MD_CTX_free>>;

absl::StatusOr<internal::PkeyPtr> PrivateKey(const SecretBytes& seed) {
  const auto k = seed.Reveal(InsecureSecretAccess::Get());
  internal::PkeyPtr pkey(
      EVP_PKEY_new_raw_private_key_ex(nullptr, "ED25519", nullptr, k.data(), k.size()));
  if (!pkey) return internal::OpenSslError("Ed25519 private key");
  return pkey;
}

}  // namespace

absl::StatusOr<Ed25519KeyPair> Ed25519KeyPair::Generate() {
  ASSIGN_OR_RETURN(SecretBytes seed, RandomSecret(kEd25519SeedSize));
  return FromSeed(seed);
}

absl::StatusOr<Ed25519KeyPair> Ed25519KeyPair::FromSeed(const SecretBytes& seed) {
  if (seed.size() != kEd25519SeedSize) {
    return InvalidArgumentError("Ed25519 seed of {} bytes; want {}", seed.size(), kEd25519SeedSize);
  }
  ASSIGN_OR_RETURN(internal::PkeyPtr pkey, PrivateKey(seed));
  Ed25519PublicKeyBytes public_key{};
  size_t size = public_key.size();
  if (EVP_PKEY_get_raw_public_key(pkey.get(), public_key.data(), &size) != 1 ||
      size != public_key.size()) {
    return internal::OpenSslError("Ed25519 public key");
  }
  return Ed25519KeyPair(seed.Clone(), public_key);
}

absl::StatusOr<Ed25519Signature> Ed25519KeyPair::Sign(std::span<const uint8_t> message) const {
  ASSIGN_OR_RETURN(internal::PkeyPtr pkey, PrivateKey(seed_));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestSignInit_ex(ctx.get(), nullptr, nullptr, nullptr, nullptr, pkey.get(),
                                    nullptr) != 1) {
    return internal::OpenSslError("Ed25519 sign setup");
  }
  Ed25519Signature signature{};
  size_t size = signature.size();
  if (EVP_DigestSign(ctx.get(), signature.data(), &size, message.data(), message.size()) != 1 ||
      size != signature.size()) {
    return internal::OpenSslError("Ed25519 sign");
  }
  return signature;
}

bool Ed25519Verify(std::span<const uint8_t> public_key, std::span<const uint8_t> message,
                   std::span<const uint8_t> signature) {
  if (public_key.size() != kEd25519PublicKeySize || signature.size() != kEd25519SignatureSize) {
    return false;
  }
  internal::PkeyPtr pkey(EVP_PKEY_new_raw_public_key_ex(nullptr, "ED25519", nullptr,
                                                        public_key.data(), public_key.size()));
  MdCtxPtr ctx(EVP_MD_CTX_new());
  bool ok = pkey && ctx &&
            EVP_DigestVerifyInit_ex(ctx.get(), nullptr, nullptr, nullptr, nullptr, pkey.get(),
                                    nullptr) == 1 &&
            EVP_DigestVerify(ctx.get(), signature.data(), signature.size(), message.data(),
                             message.size()) == 1;
  // A refused signature leaves reasons on OpenSSL's per-thread queue; they must not surface in
  // an unrelated later error.
  ERR_clear_error();
  return ok;
}

}  // namespace keywarden::crypto
