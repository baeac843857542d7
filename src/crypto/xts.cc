#include "keywarden/crypto/xts.h"

#include <openssl/crypto.h>

#include <climits>
#include <cstring>

#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

// IEEE 1619 §5.1 bounds a data unit at 2^20 AES blocks; dm-crypt sectors are far smaller.
constexpr size_t kMaxUnit = size_t{1} << 24;

}  // namespace

struct AesXts::State {
  State(EVP_CIPHER_CTX* enc, EVP_CIPHER_CTX* dec) : encrypt(enc), decrypt(dec) {}
  internal::CipherPool encrypt;
  internal::CipherPool decrypt;
};

AesXts::AesXts(std::unique_ptr<State> state) : state_(std::move(state)) {}
AesXts::~AesXts() = default;

absl::StatusOr<std::unique_ptr<AesXts>> AesXts::New(const SecretBytes& key) {
  const char* name = key.size() == 32 ? "AES-128-XTS" : key.size() == 64 ? "AES-256-XTS" : nullptr;
  if (name == nullptr) {
    return InvalidArgumentError("AES-XTS key of {} bytes; want 32 or 64", key.size());
  }
  const auto k = key.Reveal(InsecureSecretAccess::Get());
  const size_t half = k.size() / 2;
  // IEEE 1619-2018 §5.1 / SP 800-38E: Key1 and Key2 must differ. The comparison runs in
  // constant time although its outcome is reported: it says nothing beyond the refusal.
  if (CRYPTO_memcmp(k.data(), k.data() + half, half) == 0) {
    return InvalidArgumentError("AES-XTS key halves are equal; refusing a weak key");
  }
  const EVP_CIPHER* cipher = internal::FetchedCipher(name);
  if (cipher == nullptr) return internal::OpenSslError("AES-XTS fetch");
  internal::CipherCtxPtr enc(EVP_CIPHER_CTX_new());
  internal::CipherCtxPtr dec(EVP_CIPHER_CTX_new());
  if (!enc || !dec || EVP_EncryptInit_ex2(enc.get(), cipher, k.data(), nullptr, nullptr) != 1 ||
      EVP_DecryptInit_ex2(dec.get(), cipher, k.data(), nullptr, nullptr) != 1) {
    return internal::OpenSslError("AES-XTS setup");
  }
  return std::unique_ptr<AesXts>(new AesXts(std::make_unique<State>(enc.release(), dec.release())));
}

absl::Status AesXts::Encrypt(std::span<const uint8_t, kXtsTweakSize> tweak,
                             std::span<const uint8_t> in, std::span<uint8_t> out) const {
  return Crypt(true, 0, 0, in, out.first(std::min(out.size(), in.size())), tweak.data());
}

absl::Status AesXts::Decrypt(std::span<const uint8_t, kXtsTweakSize> tweak,
                             std::span<const uint8_t> in, std::span<uint8_t> out) const {
  return Crypt(false, 0, 0, in, out.first(std::min(out.size(), in.size())), tweak.data());
}

absl::Status AesXts::Crypt(bool encrypt, uint64_t first_unit, size_t unit_size,
                           std::span<const uint8_t> in, std::span<uint8_t> out,
                           const uint8_t* explicit_tweak, uint64_t tweak_step) const {
  if (in.size() != out.size()) {
    return InvalidArgumentError("AES-XTS output buffer of {} bytes for {} bytes of input",
                                out.size(), in.size());
  }
  if (explicit_tweak != nullptr) unit_size = in.size();
  if (unit_size < 16 || unit_size > kMaxUnit || in.size() % unit_size != 0) {
    return InvalidArgumentError("AES-XTS data unit of {} bytes is not in [16, {}]", unit_size,
                                kMaxUnit);
  }
  if (in.data() != out.data() && in.data() < out.data() + out.size() &&
      out.data() < in.data() + in.size()) {
    return InvalidArgumentError("AES-XTS input and output overlap partially");
  }
  auto ctx = (encrypt ? state_->encrypt : state_->decrypt).Acquire();
  if (!ctx) return internal::OpenSslError("AES-XTS context");
  uint8_t tweak[kXtsTweakSize] = {};
  const size_t units = in.size() / unit_size;
  for (size_t i = 0; i < units; ++i) {
    if (explicit_tweak != nullptr) {
      std::memcpy(tweak, explicit_tweak, kXtsTweakSize);
    } else {
      // dm-crypt plain64: the unit number as 64-bit little-endian, zero-padded to 16 bytes.
      const uint64_t unit = (first_unit + i) * tweak_step;
      for (int b = 0; b < 8; ++b) tweak[b] = static_cast<uint8_t>(unit >> (8 * b));
    }
    int written = 0;
    // Re-initialising with only an IV keeps the expanded keys; OpenSSL's XTS processes one
    // whole data unit per update call.
    if (EVP_CipherInit_ex2(ctx.get(), nullptr, nullptr, tweak, encrypt ? 1 : 0, nullptr) != 1 ||
        EVP_CipherUpdate(ctx.get(), out.data() + i * unit_size, &written, in.data() + i * unit_size,
                         static_cast<int>(unit_size)) != 1 ||
        static_cast<size_t>(written) != unit_size) {
      return internal::OpenSslError(encrypt ? "AES-XTS encrypt" : "AES-XTS decrypt");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<XtsSectorCipher>> XtsSectorCipher::New(const SecretBytes& key,
                                                                      size_t sector_size) {
  if (sector_size != 512 && sector_size != 4096) {
    return InvalidArgumentError("sector size {} is not 512 or 4096", sector_size);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<AesXts> xts, AesXts::New(key));
  return std::unique_ptr<XtsSectorCipher>(new XtsSectorCipher(std::move(xts), sector_size));
}

absl::Status XtsSectorCipher::EncryptSectors(uint64_t first_sector, std::span<const uint8_t> in,
                                             std::span<uint8_t> out) const {
  return Crypt(true, first_sector, in, out);
}

absl::Status XtsSectorCipher::DecryptSectors(uint64_t first_sector, std::span<const uint8_t> in,
                                             std::span<uint8_t> out) const {
  return Crypt(false, first_sector, in, out);
}

absl::Status XtsSectorCipher::Crypt(bool encrypt, uint64_t first_sector,
                                    std::span<const uint8_t> in, std::span<uint8_t> out) const {
  if (in.empty() || in.size() % sector_size_ != 0) {
    return InvalidArgumentError("{} bytes is not a whole number of {}-byte sectors", in.size(),
                                sector_size_);
  }
  // dm-crypt counts plain64 IVs in 512-byte units unless a mapping asks for iv_large_sectors,
  // which LUKS2 never does: 4096-byte sector k has tweak 8k.
  const uint64_t units_per_sector = sector_size_ / 512;
  const uint64_t sectors = in.size() / sector_size_;
  if (first_sector > (UINT64_MAX / units_per_sector) - (sectors - 1)) {
    return InvalidArgumentError("sector number overflows the 64-bit IV");
  }
  return xts_->Crypt(encrypt, first_sector, sector_size_, in, out, nullptr, units_per_sector);
}

}  // namespace keywarden::crypto
