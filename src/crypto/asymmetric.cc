// ECDSA verification (EC_KEY, ECDSA_do_verify) and RSA-OAEP encryption (RSA,
// RSA_padding_add_PKCS1_OAEP_mgf1) use APIs deprecated in OpenSSL 3.0, on purpose: building a
// provider key from OSSL_PARAMs (EVP_PKEY_fromdata: key-management lookup, a fresh EC_GROUP) and
// an EVP operation context (algorithm fetch) per call cost more than the public-key operation
// itself on the 2-core reference machine (quote check 95 -> 57 us, MakeCredential 45 -> see
// docs/performance.md, "Join service"). The objects used here do the same checks and give the
// same bytes; keys are built per call from the value types, nothing is cached.
#define OPENSSL_SUPPRESS_DEPRECATED
#include "keywarden/crypto/asymmetric.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>

#include <algorithm>
#include <array>
#include <utility>

#include "keywarden/crypto/sha256.h"
#include "src/crypto/asymmetric_util.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

using internal::PkeyCtxPtr;
using internal::PkeyPtr;

using BnPtr = std::unique_ptr<BIGNUM, internal::Deleter<BIGNUM, BN_free>>;
using EcdsaSigPtr = std::unique_ptr<ECDSA_SIG, internal::Deleter<ECDSA_SIG, ECDSA_SIG_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, internal::Deleter<EVP_MD_CTX, EVP_MD_CTX_free>>;
using ParamBldPtr =
    std::unique_ptr<OSSL_PARAM_BLD, internal::Deleter<OSSL_PARAM_BLD, OSSL_PARAM_BLD_free>>;
using ParamPtr = std::unique_ptr<OSSL_PARAM, internal::Deleter<OSSL_PARAM, OSSL_PARAM_free>>;

constexpr int kMinRsaBits = 2048;
constexpr int kMaxRsaBits = 4096;
// RFC 8017 §7.1.1: mLen <= k - 2hLen - 2.
constexpr size_t kOaepSha256Overhead = 2 * 32 + 2;

// FromData builds an EVP_PKEY of `type` ("RSA", "EC") from public-key `params`.
absl::StatusOr<PkeyPtr> FromData(const char* type, const OSSL_PARAM* params) {
  PkeyCtxPtr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* pkey = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, const_cast<OSSL_PARAM*>(params)) !=
          1) {
    ERR_clear_error();
    return InvalidArgumentError("not a valid {} public key", type);
  }
  return PkeyPtr(pkey);
}

using EcKeyPtr = std::unique_ptr<EC_KEY, internal::Deleter<EC_KEY, EC_KEY_free>>;
using RsaPtr = std::unique_ptr<RSA, internal::Deleter<RSA, RSA_free>>;
using EcPointPtr = std::unique_ptr<EC_POINT, internal::Deleter<EC_POINT, EC_POINT_free>>;

// P256 is one P-256 group shared read-only by every thread (EC_KEY_set_group copies it).
const EC_GROUP* P256() {
  static const EC_GROUP* const group = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  return group;
}

// EcP256PublicEcKey decodes `key` as a P-256 public key. EC_POINT_oct2point refuses
// coordinates that are not below p (SEC 1 §2.3.4) and points off the curve; the point at
// infinity has no affine encoding, and is refused explicitly all the same. P-256 has cofactor
// 1, so every such point has order n (SP 800-56A §5.6.2.3.4 partial validation suffices).
absl::StatusOr<EcKeyPtr> EcP256PublicEcKey(const EcP256PublicKey& key) {
  const EC_GROUP* group = P256();
  if (group == nullptr) return internal::OpenSslError("EC_GROUP_new_by_curve_name(P-256)");
  // SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y.
  std::array<uint8_t, 1 + 2 * kP256CoordinateSize> encoded;
  encoded[0] = 0x04;
  std::copy(key.x.begin(), key.x.end(), encoded.begin() + 1);
  std::copy(key.y.begin(), key.y.end(), encoded.begin() + 1 + kP256CoordinateSize);
  EcPointPtr point(EC_POINT_new(group));
  if (point == nullptr) return internal::OpenSslError("EC_POINT_new");
  if (EC_POINT_oct2point(group, point.get(), encoded.data(), encoded.size(), nullptr) != 1 ||
      EC_POINT_is_at_infinity(group, point.get()) == 1 ||
      EC_POINT_is_on_curve(group, point.get(), nullptr) != 1) {
    ERR_clear_error();
    return InvalidArgumentError("EC public key is not a valid P-256 point");
  }
  EcKeyPtr ec(EC_KEY_new());
  if (ec == nullptr || EC_KEY_set_group(ec.get(), group) != 1 ||
      EC_KEY_set_public_key(ec.get(), point.get()) != 1) {
    return internal::OpenSslError("EC_KEY (P-256)");
  }
  return ec;
}

