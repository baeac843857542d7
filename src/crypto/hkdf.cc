#include "keywarden/crypto/hkdf.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/kdf.h>

#include <array>
#include <cstring>

#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

constexpr std::array<uint8_t, kHkdfSha256HashLen> kZeroSalt{};

absl::Status CheckLength(size_t length) {
  if (length < 1 || length > kHkdfSha256MaxOutput) {
    return InvalidArgumentError("HKDF-SHA256 output length {} is not in [1, {}]", length,
                                kHkdfSha256MaxOutput);
  }
  return absl::OkStatus();
}

EVP_KDF* HkdfAlgorithm() {
  static EVP_KDF* const kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  return kdf;
}

}  // namespace

absl::StatusOr<SecretBytes> HkdfSha256Extract(std::span<const uint8_t> salt,
                                              std::span<const uint8_t> ikm) {
  // RFC 5869 §2.2: PRK = HMAC-Hash(salt, IKM); an absent salt is HashLen zeros.
  if (salt.empty()) salt = kZeroSalt;
  internal::MacCtxPtr ctx(internal::NewHmacSha256Ctx(salt.data(), salt.size()));
  if (!ctx) return internal::OpenSslError("HKDF-Extract setup");
  SecretBytes prk(kHkdfSha256HashLen);
  auto out = prk.MutableReveal(InsecureSecretAccess::Get());
  size_t written = 0;
  if (EVP_MAC_update(ctx.get(), ikm.data(), ikm.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &written, out.size()) != 1 || written != out.size()) {
    return internal::OpenSslError("HKDF-Extract");
  }
  return prk;
}

absl::StatusOr<SecretBytes> HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                                       std::span<const uint8_t> info, size_t length) {
  RETURN_IF_ERROR(CheckLength(length));
  if (HkdfAlgorithm() == nullptr) return internal::OpenSslError("HKDF fetch");
  internal::KdfCtxPtr ctx(EVP_KDF_CTX_new(HkdfAlgorithm()));
  if (!ctx) return internal::OpenSslError("HKDF context");
  static const uint8_t kEmpty = 0;
  auto ptr = [](std::span<const uint8_t> s) {
    return const_cast<uint8_t*>(s.empty() ? &kEmpty : s.data());
  };
  char digest[] = "SHA256";
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, ptr(ikm), ikm.size());
  if (!salt.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, ptr(salt), salt.size());
  }
  if (!info.empty()) {
    params[n++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, ptr(info), info.size());
  }
  params[n] = OSSL_PARAM_construct_end();
  SecretBytes okm(length);
  if (EVP_KDF_derive(ctx.get(), okm.MutableReveal(InsecureSecretAccess::Get()).data(), length,
                     params) != 1) {
    return internal::OpenSslError("HKDF-SHA256");
  }
  return okm;
}

struct HkdfSha256Expander::State {
  explicit State(EVP_MAC_CTX* prototype) : pool(prototype) {}
  internal::MacPool pool;
};

HkdfSha256Expander::HkdfSha256Expander(std::unique_ptr<State> state) : state_(std::move(state)) {}
HkdfSha256Expander::~HkdfSha256Expander() = default;

absl::StatusOr<std::unique_ptr<HkdfSha256Expander>> HkdfSha256Expander::New(
    const SecretBytes& prk) {
  if (prk.size() < kHkdfSha256HashLen) {
    return InvalidArgumentError("HKDF PRK of {} bytes is shorter than {}", prk.size(),
                                kHkdfSha256HashLen);
  }
  const auto bytes = prk.Reveal(InsecureSecretAccess::Get());
  EVP_MAC_CTX* ctx = internal::NewHmacSha256Ctx(bytes.data(), bytes.size());
  if (ctx == nullptr) return internal::OpenSslError("HKDF-Expand setup");
  return std::unique_ptr<HkdfSha256Expander>(new HkdfSha256Expander(std::make_unique<State>(ctx)));
}

absl::StatusOr<SecretBytes> HkdfSha256Expander::Expand(std::span<const uint8_t> info,
                                                       size_t length) const {
  return ExpandParts({info}, length);
}

absl::StatusOr<SecretBytes> HkdfSha256Expander::ExpandParts(
    std::initializer_list<std::span<const uint8_t>> info_parts, size_t length) const {
  RETURN_IF_ERROR(CheckLength(length));
  auto ctx = state_->pool.Acquire();
  if (!ctx) return internal::OpenSslError("HKDF-Expand context");

  // RFC 5869 §2.3: T(0) = empty; T(i) = HMAC(PRK, T(i-1) || info || i); OKM = first L bytes of
  // T(1) || T(2) || ... EVP_MAC_init with a null key restarts HMAC from the keyed state, so no
  // key setup or algorithm fetch happens here.
  SecretBytes okm(length);
  const auto token = InsecureSecretAccess::Get();
  uint8_t* out = okm.MutableReveal(token).data();
  std::array<uint8_t, kHkdfSha256HashLen> t{};
  size_t t_size = 0;
  size_t done = 0;
  bool ok = true;
  for (uint8_t counter = 1; ok && done < length; ++counter) {
    size_t written = 0;
    ok = EVP_MAC_init(ctx.get(), nullptr, 0, nullptr) == 1 &&
         (t_size == 0 || EVP_MAC_update(ctx.get(), t.data(), t_size) == 1);
    for (const auto& part : info_parts) {
      ok = ok && (part.empty() || EVP_MAC_update(ctx.get(), part.data(), part.size()) == 1);
    }
    ok = ok && EVP_MAC_update(ctx.get(), &counter, 1) == 1 &&
         EVP_MAC_final(ctx.get(), t.data(), &written, t.size()) == 1 && written == t.size();
    t_size = t.size();
    const size_t take = std::min(t.size(), length - done);
    if (ok) std::memcpy(out + done, t.data(), take);
    done += take;
  }
  OPENSSL_cleanse(t.data(), t.size());
  if (!ok) return internal::OpenSslError("HKDF-Expand");
  return okm;
}

}  // namespace keywarden::crypto
