// HKDF-SHA256 (RFC 5869).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

// kHkdfSha256HashLen is SHA-256's output size, the size of a PRK.
inline constexpr size_t kHkdfSha256HashLen = 32;
// kHkdfSha256MaxOutput is the largest output HKDF-Expand defines: 255 * HashLen (RFC 5869 §2.3).
inline constexpr size_t kHkdfSha256MaxOutput = 255 * kHkdfSha256HashLen;

// HkdfSha256Extract returns PRK = HMAC-SHA256(salt, ikm) (RFC 5869 §2.2). An empty salt means
// HashLen zero bytes, as the RFC specifies.
absl::StatusOr<SecretBytes> HkdfSha256Extract(std::span<const uint8_t> salt,
                                              std::span<const uint8_t> ikm);

// HkdfSha256 is Extract followed by Expand (RFC 5869 §2). `length` must be in
// [1, kHkdfSha256MaxOutput]; INVALID_ARGUMENT otherwise.
absl::StatusOr<SecretBytes> HkdfSha256(std::span<const uint8_t> ikm, std::span<const uint8_t> salt,
                                       std::span<const uint8_t> info, size_t length);

// HkdfSha256Expander performs HKDF-Expand (RFC 5869 §2.3) from one PRK, many times.
//
// It keys an HMAC-SHA256 context once at construction, and every Expand re-initialises a
// pooled copy of that context without re-keying it or fetching algorithms again, so a 32-byte
// output costs about one HMAC over a short message. Thread-safe: concurrent callers take
// separate contexts from the pool. The PRK itself is kept only inside the OpenSSL contexts
// (which OpenSSL wipes when freed) and in locked memory.
class HkdfSha256Expander {
 public:
  // New takes the PRK (at least kHkdfSha256HashLen bytes, RFC 5869 §2.3).
  static absl::StatusOr<std::unique_ptr<HkdfSha256Expander>> New(const SecretBytes& prk);

  // Expand returns OKM of `length` bytes in [1, kHkdfSha256MaxOutput] for `info`.
  absl::StatusOr<SecretBytes> Expand(std::span<const uint8_t> info, size_t length) const;
  // ExpandParts is Expand with `info` given as the concatenation of `info_parts`, so callers
  // that prefix a label ("key-" || id) need not build the string.
  absl::StatusOr<SecretBytes> ExpandParts(
      std::initializer_list<std::span<const uint8_t>> info_parts, size_t length) const;

  ~HkdfSha256Expander();
  HkdfSha256Expander(const HkdfSha256Expander&) = delete;
  HkdfSha256Expander& operator=(const HkdfSha256Expander&) = delete;

 private:
  struct State;
  explicit HkdfSha256Expander(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace keywarden::crypto
