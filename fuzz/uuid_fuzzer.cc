// Fuzzes UUID normalisation (UUIDs arrive from disk headers and RPCs): an accepted UUID is 36
// characters of lower-case hex and dashes, and normalising it again changes nothing.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "keywarden/keys/hierarchy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto uuid = keywarden::keys::NormalizeUuid(text);
  if (!uuid.ok()) return 0;
  if (uuid->size() != 36) std::abort();
  for (size_t i = 0; i < uuid->size(); ++i) {
    const char c = (*uuid)[i];
    const bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) std::abort();
  }
  auto again = keywarden::keys::NormalizeUuid(*uuid);
  if (!again.ok() || *again != *uuid) std::abort();
  return 0;
}
