// Fuzzes the KMIP TTLV decoder (bytes a KMIP server sends, src/byok/kmip_ttlv.h): it never
// crashes, what it accepts re-encodes to exactly the same bytes (the strict rules leave one
// encoding per item), and MessageSize agrees with Decode on accepted messages.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "src/byok/kmip_ttlv.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::byok::kmip;
  const std::span<const uint8_t> input(data, size);
  auto item = Decode(input);
  if (!item.ok()) return 0;
  const std::vector<uint8_t> again = Encode(*item);
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0) std::abort();
  if (item->type == ItemType::kStructure && data[0] == 0x42) {
    auto announced = MessageSize(input.first(kHeaderSize));
    if (!announced.ok() || *announced != size) std::abort();
  }
  return 0;
}
