#include "keywarden/crypto/key_wrap.h"

#include <climits>

#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

const char* CipherName(size_t key_size, AesKeyWrap::Padding padding) {
  const bool pad = padding == AesKeyWrap::Padding::kRfc5649;
  switch (key_size) {
    case 16:
      return pad ? "AES-128-WRAP-PAD" : "AES-128-WRAP";
    case 24:
      return pad ? "AES-192-WRAP-PAD" : "AES-192-WRAP";
    case 32:
      return pad ? "AES-256-WRAP-PAD" : "AES-256-WRAP";
    default:
      return nullptr;
  }
}

constexpr size_t kSemiblock = 8;
// Bound on the data one call wraps; key wrap is for keys, and this keeps sizes in int range.
constexpr size_t kMaxKeyData = 1 << 20;

}  // namespace

struct AesKeyWrap::State {
  State(const EVP_CIPHER* c, SecretBytes k, Padding p) : cipher(c), kek(std::move(k)), padding(p) {}
  const EVP_CIPHER* cipher;
  SecretBytes kek;
  Padding padding;
};

AesKeyWrap::AesKeyWrap(std::unique_ptr<State> state) : state_(std::move(state)) {}
AesKeyWrap::~AesKeyWrap() = default;

absl::StatusOr<std::unique_ptr<AesKeyWrap>> AesKeyWrap::New(const SecretBytes& kek,
                                                            Padding padding) {
  const char* name = CipherName(kek.size(), padding);
  if (name == nullptr) {
    return InvalidArgumentError("AES key-wrap KEK of {} bytes; want 16, 24 or 32", kek.size());
  }
  const EVP_CIPHER* cipher = internal::FetchedCipher(name);
  if (cipher == nullptr) return internal::OpenSslError("AES key-wrap fetch");
  return std::unique_ptr<AesKeyWrap>(
      new AesKeyWrap(std::make_unique<State>(cipher, kek.Clone(), padding)));
}

absl::StatusOr<std::vector<uint8_t>> AesKeyWrap::Wrap(std::span<const uint8_t> key) const {
  if (state_->padding == Padding::kNone) {
    // RFC 3394 §2: n >= 2 64-bit blocks of key data.
    if (key.size() < 2 * kSemiblock || key.size() % kSemiblock != 0 || key.size() > kMaxKeyData) {
      return InvalidArgumentError(
          "RFC 3394 key wrap needs a multiple of 8 bytes, at least 16; got {}", key.size());
    }
  } else if (key.empty() || key.size() > kMaxKeyData) {
    return InvalidArgumentError("RFC 5649 key wrap needs 1 to {} bytes; got {}", kMaxKeyData,
                                key.size());
  }
  internal::CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return internal::OpenSslError("key-wrap context");
  std::vector<uint8_t> out((key.size() + kSemiblock - 1) / kSemiblock * kSemiblock + kSemiblock);
  int written = 0;
  int final_written = 0;
  if (EVP_EncryptInit_ex2(ctx.get(), state_->cipher,
                          state_->kek.Reveal(InsecureSecretAccess::Get()).data(), nullptr,
                          nullptr) != 1 ||
      EVP_EncryptUpdate(ctx.get(), out.data(), &written, key.data(),
                        static_cast<int>(key.size())) != 1 ||
      EVP_EncryptFinal_ex(ctx.get(), out.data() + written, &final_written) != 1) {
    return internal::OpenSslError("key wrap");
  }
  out.resize(static_cast<size_t>(written + final_written));
  return out;
}

absl::StatusOr<SecretBytes> AesKeyWrap::Unwrap(std::span<const uint8_t> wrapped) const {
  const absl::Status generic = InvalidArgumentError("unwrap failed");
  const size_t min_size = state_->padding == Padding::kNone ? 3 * kSemiblock : 2 * kSemiblock;
  if (wrapped.size() < min_size || wrapped.size() % kSemiblock != 0 ||
      wrapped.size() > kMaxKeyData + 2 * kSemiblock) {
    return generic;
  }
  internal::CipherCtxPtr ctx(EVP_CIPHER_CTX_new());
  if (!ctx) return internal::OpenSslError("key-wrap context");
  // The output buffer is locked memory from the start: it receives the key.
  SecretBytes scratch(wrapped.size());
  const auto token = InsecureSecretAccess::Get();
  int written = 0;
  int final_written = 0;
  if (EVP_DecryptInit_ex2(ctx.get(), state_->cipher, state_->kek.Reveal(token).data(), nullptr,
                          nullptr) != 1 ||
      EVP_DecryptUpdate(ctx.get(), scratch.MutableReveal(token).data(), &written, wrapped.data(),
                        static_cast<int>(wrapped.size())) != 1 ||
      written <= 0 ||
      EVP_DecryptFinal_ex(ctx.get(), scratch.MutableReveal(token).data() + written,
                          &final_written) != 1) {
    ERR_clear_error();
    return generic;
  }
  return SecretBytes(scratch.Reveal(token).first(static_cast<size_t>(written + final_written)));
}

}  // namespace keywarden::crypto
