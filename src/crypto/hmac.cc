#include "keywarden/crypto/hmac.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>

#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "keywarden/crypto/random.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {

namespace internal {

EVP_MAC* HmacSha256Algorithm() {
  static EVP_MAC* const mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}

EVP_MAC_CTX* NewHmacSha256Ctx(const uint8_t* key, size_t key_size) {
  if (HmacSha256Algorithm() == nullptr) return nullptr;
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(HmacSha256Algorithm());
  if (ctx == nullptr) return nullptr;
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  // HMAC with an empty key is well defined (RFC 2104 pads it with zeros), but OpenSSL wants a
  // non-null pointer.
  static const uint8_t kEmpty = 0;
  if (EVP_MAC_init(ctx, key_size == 0 ? &kEmpty : key, key_size, params) != 1) {
    EVP_MAC_CTX_free(ctx);
    return nullptr;
  }
  return ctx;
}

const EVP_CIPHER* FetchedCipher(const char* name) {
  static std::mutex mu;
  static std::map<std::string, EVP_CIPHER*>* ciphers = new std::map<std::string, EVP_CIPHER*>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = ciphers->find(name);
  if (it != ciphers->end()) return it->second;
  EVP_CIPHER* cipher = EVP_CIPHER_fetch(nullptr, name, nullptr);
  if (cipher != nullptr) ciphers->emplace(name, cipher);
  return cipher;
}

}  // namespace internal

struct HmacSha256::State {
  explicit State(EVP_MAC_CTX* prototype) : pool(prototype) {}
  internal::MacPool pool;
};

HmacSha256::HmacSha256(std::unique_ptr<State> state) : state_(std::move(state)) {}
HmacSha256::~HmacSha256() = default;

absl::StatusOr<std::unique_ptr<HmacSha256>> HmacSha256::New(const SecretBytes& key) {
  if (key.size() < 16) {
    return InvalidArgumentError("HMAC-SHA256 key of {} bytes is too short (minimum 16)",
                                key.size());
  }
  const auto bytes = key.Reveal(InsecureSecretAccess::Get());
  EVP_MAC_CTX* ctx = internal::NewHmacSha256Ctx(bytes.data(), bytes.size());
  if (ctx == nullptr) return internal::OpenSslError("HMAC-SHA256 setup");
  return std::unique_ptr<HmacSha256>(new HmacSha256(std::make_unique<State>(ctx)));
}

absl::StatusOr<std::array<uint8_t, kHmacSha256TagSize>> HmacSha256::Compute(
    std::span<const uint8_t> data) const {
  auto ctx = state_->pool.Acquire();
  if (!ctx) return internal::OpenSslError("HMAC-SHA256 context");
  std::array<uint8_t, kHmacSha256TagSize> tag;
  size_t tag_size = 0;
  if (EVP_MAC_init(ctx.get(), nullptr, 0, nullptr) != 1 ||
      EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), tag.data(), &tag_size, tag.size()) != 1 || tag_size != tag.size()) {
    return internal::OpenSslError("HMAC-SHA256");
  }
  return tag;
}

absl::Status HmacSha256::Verify(std::span<const uint8_t> tag, std::span<const uint8_t> data) const {
  if (tag.size() < kHmacSha256MinTagSize || tag.size() > kHmacSha256TagSize) {
    return InvalidArgumentError("HMAC-SHA256 tag of {} bytes is not in [{}, {}]", tag.size(),
                                kHmacSha256MinTagSize, kHmacSha256TagSize);
  }
  ASSIGN_OR_RETURN(auto expected, Compute(data));
  const bool ok = ConstantTimeEquals(tag, std::span<const uint8_t>(expected).first(tag.size()));
  OPENSSL_cleanse(expected.data(), expected.size());
  if (!ok) return InvalidArgumentError("tag mismatch");
  return absl::OkStatus();
}

}  // namespace keywarden::crypto