absl::Status CheckRsaKey(const RsaPublicKey& key, BIGNUM* n) {
  const int bits = BN_num_bits(n);
  if (bits < kMinRsaBits || bits > kMaxRsaBits) {
    return InvalidArgumentError("RSA modulus of {} bits is not in [{}, {}]", bits, kMinRsaBits,
                                kMaxRsaBits);
  }
  if (key.exponent < 3 || key.exponent % 2 == 0) {
    return InvalidArgumentError("RSA public exponent {} is not odd and at least 3", key.exponent);
  }
  return absl::OkStatus();
}

}  // namespace

namespace internal {

absl::StatusOr<PkeyPtr> RsaPublicKeyToPkey(const RsaPublicKey& key) {
  BnPtr n(BN_bin2bn(key.modulus.data(), static_cast<int>(key.modulus.size()), nullptr));
  BnPtr e(BN_new());
  if (!n || !e || BN_set_word(e.get(), key.exponent) != 1) return OpenSslError("RSA key");
  RETURN_IF_ERROR(CheckRsaKey(key, n.get()));
  ParamBldPtr bld(OSSL_PARAM_BLD_new());
  if (!bld || OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, e.get()) != 1) {
    return OpenSslError("RSA key parameters");
  }
  ParamPtr params(OSSL_PARAM_BLD_to_param(bld.get()));
  if (!params) return OpenSslError("RSA key parameters");
  return FromData("RSA", params.get());
}

absl::StatusOr<RsaPublicKey> PkeyToRsaPublicKey(const EVP_PKEY* pkey) {
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
    return InvalidArgumentError("not an RSA key");
  }
  BIGNUM* n = nullptr;
  BIGNUM* e = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &e) != 1) {
    BN_free(n);
    BN_free(e);
    return OpenSslError("RSA key components");
  }
  BnPtr n_owner(n);
  BnPtr e_owner(e);
  if (BN_num_bits(e) > 32) return InvalidArgumentError("RSA public exponent above 2^32");
  RsaPublicKey key;
  key.modulus.resize(static_cast<size_t>(BN_num_bytes(n)));
  BN_bn2bin(n, key.modulus.data());
  key.exponent = static_cast<uint32_t>(BN_get_word(e));
  return key;
}

absl::StatusOr<PkeyPtr> EcP256PublicKeyToPkey(const EcP256PublicKey& key) {
  // SEC 1 §2.3.3 uncompressed point: 0x04 || X || Y.
  std::array<uint8_t, 1 + 2 * kP256CoordinateSize> point;
  point[0] = 0x04;
  std::copy(key.x.begin(), key.x.end(), point.begin() + 1);
  std::copy(key.y.begin(), key.y.end(), point.begin() + 1 + kP256CoordinateSize);
  char group[] = "prime256v1";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0),
      OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point.data(), point.size()),
      OSSL_PARAM_construct_end(),
  };
  ASSIGN_OR_RETURN(PkeyPtr pkey, FromData("EC", params));
  // The import decodes the point with EC_POINT_oct2point, which refuses points off the curve;
  // the quick check states it explicitly (on the curve, not the point at infinity). P-256 has
  // cofactor 1, so every such point has order n and the full check's n*Q = O test would only
  // cost a scalar multiplication (SP 800-56A §5.6.2.3.4 partial validation suffices).
  PkeyCtxPtr check(EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (!check || EVP_PKEY_public_check_quick(check.get()) != 1) {
    ERR_clear_error();
    return InvalidArgumentError("EC public key is not a valid P-256 point");
  }
  return pkey;
}

