// Fuzzes what an aTLS peer parses from untrusted bytes: RPC request and response payloads
// (docs/formats/atls.md) and a peer certificate with its attestation extension. The first byte
// picks the parser. Properties: no crash; a decoded request re-encodes to the same payload; an
// error response has no body; an accepted document is within the size limit.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "src/crypto/atls_internal.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::crypto;
  if (size == 0) return 0;
  const std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0: {
      auto request = internal::DecodeRpcRequest(input);
      if (!request.ok()) return 0;
      auto again = internal::EncodeRpcRequest(request->method, request->body);
      if (!again.ok() || *again != input) std::abort();
      return 0;
    }
    case 1: {
      auto response = internal::DecodeRpcResponse(input);
      if (response.ok() && !response->status.ok() && !response->body.empty()) std::abort();
      return 0;
    }
    default: {
      auto contents = internal::ParseAtlsCertificateDer({data + 1, size - 1});
      if (contents.ok() && contents->document.has_value() &&
          contents->document->size() > kAtlsMaxDocumentSize) {
        std::abort();
      }
      return 0;
    }
  }
}
