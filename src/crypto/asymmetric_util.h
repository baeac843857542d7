// Internal conversions between Keywarden's public-key value types and OpenSSL's EVP_PKEY,
// shared by asymmetric.cc and x509.cc. Not part of the public API.
#pragma once

#include <openssl/evp.h>

#include "absl/status/statusor.h"
#include "keywarden/crypto/asymmetric.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto::internal {

// RsaPublicKeyToPkey imports an RSA public key (2048 to 4096 bits, odd exponent >= 3);
// INVALID_ARGUMENT otherwise.
absl::StatusOr<PkeyPtr> RsaPublicKeyToPkey(const RsaPublicKey& key);
// PkeyToRsaPublicKey exports an RSA key's modulus (no leading zeros) and exponent;
// INVALID_ARGUMENT for a non-RSA key or an exponent above 2^32.
absl::StatusOr<RsaPublicKey> PkeyToRsaPublicKey(const EVP_PKEY* pkey);
// EcP256PublicKeyToPkey imports a P-256 point after checking it is on the curve.
absl::StatusOr<PkeyPtr> EcP256PublicKeyToPkey(const EcP256PublicKey& key);
// PkeyToEcP256PublicKey exports a P-256 key's affine coordinates; INVALID_ARGUMENT for other keys.
absl::StatusOr<EcP256PublicKey> PkeyToEcP256PublicKey(const EVP_PKEY* pkey);

}  // namespace keywarden::crypto::internal
