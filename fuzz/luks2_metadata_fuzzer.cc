// Fuzzes the LUKS2 profile check with untrusted metadata (a host controls a CVM's disk
// header): it never crashes, and whatever it accepts has exactly the profile's parameters.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "keywarden/volume/profile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::volume;
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  auto facts = CheckLuks2Metadata(json, "d3df01db-6681-497a-b52e-5659b6617609");
  if (!facts.ok()) return 0;
  const bool integrity = facts->integrity.has_value();
  if (facts->sector_size != kLuks2SectorSize || facts->data_offset != kLuks2DataOffset ||
      facts->volume_key_size != (integrity ? kIntegrityVolumeKeySize : kVolumeKeySize) ||
      (integrity && *facts->integrity != kIntegrity) ||
      (facts->pbkdf != "argon2id" && facts->pbkdf != "pbkdf2") ||
      facts->key_id != "d3df01db-6681-497a-b52e-5659b6617609") {
    std::abort();
  }
  return 0;
}
