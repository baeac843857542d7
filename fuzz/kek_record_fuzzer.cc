// Fuzzes the stored KEK record decoder (bytes read back from SQLite or etcd): it accepts
// exactly the 68-byte "KWK1" form, and what it accepts re-encodes to the same bytes.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "keywarden/store/kek_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden;
  auto record = store::DecodeKekRecord({data, size});
  if (!record.ok()) return 0;
  const SecretBytes again = store::EncodeKekRecord(*record);
  const auto bytes = again.Reveal(InsecureSecretAccess::Get());
  if (size != store::kKekRecordSize || bytes.size() != size ||
      std::memcmp(bytes.data(), data, size) != 0) {
    std::abort();
  }
  return 0;
}
