// Fuzzes the hex, base64 and WireGuard key decoders: decoding is strict, so whatever decodes
// must encode back to exactly the input (lower-case for hex), and the secret and public
// variants must agree.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/x25519.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto token = InsecureSecretAccess::Get();

  auto b64 = crypto::Base64Decode(text);
  auto b64_secret = crypto::Base64DecodeSecret(text);
  if (b64.ok() != b64_secret.ok()) std::abort();
  if (b64.ok()) {
    if (crypto::Base64Encode(*b64) != text) std::abort();
    const auto s = b64_secret->Reveal(token);
    if (std::string(s.begin(), s.end()) != std::string(b64->begin(), b64->end())) std::abort();
  }

  auto hex = crypto::HexDecode(text);
  auto hex_secret = crypto::HexDecodeSecret(text);
  if (hex.ok() != hex_secret.ok()) std::abort();
  if (hex.ok()) {
    std::string lower(text);
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (crypto::HexEncode(*hex) != lower) std::abort();
  }

  auto wg = crypto::DecodeWireGuardPublicKey(text);
  if (wg.ok() && crypto::EncodeWireGuardPublicKey(*wg) != text) std::abort();
  auto wg_private = crypto::DecodeWireGuardPrivateKey(text);
  if (wg.ok() != wg_private.ok()) std::abort();
  return 0;
}
