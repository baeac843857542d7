#include "keywarden/crypto/sha256.h"

#include <openssl/evp.h>

#include <cstdlib>

namespace keywarden::crypto {

std::array<uint8_t, kSha256Size> Sha256(std::initializer_list<std::span<const uint8_t>> parts) {
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  std::array<uint8_t, kSha256Size> digest{};
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = md != nullptr && ctx != nullptr && EVP_DigestInit_ex2(ctx, md, nullptr) == 1;
  for (const auto& part : parts) {
    ok = ok && (part.empty() || EVP_DigestUpdate(ctx, part.data(), part.size()) == 1);
  }
  unsigned int size = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, digest.data(), &size) == 1 && size == digest.size();
  EVP_MD_CTX_free(ctx);
  if (!ok) std::abort();  // SHA-256 unavailable: the installation is broken
  return digest;
}

}  // namespace keywarden::crypto
