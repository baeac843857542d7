// The userspace data path: a LUKS volume's data area, read and written exactly as dm-crypt
// does (aes-xts-plain64, one XTS data unit per sector, the plain64 IV in 512-byte units as the
// tweak), for
// hosts without device-mapper. docs/formats/volume.md describes the on-disk layout.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/crypto/xts.h"
#include "keywarden/volume/luks.h"

namespace keywarden::volume {

// SectorCodec transforms whole sectors of a volume's data area. Thread-safe.
class SectorCodec {
 public:
  virtual ~SectorCodec() = default;
  virtual size_t sector_size() const = 0;
  // Encrypt / Decrypt whole sectors numbered from `first_sector` (relative to the data area);
  // `in` and `out` are equal-sized multiples of the sector size and may alias exactly.
  virtual absl::Status Encrypt(uint64_t first_sector, std::span<const uint8_t> in,
                               std::span<uint8_t> out) const = 0;
  virtual absl::Status Decrypt(uint64_t first_sector, std::span<const uint8_t> in,
                               std::span<uint8_t> out) const = 0;
};

// NewXtsCodec returns dm-crypt's aes-xts-plain64 over `volume_key` (64 bytes) with
// `sector_size`-byte sectors (4096 for LUKS2, 512 for LUKS1).
absl::StatusOr<std::unique_ptr<SectorCodec>> NewXtsCodec(const SecretBytes& volume_key,
                                                         size_t sector_size);

// NewPlaintextCodecForBenchmarks copies sectors unchanged. It exists only so the benchmarks can
// measure the transport floor of this exact data path; no keywarden command uses it.
std::unique_ptr<SectorCodec> NewPlaintextCodecForBenchmarks(size_t sector_size);

// DataPath reads and writes plaintext at any offset and length over the encrypted data area
// [data_offset, device end) of an open target. Partial sectors are read-modify-written under a
// per-region lock, so concurrent calls from many threads are safe and never lose an update.
class DataPath {
 public:
  // Open opens TARGET read-write and takes an exclusive OFD lock on it (FAILED_PRECONDITION when
  // another Keywarden process has it open). The data size is (device size - data_offset),
  // which must be a positive multiple of the sector size.
  static absl::StatusOr<std::unique_ptr<DataPath>> Open(const std::string& target,
                                                        uint64_t data_offset,
                                                        std::unique_ptr<SectorCodec> codec);
  ~DataPath();
  DataPath(const DataPath&) = delete;
  DataPath& operator=(const DataPath&) = delete;

  uint64_t size() const { return size_; }
  size_t sector_size() const { return codec_->sector_size(); }

  // Read fills `out` from plaintext offset `offset`; returns the bytes read (short at the
  // end of the volume, 0 at or past it).
  absl::StatusOr<size_t> Read(uint64_t offset, std::span<uint8_t> out);
  // Write stores `data` at `offset`; returns the bytes written (short at the end of the
  // volume). OUT_OF_RANGE when `offset` is at or past the end.
  absl::StatusOr<size_t> Write(uint64_t offset, std::span<const uint8_t> data);
  // Sync makes everything written so far durable (fdatasync of the target).
  absl::Status Sync();
  // WriteZeros writes encrypted zeros over the whole data area (initialization), reporting
  // progress; a cancelled run returns CANCELLED.
  absl::Status WriteZeros(const ProgressFn& progress);

 private:
  // Region r of the plaintext is guarded by stripe r % kLockStripes. 1024 stripes of 64 KiB
  // cover 64 MiB, so the requests in flight on one sequential stream (e.g. 8 x 1 MiB) never
  // share a stripe; with 64 stripes (4 MiB), 1 MiB writes 4 MiB apart waited for each other.
  static constexpr size_t kLockStripes = 1024;
  static constexpr uint64_t kLockRegion = 64 * 1024;  // bytes of plaintext per lock region
  struct alignas(64) Stripe {  // one per cache line: no false sharing between stripes
    std::shared_mutex mutex;
  };

  DataPath(int fd, uint64_t data_offset, uint64_t size, std::unique_ptr<SectorCodec> codec)
      : fd_(fd), data_offset_(data_offset), size_(size), codec_(std::move(codec)) {}
  absl::Status ReadSectors(uint64_t first_sector, std::span<uint8_t> out) const;
  absl::Status WriteSectors(uint64_t first_sector, std::span<const uint8_t> ciphertext) const;
  // RangeLock locks every stripe that covers plaintext [begin, end), in index order.
  class RangeLock;

  int fd_;
  uint64_t data_offset_;
  uint64_t size_;
  std::unique_ptr<SectorCodec> codec_;
  std::array<Stripe, kLockStripes> stripes_;
};

}  // namespace keywarden::volume
