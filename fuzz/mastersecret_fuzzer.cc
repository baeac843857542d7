// Fuzzes the mastersecret.json parser: any input either fails cleanly or yields a secret that
// serializes to a file that parses back to the same secret.
#include <cstdint>
#include <cstdlib>

#include "keywarden/crypto/random.h"
#include "keywarden/keys/master_secret.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden;
  auto secret = keys::ParseMasterSecretJson({data, size});
  if (!secret.ok()) return 0;
  if (secret->key.size() < keys::kMinMasterKeySize || secret->salt.size() < keys::kMinSaltSize) {
    std::abort();  // the parser must enforce the minimum sizes
  }
  const SecretBytes text = keys::SerializeMasterSecretJson(*secret);
  auto again = keys::ParseMasterSecretJson(text.Reveal(InsecureSecretAccess::Get()));
  const auto token = InsecureSecretAccess::Get();
  if (!again.ok() ||
      !crypto::ConstantTimeEquals(again->key.Reveal(token), secret->key.Reveal(token)) ||
      !crypto::ConstantTimeEquals(again->salt.Reveal(token), secret->salt.Reveal(token))) {
    std::abort();
  }
  return 0;
}