absl::StatusOr<EcP256PublicKey> PkeyToEcP256PublicKey(const EVP_PKEY* pkey) {
  char group[64] = {};
  size_t group_size = 0;
  if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
      EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group),
                                     &group_size) != 1 ||
      std::string_view(group, group_size) != "prime256v1") {
    ERR_clear_error();
    return InvalidArgumentError("not a P-256 key");
  }
  BIGNUM* x = nullptr;
  BIGNUM* y = nullptr;
  if (EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_X, &x) != 1 ||
      EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_EC_PUB_Y, &y) != 1) {
    BN_free(x);
    BN_free(y);
    return OpenSslError("EC public key coordinates");
  }
  BnPtr x_owner(x);
  BnPtr y_owner(y);
  EcP256PublicKey key;
  if (BN_bn2binpad(x, key.x.data(), static_cast<int>(key.x.size())) < 0 ||
      BN_bn2binpad(y, key.y.data(), static_cast<int>(key.y.size())) < 0) {
    return OpenSslError("EC public key coordinates");
  }
  return key;
}

}  // namespace internal

absl::StatusOr<std::vector<uint8_t>> RsaOaepSha256Encrypt(const RsaPublicKey& key,
                                                          std::span<const uint8_t> plaintext,
                                                          std::span<const uint8_t> label) {
  // RFC 8017 §7.1.1 with the RSA key held as an RSA object (deprecated API, as for ECDSA above):
  // EME-OAEP encoding (RSA_padding_add_PKCS1_OAEP_mgf1: a fresh seed from the CSPRNG), then the
  // raw RSAEP of the encoded message, which starts with 0x00 and so is below n. The provider path
  // (EVP_PKEY_fromdata + EVP_PKEY_encrypt) gives the same bytes but builds and fetches a key
  // manager and cipher per call, half of this function's cost.
  static const EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  if (sha256 == nullptr) return internal::OpenSslError("SHA-256 fetch");
  BnPtr n(BN_bin2bn(key.modulus.data(), static_cast<int>(key.modulus.size()), nullptr));
  BnPtr e(BN_new());
  if (!n || !e || BN_set_word(e.get(), key.exponent) != 1) return internal::OpenSslError("RSA key");
  RETURN_IF_ERROR(CheckRsaKey(key, n.get()));
  const size_t k = static_cast<size_t>(BN_num_bytes(n.get()));
  if (plaintext.size() + kOaepSha256Overhead > k) {
    return InvalidArgumentError("RSA-OAEP plaintext of {} bytes is too long for a {}-byte key",
                                plaintext.size(), k);
  }
  RsaPtr rsa(RSA_new());
  if (!rsa || RSA_set0_key(rsa.get(), n.get(), e.get(), nullptr) != 1) {
    return internal::OpenSslError("RSA key");
  }
  n.release();  // owned by rsa now
  e.release();
  // The encoded message holds the plaintext (a secret seed for MakeCredential): wiped below.
  std::vector<uint8_t> encoded(k);
  std::vector<uint8_t> out(k);
  static const uint8_t kEmpty = 0;
  const bool ok = RSA_padding_add_PKCS1_OAEP_mgf1(
                      encoded.data(), static_cast<int>(k), plaintext.data(),
                      static_cast<int>(plaintext.size()), label.empty() ? &kEmpty : label.data(),
                      static_cast<int>(label.size()), sha256, sha256) == 1 &&
                  RSA_public_encrypt(static_cast<int>(k), encoded.data(), out.data(), rsa.get(),
                                     RSA_NO_PADDING) == static_cast<int>(k);
  OPENSSL_cleanse(encoded.data(), encoded.size());
  if (!ok) return internal::OpenSslError("RSA-OAEP encrypt");
  return out;
}

absl::Status ValidateEcP256PublicKey(const EcP256PublicKey& key) {
  return EcP256PublicEcKey(key).status();
}

