// Fuzzes the cluster.json parser: a parsed file always has a 32-byte salt and clusterID.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "keywarden/keys/cluster.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto info = keywarden::keys::ParseClusterJson(
      std::string_view(reinterpret_cast<const char*>(data), size));
  if (info.ok() && info->measurement_salt.size() != keywarden::keys::kMeasurementSaltSize) {
    std::abort();
  }
  return 0;
}
