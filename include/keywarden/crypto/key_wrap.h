// AES key wrap: RFC 3394 (NIST SP 800-38F KW) and RFC 5649 (KWP, with padding).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

// AesKeyWrap wraps and unwraps keys under a key-encryption key. Keywarden uses 256-bit KEKs;
// 128- and 192-bit KEKs are accepted because the RFCs define them. Thread-safe.
class AesKeyWrap {
 public:
  enum class Padding {
    kNone,     // RFC 3394: key data a multiple of 8 bytes, at least 16
    kRfc5649,  // RFC 5649: key data of any length from 1 byte
  };

  // New takes a 16-, 24- or 32-byte KEK.
  static absl::StatusOr<std::unique_ptr<AesKeyWrap>> New(const SecretBytes& kek, Padding padding);

  // Wrap returns the wrapped form of `key` (8 bytes longer, or padded then 8 bytes longer).
  // INVALID_ARGUMENT when `key` has a length the mode cannot wrap.
  absl::StatusOr<std::vector<uint8_t>> Wrap(std::span<const uint8_t> key) const;
  // Unwrap returns the key, or one generic INVALID_ARGUMENT "unwrap failed" for any wrong
  // length, wrong KEK, corrupted input or bad padding (no oracle).
  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) const;

  ~AesKeyWrap();
  AesKeyWrap(const AesKeyWrap&) = delete;
  AesKeyWrap& operator=(const AesKeyWrap&) = delete;

 private:
  struct State;
  explicit AesKeyWrap(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace keywarden::crypto
