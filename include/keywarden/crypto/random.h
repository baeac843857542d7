// Randomness and constant-time comparison.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

// RandomFill fills `out` from OpenSSL's private CSPRNG (RAND_priv_bytes).
// Security: fails closed. If the generator fails (e.g. it cannot be seeded), `out` is wiped to
// zeros and an UNAVAILABLE status is returned; callers must treat that as fatal for the
// operation and never use `out`. Thread-safe.
absl::Status RandomFill(std::span<uint8_t> out);

// RandomSecret returns `size` fresh random bytes in locked memory, or the error of RandomFill.
absl::StatusOr<SecretBytes> RandomSecret(size_t size);

// ConstantTimeEquals compares two byte strings in time that depends only on their lengths
// (CRYPTO_memcmp). Lengths are treated as public: unequal lengths return false at once.
bool ConstantTimeEquals(std::span<const uint8_t> a, std::span<const uint8_t> b);

}  // namespace keywarden::crypto
