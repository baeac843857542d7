// SHA-256 (FIPS 180-4) of public data.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <span>

namespace keywarden::crypto {

inline constexpr size_t kSha256Size = 32;

// Sha256 returns the digest of the concatenation of `parts`. Aborts only if OpenSSL cannot
// compute a SHA-256 at all (a broken installation).
std::array<uint8_t, kSha256Size> Sha256(std::initializer_list<std::span<const uint8_t>> parts);

}  // namespace keywarden::crypto
