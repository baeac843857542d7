#include "keywarden/crypto/xts.h"

#include <gcrypt.h>
#include <openssl/crypto.h>

#include <climits>
#include <cstring>
#include <mutex>
#include <vector>

#include "keywarden/status.h"

namespace keywarden::crypto {
namespace {

// IEEE 1619 §5.1 bounds a data unit at 2^20 AES blocks; dm-crypt sectors are far smaller.
constexpr size_t kMaxUnit = size_t{1} << 24;

// At most this many idle cipher handles are kept per key; more exist only while more threads
// than that encrypt at once.
constexpr size_t kMaxIdleHandles = 64;

// EnsureGcrypt initialises libgcrypt once per process unless the application (or another
// library) already did. Keywarden uses libgcrypt for AES-XTS only; its key schedules live in
// the cipher handles, which gcry_cipher_close wipes. Secure memory is not used: the handles
// are kept for the life of the key, like OpenSSL contexts elsewhere in the crypto core, and the
// process is made non-dumpable with core files off (docs/security.md).
bool EnsureGcrypt() {
  static const bool ready = [] {
    if (gcry_control(GCRYCTL_INITIALIZATION_FINISHED_P) != 0) return true;
    if (gcry_check_version(GCRYPT_VERSION) == nullptr) return false;
    gcry_control(GCRYCTL_DISABLE_SECMEM, 0);
    gcry_control(GCRYCTL_INITIALIZATION_FINISHED, 0);
    return true;
  }();
  return ready;
}

absl::Status GcryptError(const char* what, gcry_error_t err) {
  return InternalError("{}: {}", what, gcry_strerror(err));
}

}  // namespace

// State keeps the key (locked memory) and a pool of keyed libgcrypt handles: a handle is not
// safe for concurrent use, and keying one costs a key expansion, so threads borrow idle ones.
struct AesXts::State {
  State(SecretBytes k, int a) : key(std::move(k)), algo(a) {}
  ~State() {
    for (gcry_cipher_hd_t h : idle) gcry_cipher_close(h);
  }
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  absl::StatusOr<gcry_cipher_hd_t> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!idle.empty()) {
        gcry_cipher_hd_t h = idle.back();
        idle.pop_back();
        return h;
      }
    }
    gcry_cipher_hd_t h = nullptr;
    if (const gcry_error_t err = gcry_cipher_open(&h, algo, GCRY_CIPHER_MODE_XTS, 0); err != 0) {
      return GcryptError("AES-XTS handle", err);
    }
    const auto k = key.Reveal(InsecureSecretAccess::Get());
    if (const gcry_error_t err = gcry_cipher_setkey(h, k.data(), k.size()); err != 0) {
      gcry_cipher_close(h);
      return GcryptError("AES-XTS key setup", err);
    }
    return h;
  }

  void Release(gcry_cipher_hd_t h) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (idle.size() < kMaxIdleHandles) {
        idle.push_back(h);
        return;
      }
    }
    gcry_cipher_close(h);
  }

  const SecretBytes key;
  const int algo;
  std::mutex mu;
  std::vector<gcry_cipher_hd_t> idle;  // guarded by mu
};

AesXts::AesXts(std::unique_ptr<State> state) : state_(std::move(state)) {}
AesXts::~AesXts() = default;

absl::StatusOr<std::unique_ptr<AesXts>> AesXts::New(const SecretBytes& key) {
  const int algo = key.size() == 32   ? GCRY_CIPHER_AES128
                   : key.size() == 64 ? GCRY_CIPHER_AES256
                                      : 0;
  if (algo == 0) {
    return InvalidArgumentError("AES-XTS key of {} bytes; want 32 or 64", key.size());
  }
  const auto k = key.Reveal(InsecureSecretAccess::Get());
  const size_t half = k.size() / 2;
  // IEEE 1619-2018 §5.1 / SP 800-38E: Key1 and Key2 must differ. The comparison runs in
  // constant time although its outcome is reported: it says nothing beyond the refusal.
  if (CRYPTO_memcmp(k.data(), k.data() + half, half) == 0) {
    return InvalidArgumentError("AES-XTS key halves are equal; refusing a weak key");
  }
  if (!EnsureGcrypt()) {
    return InternalError("libgcrypt {} or newer is required", GCRYPT_VERSION);
  }
  auto state = std::make_unique<State>(SecretBytes(k), algo);
  // Key the first handle now, so that a key libgcrypt refuses fails here and not on first use.
  ASSIGN_OR_RETURN(gcry_cipher_hd_t first, state->Acquire());
  state->Release(first);
  return std::unique_ptr<AesXts>(new AesXts(std::move(state)));
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
  const bool in_place = in.data() == out.data();
  if (!in_place && in.data() < out.data() + out.size() && out.data() < in.data() + in.size()) {
    return InvalidArgumentError("AES-XTS input and output overlap partially");
  }
  ASSIGN_OR_RETURN(gcry_cipher_hd_t h, state_->Acquire());
  uint8_t tweak[kXtsTweakSize] = {};
  const size_t units = in.size() / unit_size;
  absl::Status status;
  for (size_t i = 0; i < units && status.ok(); ++i) {
    if (explicit_tweak != nullptr) {
      std::memcpy(tweak, explicit_tweak, kXtsTweakSize);
    } else {
      // dm-crypt plain64: the unit number as 64-bit little-endian, zero-padded to 16 bytes.
      const uint64_t unit = (first_unit + i) * tweak_step;
      for (int b = 0; b < 8; ++b) tweak[b] = static_cast<uint8_t>(unit >> (8 * b));
    }
    // Every data unit starts from its own tweak: libgcrypt's XTS carries the tweak on from one
    // call to the next otherwise. A null input means "in place".
    uint8_t* dst = out.data() + i * unit_size;
    const uint8_t* src = in_place ? nullptr : in.data() + i * unit_size;
    const size_t src_len = in_place ? 0 : unit_size;
    gcry_error_t err = gcry_cipher_setiv(h, tweak, sizeof(tweak));
    if (err == 0) {
      err = encrypt ? gcry_cipher_encrypt(h, dst, unit_size, src, src_len)
                    : gcry_cipher_decrypt(h, dst, unit_size, src, src_len);
    }
    if (err != 0) status = GcryptError(encrypt ? "AES-XTS encrypt" : "AES-XTS decrypt", err);
  }
  state_->Release(h);
  return status;
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