absl::Status EcdsaP256Sha256Verify(const EcP256PublicKey& key, std::span<const uint8_t> message,
                                   const EcdsaSignature& signature) {
  const absl::Status denied = PermissionDeniedError("signature does not verify");
  if (signature.r.empty() || signature.s.empty() || signature.r.size() > kP256CoordinateSize ||
      signature.s.size() > kP256CoordinateSize) {
    return denied;
  }
  ASSIGN_OR_RETURN(EcKeyPtr ec, EcP256PublicEcKey(key));
  EcdsaSigPtr sig(ECDSA_SIG_new());
  BnPtr r(BN_bin2bn(signature.r.data(), static_cast<int>(signature.r.size()), nullptr));
  BnPtr s(BN_bin2bn(signature.s.data(), static_cast<int>(signature.s.size()), nullptr));
  if (!sig || !r || !s || ECDSA_SIG_set0(sig.get(), r.get(), s.get()) != 1) {
    return internal::OpenSslError("ECDSA signature");
  }
  r.release();  // owned by sig now
  s.release();
  // FIPS 186-4 §6.4 over e = SHA-256(message) (32 bytes, the size of n: no truncation).
  // ECDSA_do_verify refuses r or s outside [1, n-1].
  const auto digest = Sha256({message});
  const int verified =
      ECDSA_do_verify(digest.data(), static_cast<int>(digest.size()), sig.get(), ec.get());
  ERR_clear_error();
  if (verified != 1) return denied;
  return absl::OkStatus();
}

struct EcdsaP256PrivateKey::State {
  PkeyPtr pkey;
};

EcdsaP256PrivateKey::EcdsaP256PrivateKey(std::unique_ptr<State> state, EcP256PublicKey public_key)
    : state_(std::move(state)), public_key_(public_key) {}
EcdsaP256PrivateKey::EcdsaP256PrivateKey(EcdsaP256PrivateKey&&) noexcept = default;
EcdsaP256PrivateKey& EcdsaP256PrivateKey::operator=(EcdsaP256PrivateKey&&) noexcept = default;
EcdsaP256PrivateKey::~EcdsaP256PrivateKey() = default;

absl::StatusOr<EcdsaP256PrivateKey> EcdsaP256PrivateKey::Generate() {
  char group[] = "P-256";
  PkeyPtr pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", group));
  if (!pkey) return internal::OpenSslError("P-256 key generation");
  ASSIGN_OR_RETURN(EcP256PublicKey public_key, internal::PkeyToEcP256PublicKey(pkey.get()));
  auto state = std::make_unique<State>();
  state->pkey = std::move(pkey);
  return EcdsaP256PrivateKey(std::move(state), public_key);
}

absl::StatusOr<EcdsaSignature> EcdsaP256PrivateKey::Sign(std::span<const uint8_t> message) const {
  MdCtxPtr md(EVP_MD_CTX_new());
  size_t der_size = 0;
  if (!md ||
      EVP_DigestSignInit_ex(md.get(), nullptr, "SHA256", nullptr, nullptr, state_->pkey.get(),
                            nullptr) != 1 ||
      EVP_DigestSign(md.get(), nullptr, &der_size, message.data(), message.size()) != 1) {
    return internal::OpenSslError("ECDSA sign setup");
  }
  std::vector<uint8_t> der(der_size);
  if (EVP_DigestSign(md.get(), der.data(), &der_size, message.data(), message.size()) != 1) {
    return internal::OpenSslError("ECDSA sign");
  }
  const unsigned char* p = der.data();
  EcdsaSigPtr sig(d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(der_size)));
  if (!sig) return internal::OpenSslError("ECDSA signature decoding");
  EcdsaSignature out;
  out.r.resize(kP256CoordinateSize);
  out.s.resize(kP256CoordinateSize);
  if (BN_bn2binpad(ECDSA_SIG_get0_r(sig.get()), out.r.data(), kP256CoordinateSize) < 0 ||
      BN_bn2binpad(ECDSA_SIG_get0_s(sig.get()), out.s.data(), kP256CoordinateSize) < 0) {
    return internal::OpenSslError("ECDSA signature encoding");
  }
  return out;
}

}  // namespace keywarden::crypto
