#include "keywarden/crypto/aes_gcm.h"

#include <climits>
#include <cstring>

#include "keywarden/crypto/random.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

const char* CipherName(size_t key_size) {
  switch (key_size) {
    case 16:
      return "AES-128-GCM";
    case 24:
      return "AES-192-GCM";
    case 32:
      return "AES-256-GCM";
    default:
      return nullptr;
  }
}

// Messages are bounded well below GCM's limit (2^39 - 256 bits) and int range.
constexpr size_t kMaxMessage = size_t{1} << 30;

}  // namespace

struct AesGcm::State {
  State(EVP_CIPHER_CTX* enc, EVP_CIPHER_CTX* dec) : encrypt(enc), decrypt(dec) {}
  internal::CipherPool encrypt;
  internal::CipherPool decrypt;
};

AesGcm::AesGcm(std::unique_ptr<State> state) : state_(std::move(state)) {}
AesGcm::~AesGcm() = default;

absl::StatusOr<std::unique_ptr<AesGcm>> AesGcm::New(const SecretBytes& key) {
  const char* name = CipherName(key.size());
  if (name == nullptr) {
    return InvalidArgumentError("AES-GCM key of {} bytes; want 16, 24 or 32", key.size());
  }
  const EVP_CIPHER* cipher = internal::FetchedCipher(name);
  if (cipher == nullptr) return internal::OpenSslError("AES-GCM fetch");
  const uint8_t* k = key.Reveal(InsecureSecretAccess::Get()).data();
  internal::CipherCtxPtr enc(EVP_CIPHER_CTX_new());
  internal::CipherCtxPtr dec(EVP_CIPHER_CTX_new());
  if (!enc || !dec || EVP_EncryptInit_ex2(enc.get(), cipher, k, nullptr, nullptr) != 1 ||
      EVP_DecryptInit_ex2(dec.get(), cipher, k, nullptr, nullptr) != 1) {
    return internal::OpenSslError("AES-GCM setup");
  }
  return std::unique_ptr<AesGcm>(new AesGcm(std::make_unique<State>(enc.release(), dec.release())));
}

absl::StatusOr<std::vector<uint8_t>> AesGcm::Encrypt(std::span<const uint8_t> plaintext,
                                                     std::span<const uint8_t> aad) const {
  uint8_t nonce[kNonceSize];
  RETURN_IF_ERROR(RandomFill(nonce));
  ASSIGN_OR_RETURN(std::vector<uint8_t> sealed, EncryptWithNonce(nonce, plaintext, aad));
  sealed.insert(sealed.begin(), nonce, nonce + kNonceSize);
  return sealed;
}

absl::StatusOr<SecretBytes> AesGcm::Decrypt(std::span<const uint8_t> ciphertext,
                                            std::span<const uint8_t> aad) const {
  if (ciphertext.size() < kNonceSize + kTagSize) {
    return InvalidArgumentError("decryption failed");
  }
  return DecryptWithNonce(ciphertext.first(kNonceSize), ciphertext.subspan(kNonceSize), aad);
}

absl::StatusOr<std::vector<uint8_t>> AesGcm::EncryptWithNonce(std::span<const uint8_t> nonce,
                                                              std::span<const uint8_t> plaintext,
                                                              std::span<const uint8_t> aad) const {
  if (nonce.size() != kNonceSize) {
    return InvalidArgumentError("AES-GCM nonce of {} bytes; want {}", nonce.size(), kNonceSize);
  }
  if (plaintext.size() > kMaxMessage || aad.size() > kMaxMessage) {
    return InvalidArgumentError("AES-GCM input too large");
  }
  auto ctx = state_->encrypt.Acquire();
  if (!ctx) return internal::OpenSslError("AES-GCM context");
  std::vector<uint8_t> out(plaintext.size() + kTagSize);
  int n = 0;
  int written = 0;
  bool ok =
      EVP_EncryptInit_ex2(ctx.get(), nullptr, nullptr, nonce.data(), nullptr) == 1 &&
      (aad.empty() ||
       EVP_EncryptUpdate(ctx.get(), nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1) &&
      (plaintext.empty() || EVP_EncryptUpdate(ctx.get(), out.data(), &written, plaintext.data(),
                                              static_cast<int>(plaintext.size())) == 1);
  int final_written = 0;
  ok = ok && EVP_EncryptFinal_ex(ctx.get(), out.data() + written, &final_written) == 1 &&
       static_cast<size_t>(written + final_written) == plaintext.size() &&
       EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_GET_TAG, kTagSize,
                           out.data() + plaintext.size()) == 1;
  if (!ok) return internal::OpenSslError("AES-GCM encrypt");
  return out;
}

absl::StatusOr<SecretBytes> AesGcm::DecryptWithNonce(std::span<const uint8_t> nonce,
                                                     std::span<const uint8_t> ciphertext_and_tag,
                                                     std::span<const uint8_t> aad) const {
  const absl::Status generic = InvalidArgumentError("decryption failed");
  if (nonce.size() != kNonceSize || ciphertext_and_tag.size() < kTagSize ||
      ciphertext_and_tag.size() > kMaxMessage + kTagSize || aad.size() > kMaxMessage) {
    return generic;
  }
  auto ctx = state_->decrypt.Acquire();
  if (!ctx) return internal::OpenSslError("AES-GCM context");
  const size_t ct_size = ciphertext_and_tag.size() - kTagSize;
  uint8_t tag[kTagSize];
  std::memcpy(tag, ciphertext_and_tag.data() + ct_size, kTagSize);
  SecretBytes plaintext(ct_size);
  uint8_t empty_out = 0;
  uint8_t* out =
      ct_size == 0 ? &empty_out : plaintext.MutableReveal(InsecureSecretAccess::Get()).data();
  int n = 0;
  int written = 0;
  int final_written = 0;
  const bool ok =
      EVP_DecryptInit_ex2(ctx.get(), nullptr, nullptr, nonce.data(), nullptr) == 1 &&
      (aad.empty() ||
       EVP_DecryptUpdate(ctx.get(), nullptr, &n, aad.data(), static_cast<int>(aad.size())) == 1) &&
      (ct_size == 0 || EVP_DecryptUpdate(ctx.get(), out, &written, ciphertext_and_tag.data(),
                                         static_cast<int>(ct_size)) == 1) &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_TAG, kTagSize, tag) == 1 &&
      EVP_DecryptFinal_ex(ctx.get(), out + written, &final_written) == 1;
  if (!ok) {
    // Security: the plaintext buffer is wiped by SecretBytes and never returned unverified.
    ERR_clear_error();
    return generic;
  }
  return plaintext;
}

}  // namespace keywarden::crypto
