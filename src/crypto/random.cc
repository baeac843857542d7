#include "keywarden/crypto/random.h"

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/rand.h>

#include <algorithm>
#include <climits>

#include "keywarden/status.h"

namespace keywarden::crypto {

absl::Status RandomFill(std::span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    const size_t chunk = std::min<size_t>(out.size() - done, INT_MAX);
    if (RAND_priv_bytes(out.data() + done, static_cast<int>(chunk)) != 1) {
      // Fail closed: never hand out a partially filled or predictable buffer.
      OPENSSL_cleanse(out.data(), out.size());
      ERR_clear_error();
      return UnavailableError("random number generator failed; refusing to continue");
    }
    done += chunk;
  }
  return absl::OkStatus();
}

absl::StatusOr<SecretBytes> RandomSecret(size_t size) {
  SecretBytes secret(size);
  RETURN_IF_ERROR(RandomFill(secret.MutableReveal(InsecureSecretAccess::Get())));
  return secret;
}

bool ConstantTimeEquals(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  if (a.size() != b.size()) return false;
  if (a.empty()) return true;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace keywarden::crypto
