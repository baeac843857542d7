#include "keywarden/volume/data_path.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "keywarden/status.h"

namespace keywarden::volume {
namespace {

class XtsCodec final : public SectorCodec {
 public:
  explicit XtsCodec(std::unique_ptr<crypto::XtsSectorCipher> cipher) : cipher_(std::move(cipher)) {}
  size_t sector_size() const override { return cipher_->sector_size(); }
  absl::Status Encrypt(uint64_t first_sector, std::span<const uint8_t> in,
                       std::span<uint8_t> out) const override {
    return cipher_->EncryptSectors(first_sector, in, out);
  }
  absl::Status Decrypt(uint64_t first_sector, std::span<const uint8_t> in,
                       std::span<uint8_t> out) const override {
    return cipher_->DecryptSectors(first_sector, in, out);
  }

 private:
  std::unique_ptr<crypto::XtsSectorCipher> cipher_;
};

class PlaintextCodec final : public SectorCodec {
 public:
  explicit PlaintextCodec(size_t sector_size) : sector_size_(sector_size) {}
  size_t sector_size() const override { return sector_size_; }
  absl::Status Encrypt(uint64_t, std::span<const uint8_t> in,
                       std::span<uint8_t> out) const override {
    if (in.data() != out.data()) std::memcpy(out.data(), in.data(), in.size());
    return absl::OkStatus();
  }
  absl::Status Decrypt(uint64_t s, std::span<const uint8_t> in,
                       std::span<uint8_t> out) const override {
    return Encrypt(s, in, out);
  }

 private:
  size_t sector_size_;
};

// Scratch is a per-thread buffer for read-modify-write and for ciphertext.
std::span<uint8_t> Scratch(size_t size) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return {buffer.data(), size};
}

}  // namespace

absl::StatusOr<std::unique_ptr<SectorCodec>> NewXtsCodec(const SecretBytes& volume_key,
                                                         size_t sector_size) {
  ASSIGN_OR_RETURN(auto cipher, crypto::XtsSectorCipher::New(volume_key, sector_size));
  return std::unique_ptr<SectorCodec>(new XtsCodec(std::move(cipher)));
}

std::unique_ptr<SectorCodec> NewPlaintextCodecForBenchmarks(size_t sector_size) {
  return std::make_unique<PlaintextCodec>(sector_size);
}

class DataPath::RangeLock {
 public:
  // The regions of [begin, end) are consecutive, so their stripes are one run modulo
  // kLockStripes: [a, b], or [0, b] and [a, kLockStripes) when it wraps. Both are taken in index
  // order, the same global order for every caller, so two RangeLocks never deadlock.
  RangeLock(DataPath& path, uint64_t begin, uint64_t end, bool exclusive)
      : path_(path), exclusive_(exclusive) {
    const uint64_t first = begin / kLockRegion, last = (end - 1) / kLockRegion;
    const size_t a = static_cast<size_t>(first % kLockStripes);
    const size_t b = static_cast<size_t>(last % kLockStripes);
    if (last - first + 1 >= kLockStripes) {
      low_ = {0, kLockStripes};
    } else if (a <= b) {
      low_ = {a, b + 1};
    } else {
      low_ = {0, b + 1};
      high_ = {a, kLockStripes};
    }
    for (const auto& [from, to] : {low_, high_}) {
      for (size_t i = from; i < to; ++i) {
        if (exclusive_) {
          path_.stripes_[i].mutex.lock();
        } else {
          path_.stripes_[i].mutex.lock_shared();
        }
      }
    }
  }
  ~RangeLock() {
    for (const auto& [from, to] : {high_, low_}) {
      for (size_t i = to; i-- > from;) {
        if (exclusive_) {
          path_.stripes_[i].mutex.unlock();
        } else {
          path_.stripes_[i].mutex.unlock_shared();
        }
      }
    }
  }
  RangeLock(const RangeLock&) = delete;
  RangeLock& operator=(const RangeLock&) = delete;

 private:
  DataPath& path_;
  bool exclusive_;
  std::pair<size_t, size_t> low_{0, 0};   // stripes [first, second), locked first
  std::pair<size_t, size_t> high_{0, 0};  // then these (non-empty only when the run wraps)
};

absl::StatusOr<std::unique_ptr<DataPath>> DataPath::Open(const std::string& target,
                                                         uint64_t data_offset,
                                                         std::unique_ptr<SectorCodec> codec) {
  ASSIGN_OR_RETURN(uint64_t device_size, TargetSize(target));
  const size_t sector = codec->sector_size();
  if (device_size <= data_offset || (device_size - data_offset) % sector != 0) {
    return FailedPreconditionError(
        "{} is {} bytes: after the {}-byte header its data area is not a positive multiple of "
        "{}-byte sectors",
        target, device_size, data_offset, sector);
  }
  const int fd = open(target.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    return FailedPreconditionError("cannot open {} for writing: {}", target, std::strerror(errno));
  }
  // An open-file-description lock (not flock: libcryptsetup flocks the device itself while it
  // reads a header, and `volume status` must still work on an open volume).
  struct flock lock {};
  lock.l_type = F_WRLCK;
  lock.l_whence = SEEK_SET;
  if (fcntl(fd, F_OFD_SETLK, &lock) != 0) {
    const int err = errno;
    close(fd);
    if (err == EAGAIN || err == EACCES) {
      return FailedPreconditionError("{} is already open in another Keywarden process", target);
    }
    return FailedPreconditionError("cannot lock {}: {}", target, std::strerror(err));
  }
  return std::unique_ptr<DataPath>(
      new DataPath(fd, data_offset, device_size - data_offset, std::move(codec)));
}

