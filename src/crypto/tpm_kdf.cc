#include "keywarden/crypto/tpm_kdf.h"

#include <openssl/crypto.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cstring>

#include "keywarden/crypto/hmac.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

void PutUint32(uint32_t value, uint8_t out[4]) {
  out[0] = static_cast<uint8_t>(value >> 24);
  out[1] = static_cast<uint8_t>(value >> 16);
  out[2] = static_cast<uint8_t>(value >> 8);
  out[3] = static_cast<uint8_t>(value);
}

const char* CfbCipherName(size_t key_size) {
  switch (key_size) {
    case 16:
      return "AES-128-CFB";
    case 24:
      return "AES-192-CFB";
    case 32:
      return "AES-256-CFB";
    default:
      return nullptr;
  }
}

// kMaxCfbMessage keeps lengths inside OpenSSL's int and far above any TPM use.
constexpr size_t kMaxCfbMessage = size_t{1} << 30;

// CfbCrypt runs AES-CFB128 over `in` into `out` (same size).
absl::Status CfbCrypt(bool encrypt, const SecretBytes& key, std::span<const uint8_t> iv,
                      std::span<const uint8_t> in, uint8_t* out) {
  const char* name = CfbCipherName(key.size());
  if (name == nullptr) {
    return InvalidArgumentError("AES-CFB key of {} bytes; want 16, 24 or 32", key.size());
  }
  if (in.size() > kMaxCfbMessage) return InvalidArgumentError("AES-CFB input too large");
  const EVP_CIPHER* cipher = internal::FetchedCipher(name);
  if (cipher == nullptr) return internal::OpenSslError("AES-CFB fetch");
  internal::CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  const uint8_t* k = key.Reveal(InsecureSecretAccess::Get()).data();
  int written = 0;
  int final_written = 0;
  const bool ok =
      ctx && EVP_CipherInit_ex2(ctx.get(), cipher, k, iv.data(), encrypt ? 1 : 0, nullptr) == 1 &&
      (in.empty() ||
       EVP_CipherUpdate(ctx.get(), out, &written, in.data(), static_cast<int>(in.size())) == 1) &&
      EVP_CipherFinal_ex(ctx.get(), out + written, &final_written) == 1 &&
      static_cast<size_t>(written + final_written) == in.size();
  if (!ok) return internal::OpenSslError(encrypt ? "AES-CFB encrypt" : "AES-CFB decrypt");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SecretBytes> KdfaSha256(const SecretBytes& key, std::string_view label,
                                       std::span<const uint8_t> context_u,
                                       std::span<const uint8_t> context_v, size_t bits) {
  if (bits == 0 || bits > kKdfaMaxBits) {
    return InvalidArgumentError("KDFa output of {} bits is not in [1, {}]", bits, kKdfaMaxBits);
  }
  if (label.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("KDFa label must not contain a NUL (the terminator is implied)");
  }
  const auto k = key.Reveal(InsecureSecretAccess::Get());
  internal::MacCtxPtr ctx(internal::NewHmacSha256Ctx(k.data(), k.size()));
  if (!ctx) return internal::OpenSslError("KDFa HMAC setup");

  const size_t size = (bits + 7) / 8;
  SecretBytes out(size);
  uint8_t* dst = out.MutableReveal(InsecureSecretAccess::Get()).data();
  uint8_t length_bits[4];
  PutUint32(static_cast<uint32_t>(bits), length_bits);
  static constexpr uint8_t kZero = 0;
  std::array<uint8_t, kHmacSha256TagSize> block;
  size_t done = 0;
  for (uint32_t counter = 1; done < size; ++counter) {
    uint8_t counter_bytes[4];
    PutUint32(counter, counter_bytes);
    size_t block_size = 0;
    // Part 1 §11.4.10.2: K(i) = HMAC(key, [i]2 || Label || 00h || Context || [L]2), where
    // Context = contextU || contextV. Re-initialising with a null key keeps the HMAC key.
    bool ok = EVP_MAC_init(ctx.get(), nullptr, 0, nullptr) == 1 &&
              EVP_MAC_update(ctx.get(), counter_bytes, sizeof(counter_bytes)) == 1 &&
              EVP_MAC_update(ctx.get(), reinterpret_cast<const uint8_t*>(label.data()),
                             label.size()) == 1 &&
              EVP_MAC_update(ctx.get(), &kZero, 1) == 1 &&
              EVP_MAC_update(ctx.get(), context_u.data(), context_u.size()) == 1 &&
              EVP_MAC_update(ctx.get(), context_v.data(), context_v.size()) == 1 &&
              EVP_MAC_update(ctx.get(), length_bits, sizeof(length_bits)) == 1 &&
              EVP_MAC_final(ctx.get(), block.data(), &block_size, block.size()) == 1 &&
              block_size == block.size();
    if (!ok) {
      OPENSSL_cleanse(block.data(), block.size());
      return internal::OpenSslError("KDFa HMAC");
    }
    const size_t take = std::min(block.size(), size - done);
    std::memcpy(dst + done, block.data(), take);
    done += take;
  }
  OPENSSL_cleanse(block.data(), block.size());
  // Part 1 §11.4.10.2: a bit count that is not a multiple of 8 keeps the low-order bits of the
  // first octet (the TPM masks the leading octet, as the reference code's CryptKDFa does).
  if (bits % 8 != 0) dst[0] &= static_cast<uint8_t>((1u << (bits % 8)) - 1);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> AesCfbEncrypt(const SecretBytes& key,
                                                   std::span<const uint8_t, kAesCfbIvSize> iv,
                                                   std::span<const uint8_t> plaintext) {
  std::vector<uint8_t> out(plaintext.size());
  uint8_t empty = 0;
  RETURN_IF_ERROR(CfbCrypt(true, key, iv, plaintext, out.empty() ? &empty : out.data()));
  return out;
}

absl::StatusOr<SecretBytes> AesCfbDecrypt(const SecretBytes& key,
                                          std::span<const uint8_t, kAesCfbIvSize> iv,
                                          std::span<const uint8_t> ciphertext) {
  SecretBytes out(ciphertext.size());
  uint8_t empty = 0;
  uint8_t* dst = out.empty() ? &empty : out.MutableReveal(InsecureSecretAccess::Get()).data();
  RETURN_IF_ERROR(CfbCrypt(false, key, iv, ciphertext, dst));
  return out;
}

}  // namespace keywarden::crypto
