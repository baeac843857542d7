// AES-XTS (IEEE 1619-2007, NIST SP 800-38E) and dm-crypt's aes-xts-plain64 sector format.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

inline constexpr size_t kXtsTweakSize = 16;

// AesXts encrypts data units under an explicit 16-byte tweak. Keys are 32 bytes (AES-128-XTS)
// or 64 bytes (AES-256-XTS); a key whose two halves are equal is refused (IEEE 1619 §5.1 and
// SP 800-38E require Key1 != Key2). Thread-safe.
class AesXts {
 public:
  static absl::StatusOr<std::unique_ptr<AesXts>> New(const SecretBytes& key);

  // Encrypt / Decrypt one data unit of at least 16 bytes (ciphertext stealing handles a final
  // partial block). `out` must be as large as `in`; `in` and `out` may be the same buffer.
  absl::Status Encrypt(std::span<const uint8_t, kXtsTweakSize> tweak, std::span<const uint8_t> in,
                       std::span<uint8_t> out) const;
  absl::Status Decrypt(std::span<const uint8_t, kXtsTweakSize> tweak, std::span<const uint8_t> in,
                       std::span<uint8_t> out) const;

  ~AesXts();
  AesXts(const AesXts&) = delete;
  AesXts& operator=(const AesXts&) = delete;

 private:
  friend class XtsSectorCipher;
  struct State;
  explicit AesXts(std::unique_ptr<State> state);
  // Crypt processes `in` as units of `unit_size` bytes numbered from `first_unit`, unit n
  // under the plain64 tweak n * `tweak_step`, or as one unit under `explicit_tweak` when that
  // is non-null.
  absl::Status Crypt(bool encrypt, uint64_t first_unit, size_t unit_size,
                     std::span<const uint8_t> in, std::span<uint8_t> out,
                     const uint8_t* explicit_tweak, uint64_t tweak_step = 1) const;
  std::unique_ptr<State> state_;
};

// XtsSectorCipher is dm-crypt's `aes-xts-plain64`: each sector is one XTS data unit whose tweak
// is the plain64 IV, a 64-bit little-endian integer zero-padded to 16 bytes. dm-crypt counts
// that IV in 512-byte units whatever the sector size (LUKS2 never sets `iv_large_sectors`), so
// 4096-byte sector k has tweak 8k. Byte-compatible with the kernel and cryptsetup: the VM tests
// (tests/vm) check it against the kernel's dm-crypt. Thread-safe.
class XtsSectorCipher {
 public:
  // New takes a 64-byte (AES-256-XTS, LUKS2 default) or 32-byte key and a sector size of 512
  // or 4096 bytes.
  static absl::StatusOr<std::unique_ptr<XtsSectorCipher>> New(const SecretBytes& key,
                                                              size_t sector_size);

  size_t sector_size() const { return sector_size_; }

  // EncryptSectors encrypts whole sectors starting at sector number `first_sector`; `in` must
  // be a non-empty multiple of the sector size, `out` as large; they may alias exactly.
  absl::Status EncryptSectors(uint64_t first_sector, std::span<const uint8_t> in,
                              std::span<uint8_t> out) const;
  absl::Status DecryptSectors(uint64_t first_sector, std::span<const uint8_t> in,
                              std::span<uint8_t> out) const;

 private:
  XtsSectorCipher(std::unique_ptr<AesXts> xts, size_t sector_size)
      : xts_(std::move(xts)), sector_size_(sector_size) {}
  absl::Status Crypt(bool encrypt, uint64_t first_sector, std::span<const uint8_t> in,
                     std::span<uint8_t> out) const;
  std::unique_ptr<AesXts> xts_;
  size_t sector_size_;
};

}  // namespace keywarden::crypto
