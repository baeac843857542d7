// AES-GCM authenticated encryption (NIST SP 800-38D) with 96-bit nonces and 128-bit tags.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

class AesGcm {
 public:
  static constexpr size_t kNonceSize = 12;
  static constexpr size_t kTagSize = 16;

  // New takes a 32-byte key (AES-256-GCM, what Keywarden uses); 16- and 24-byte keys are
  // accepted for interoperability.
  static absl::StatusOr<std::unique_ptr<AesGcm>> New(const SecretBytes& key);

  // Encrypt returns nonce || ciphertext || tag with a fresh random nonce. Random 96-bit nonces
  // bound one key to about 2^32 messages (SP 800-38D §8.3). Fails closed if the CSPRNG fails.
  absl::StatusOr<std::vector<uint8_t>> Encrypt(std::span<const uint8_t> plaintext,
                                               std::span<const uint8_t> aad) const;
  // Decrypt takes the output of Encrypt. Any failure is one INVALID_ARGUMENT
  // "decryption failed" (no oracle); no plaintext is released unless the tag verifies.
  absl::StatusOr<SecretBytes> Decrypt(std::span<const uint8_t> ciphertext,
                                      std::span<const uint8_t> aad) const;

  // EncryptWithNonce / DecryptWithNonce take the nonce explicitly (known-answer tests and
  // formats that store it apart). Reusing a nonce under one key breaks GCM entirely.
  absl::StatusOr<std::vector<uint8_t>> EncryptWithNonce(std::span<const uint8_t> nonce,
                                                        std::span<const uint8_t> plaintext,
                                                        std::span<const uint8_t> aad) const;
  absl::StatusOr<SecretBytes> DecryptWithNonce(std::span<const uint8_t> nonce,
                                               std::span<const uint8_t> ciphertext_and_tag,
                                               std::span<const uint8_t> aad) const;

  ~AesGcm();
  AesGcm(const AesGcm&) = delete;
  AesGcm& operator=(const AesGcm&) = delete;

 private:
  struct State;
  explicit AesGcm(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace keywarden::crypto
