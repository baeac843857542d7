// Fuzzes what user-managed mode reads from places an attacker may write: stored wrapped DEKs
// (DecodeWrappedDek: bytes from a DEK store), object names from a listing (DecodeObjectId) and
// kms:// / storage:// URIs (ParseByokUri, RedactUri). The first input byte picks the parser.
// Invariants: no crash; a decoded wrapped DEK re-encodes to the same bytes; a decoded object
// name re-encodes to the same name; RedactUri never lets a secret parameter's value through.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "keywarden/byok/byok.h"
#include "src/byok/object_names.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::byok;
  if (size == 0) return 0;
  const uint8_t which = data[0] % 3;
  const std::span<const uint8_t> input(data + 1, size - 1);
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (which) {
    case 0: {
      auto dek = DecodeWrappedDek(input);
      if (!dek.ok()) return 0;
      const std::vector<uint8_t> again = EncodeWrappedDek(*dek);
      if (again.size() != input.size() ||
          (size > 1 && std::memcmp(again.data(), input.data(), input.size()) != 0)) {
        std::abort();
      }
      break;
    }
    case 1: {
      auto id = DecodeObjectId(text);
      if (id.has_value() && EncodeObjectId(*id) != text) std::abort();
      break;
    }
    case 2: {
      auto uri = ParseByokUri(text);
      const std::string redacted = RedactUri(text);
      if (uri.ok()) {
        for (const auto& [name, value] : uri->params) {
          // A secret value that is in the URI only as this parameter's literal value (written
          // NAME=VALUE without escapes, alphanumeric, once in the whole URI): RedactUri must
          // drop it.
          const bool distinctive =
              value.size() >= 12 &&
              std::all_of(value.begin(), value.end(),
                          [](char c) { return std::isalnum(static_cast<unsigned char>(c)); }) &&
              (text.find("?" + name + "=" + value) != std::string_view::npos ||
               text.find("&" + name + "=" + value) != std::string_view::npos) &&
              text.find(value) == text.rfind(value);
          if (IsSecretUriParam(name) && distinctive && redacted.find(value) != std::string::npos) {
            std::abort();
          }
        }
      }
      break;
    }
  }
  return 0;
}
