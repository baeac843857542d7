// HMAC-SHA256 (RFC 2104, FIPS 198-1).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

inline constexpr size_t kHmacSha256TagSize = 32;
// kHmacSha256MinTagSize is the shortest truncated tag Verify accepts (128 bits).
inline constexpr size_t kHmacSha256MinTagSize = 16;

// HmacSha256 computes and verifies HMAC-SHA256 tags under one key. Thread-safe.
class HmacSha256 {
 public:
  // New takes a key of at least 16 bytes (shorter keys give less than 128-bit security).
  static absl::StatusOr<std::unique_ptr<HmacSha256>> New(const SecretBytes& key);

  // Compute returns the full 32-byte tag of `data`.
  absl::StatusOr<std::array<uint8_t, kHmacSha256TagSize>> Compute(
      std::span<const uint8_t> data) const;
  // Verify checks `tag`, which may be truncated to [kHmacSha256MinTagSize, 32] bytes, in
  // constant time. Any mismatch gives the same INVALID_ARGUMENT "tag mismatch".
  absl::Status Verify(std::span<const uint8_t> tag, std::span<const uint8_t> data) const;

  ~HmacSha256();
  HmacSha256(const HmacSha256&) = delete;
  HmacSha256& operator=(const HmacSha256&) = delete;

 private:
  struct State;
  explicit HmacSha256(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace keywarden::crypto
