// The symmetric primitives of TPM 2.0 credential protection (TCG TPM2 Library Part 1 §24):
// KDFa with HMAC-SHA256 (Part 1 §11.4.10.2, NIST SP 800-108 counter mode) and AES in full-block
// CFB mode (NIST SP 800-38A §6.3 with s = 128). The verifier uses them to build
// credentials in software (src/attest/verify.cc) that a TPM then opens with
// TPM2_ActivateCredential; docs/formats/attestation.md gives the byte rules.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

// kKdfaMaxBits bounds KdfaSha256's output (far above any TPM use: the largest is a 512-bit
// HMAC key). The counter is 32 bits, so the spec's own limit is much higher.
inline constexpr size_t kKdfaMaxBits = 8 * 1024;

// KdfaSha256 returns KDFa(SHA-256, key, label, context_u, context_v, bits) of TCG TPM2 Part 1
// §11.4.10.2: the concatenation, for i = 1, 2, ..., of
//   HMAC-SHA256(key, [i]_32 || label || 0x00 || context_u || context_v || [bits]_32)
// truncated to ceil(bits / 8) bytes; when `bits` is not a multiple of 8, the unused high-order
// bits of the first byte are cleared. `label` is given without its terminating NUL (the
// function appends the 0x00 the spec requires, so "STORAGE" yields the spec's "STORAGE\0");
// it must not contain a NUL itself. `bits` must be in [1, kKdfaMaxBits]. An empty key is
// allowed (HMAC pads it). INVALID_ARGUMENT for a bad label or size.
//
// Security: the output is key material and is returned in locked memory. Thread-safe.
absl::StatusOr<SecretBytes> KdfaSha256(const SecretBytes& key, std::string_view label,
                                       std::span<const uint8_t> context_u,
                                       std::span<const uint8_t> context_v, size_t bits);

// kAesCfbIvSize is the AES block size, the size of a CFB initialization vector.
inline constexpr size_t kAesCfbIvSize = 16;

// AesCfbEncrypt encrypts `plaintext` with AES (16-, 24- or 32-byte `key`) in CFB mode with a
// 128-bit feedback segment (SP 800-38A §6.3, "CFB128"), the mode TPM 2.0 uses for its
// symmetric object protection. Any plaintext length is accepted (the last segment is partial).
// CFB alone gives no integrity: TPM protocols pair it with an outer HMAC.
//
// Security: an (key, IV) pair must never encrypt two different messages; TPM credential
// protection uses IV = 0 only because every key is freshly derived from a random seed.
absl::StatusOr<std::vector<uint8_t>> AesCfbEncrypt(const SecretBytes& key,
                                                   std::span<const uint8_t, kAesCfbIvSize> iv,
                                                   std::span<const uint8_t> plaintext);

// AesCfbDecrypt is the inverse of AesCfbEncrypt. The result is held as a secret.
absl::StatusOr<SecretBytes> AesCfbDecrypt(const SecretBytes& key,
                                          std::span<const uint8_t, kAesCfbIvSize> iv,
                                          std::span<const uint8_t> ciphertext);

}  // namespace keywarden::crypto