DataPath::~DataPath() { close(fd_); }

absl::Status DataPath::ReadSectors(uint64_t first_sector, std::span<uint8_t> out) const {
  uint64_t position = data_offset_ + first_sector * sector_size();
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n =
        pread(fd_, out.data() + done, out.size() - done, static_cast<off_t>(position + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return UnavailableError("read from the volume failed: {}", std::strerror(errno));
    if (n == 0) return UnavailableError("the volume's device ended early (was it truncated?)");
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::Status DataPath::WriteSectors(uint64_t first_sector,
                                    std::span<const uint8_t> ciphertext) const {
  uint64_t position = data_offset_ + first_sector * sector_size();
  size_t done = 0;
  while (done < ciphertext.size()) {
    const ssize_t n = pwrite(fd_, ciphertext.data() + done, ciphertext.size() - done,
                             static_cast<off_t>(position + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return UnavailableError("write to the volume failed: {}", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> DataPath::Read(uint64_t offset, std::span<uint8_t> out) {
  if (offset >= size_ || out.empty()) return size_t{0};
  const size_t length = static_cast<size_t>(std::min<uint64_t>(out.size(), size_ - offset));
  const size_t ss = sector_size();
  const uint64_t first = offset / ss;
  const uint64_t last = (offset + length - 1) / ss;
  const size_t span_bytes = static_cast<size_t>(last - first + 1) * ss;
  RangeLock lock(*this, first * ss, (last + 1) * ss, /*exclusive=*/false);
  if (offset % ss == 0 && length % ss == 0) {
    std::span<uint8_t> direct = out.first(length);
    RETURN_IF_ERROR(ReadSectors(first, direct));
    RETURN_IF_ERROR(codec_->Decrypt(first, direct, direct));
    return length;
  }
  std::span<uint8_t> buffer = Scratch(span_bytes);
  RETURN_IF_ERROR(ReadSectors(first, buffer));
  RETURN_IF_ERROR(codec_->Decrypt(first, buffer, buffer));
  std::memcpy(out.data(), buffer.data() + offset % ss, length);
  return length;
}

absl::StatusOr<size_t> DataPath::Write(uint64_t offset, std::span<const uint8_t> data) {
  if (data.empty()) return size_t{0};
  if (offset >= size_) {
    return MakeStatus(absl::StatusCode::kOutOfRange, "write at {} is past the volume's end {}",
                      offset, size_);
  }
  const size_t length = static_cast<size_t>(std::min<uint64_t>(data.size(), size_ - offset));
  const size_t ss = sector_size();
  const uint64_t first = offset / ss;
  const uint64_t last = (offset + length - 1) / ss;
  const size_t span_bytes = static_cast<size_t>(last - first + 1) * ss;
  const size_t head = static_cast<size_t>(offset % ss);
  const size_t tail = static_cast<size_t>((offset + length) % ss);

  RangeLock lock(*this, first * ss, (last + 1) * ss, /*exclusive=*/true);
  // The ciphertext of the whole span goes to the target in one write. Whole sectors are
  // encrypted straight from `data` into the buffer (no plaintext copy); a partial first or last
  // sector keeps its other bytes: it is read, decrypted, patched and re-encrypted in place.
  std::span<uint8_t> buffer = Scratch(span_bytes);
  const uint64_t sectors = last - first + 1;
  const bool partial_first = head != 0 || (sectors == 1 && tail != 0);
  const bool partial_last = tail != 0 && sectors > 1;
  auto patch = [&](uint64_t sector, std::span<uint8_t> plain, size_t at,
                   std::span<const uint8_t> bytes) -> absl::Status {
    RETURN_IF_ERROR(ReadSectors(sector, plain));
    RETURN_IF_ERROR(codec_->Decrypt(sector, plain, plain));
    std::memcpy(plain.data() + at, bytes.data(), bytes.size());
    return codec_->Encrypt(sector, plain, plain);
  };
  size_t consumed = 0;  // bytes of `data` placed so far
  uint64_t sector = first;
  if (partial_first) {
    const size_t n = std::min(length, ss - head);
    RETURN_IF_ERROR(patch(first, buffer.first(ss), head, data.first(n)));
    consumed = n;
    ++sector;
  }
  const size_t whole = (length - consumed - (partial_last ? tail : 0)) / ss * ss;
  if (whole != 0) {
    RETURN_IF_ERROR(codec_->Encrypt(sector, data.subspan(consumed, whole),
                                    buffer.subspan((sector - first) * ss, whole)));
    consumed += whole;
  }
  if (partial_last) {
    RETURN_IF_ERROR(patch(last, buffer.last(ss), 0, data.subspan(consumed, tail)));
  }
  RETURN_IF_ERROR(WriteSectors(first, buffer));
  return length;
}

absl::Status DataPath::Sync() {
  if (fdatasync(fd_) != 0) {
    return UnavailableError("flushing the volume failed: {}", std::strerror(errno));
  }
  return absl::OkStatus();
}

absl::Status DataPath::WriteZeros(const ProgressFn& progress) {
  constexpr size_t kChunk = 1024 * 1024;
  std::vector<uint8_t> zeros(kChunk, 0);
  for (uint64_t offset = 0; offset < size_;) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, size_ - offset));
    ASSIGN_OR_RETURN(size_t written, Write(offset, std::span<const uint8_t>(zeros).first(n)));
    offset += written;
    if (progress && !progress(offset, size_)) {
      return MakeStatus(absl::StatusCode::kCancelled, "initialization cancelled");
    }
  }
  return Sync();
}

}  // namespace keywarden::volume
