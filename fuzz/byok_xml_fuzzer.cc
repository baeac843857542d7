// Fuzzes the parsers of what S3 / GCS and Azure Blob answer (src/byok/xml.h): error bodies and
// list pages come from the network. They never crash, never read outside the input, and every
// name a page yields is text libxml2 decoded from it (bounded by the input's size).
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "src/byok/xml.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::byok::xml;
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  const ErrorFields error = ParseError(body);
  if (error.code.size() > size || error.message.size() > size) std::abort();
  if (auto page = ParseS3ListPage(body); page.ok()) {
    size_t total = page->next_token.size();
    for (const auto& key : page->keys) total += key.size();
    if (total > size) std::abort();
  }
  if (auto page = ParseAzureListPage(body); page.ok()) {
    size_t total = page->next_marker.size();
    for (const auto& name : page->names) total += name.size();
    if (total > size) std::abort();
  }
  return 0;
}
