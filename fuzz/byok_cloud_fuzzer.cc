// Fuzzes what the Azure Key Vault and GCP Cloud KMS KEK providers read from the network or from
// a DEK store (include/keywarden/byok/azure_kv.h, include/keywarden/byok/gcp.h): Azure's stored
// ciphertext, Entra ID token responses and wrapkey / unwrapkey results; Cloud KMS encrypt and
// decrypt responses (with their CRC32C checks), Google token responses, error bodies and
// service-account key files; both base64url decoders. The first input byte picks the parser.
// Invariants: no crash; a decoded Azure ciphertext re-encodes to the same bytes; what a parser
// accepts stays within its documented bounds; a canonical response built from an accepted one is
// accepted again with the same result; base64url decodes re-encode to the input (both decoders
// are strict) and the two decoders agree; parsers that promise to wipe their input do; error
// messages are printable ASCII.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "keywarden/byok/azure_kv.h"
#include "keywarden/byok/gcp.h"
#include "keywarden/crypto/encoding.h"

namespace {

using keywarden::InsecureSecretAccess;
using keywarden::SecretBytes;
namespace azure_kv = keywarden::byok::azure_kv;
namespace gcp = keywarden::byok::gcp;

// The key names of the seed corpus: Microsoft's wrapkey example and the stand-ins' keys.
constexpr std::string_view kAzureKey = "sdktestkey";
constexpr std::string_view kGcpKey =
    "projects/kw-test/locations/global/keyRings/kw-ring/cryptoKeys/kek";

void Check(bool ok) {
  if (!ok) std::abort();
}

bool Printable(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
}

// Printable(status) checks a status's message (absl::string_view is not std::string_view here).
bool Printable(const absl::Status& status) {
  return Printable(std::string_view(status.message().data(), status.message().size()));
}

bool ValidKeyVersion(std::string_view version) {
  return !version.empty() && version.size() <= 64 &&
         std::all_of(version.begin(), version.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
         });
}

std::string Unpadded(std::string_view text) {
  std::string out(text);
  while (!out.empty() && out.back() == '=') out.pop_back();
  return out;
}

bool SameBytes(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t which = data[0] % 10;
  const std::span<const uint8_t> input(data + 1, size - 1);
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (which) {
    case 0: {  // Azure ciphertext (bytes from a DEK store)
      auto ciphertext = azure_kv::DecodeCiphertext(input);
      if (!ciphertext.ok()) {
        Check(ciphertext.status().code() == absl::StatusCode::kPermissionDenied);
        break;
      }
      Check(ValidKeyVersion(ciphertext->key_version) && !ciphertext->wrapped.empty());
      auto again = azure_kv::EncodeCiphertext(*ciphertext);
      Check(again.ok() && SameBytes(*again, input));
      break;
    }
    case 1: {  // Entra ID token response
      auto token = azure_kv::ParseTokenResponse(text);
      if (!token.ok()) {
        Check(token.status().code() == absl::StatusCode::kUnavailable);
        break;
      }
      const auto bytes = token->token.Reveal(InsecureSecretAccess::Get());
      Check(!bytes.empty() && bytes.size() <= text.size());
      Check(Printable({reinterpret_cast<const char*>(bytes.data()), bytes.size()}));
      Check(token->expires_in.count() >= 1 && token->expires_in.count() <= 86400);
      break;
    }
    case 2: {  // Key Vault wrapkey / unwrapkey result
      auto result = azure_kv::ParseKeyOperationResult(text, kAzureKey);
      if (!result.ok()) {
        Check(result.status().code() == absl::StatusCode::kUnavailable);
        break;
      }
      Check(ValidKeyVersion(result->key_version) && !result->value.empty() &&
            result->value.size() <= text.size());
      // The same result in Key Vault's own form parses to the same version and value.
      const auto value = result->value.Reveal(InsecureSecretAccess::Get());
      const std::string canonical =
          nlohmann::json(
              {{"kid", "https://myvault.vault.azure.net/keys/SDKTestKey/" + result->key_version},
               {"value", azure_kv::Base64UrlEncode(value)}})
              .dump();
      auto again = azure_kv::ParseKeyOperationResult(canonical, kAzureKey);
      Check(again.ok() && again->key_version == result->key_version &&
            SameBytes(again->value.Reveal(InsecureSecretAccess::Get()), value));
      break;
    }
    case 3:    // base64url, Azure's decoder (and GCP's, which must agree)
    case 8: {  // base64url, GCP's decoder
      auto decoded = which == 3 ? azure_kv::Base64UrlDecode(text) : gcp::Base64UrlDecode(text);
      auto other = which == 3 ? gcp::Base64UrlDecode(text) : azure_kv::Base64UrlDecode(text);
      Check(decoded.ok() == other.ok());
      if (!decoded.ok()) break;
      Check(SameBytes(*decoded, *other));
      Check(azure_kv::Base64UrlEncode(*decoded) == Unpadded(text));
      Check(gcp::Base64UrlEncode(*decoded) == Unpadded(text));
      break;
    }
    case 4: {  // Cloud KMS EncryptResponse
      auto ciphertext = gcp::ParseEncryptResponse(text, kGcpKey);
      if (!ciphertext.ok()) {
        Check(ciphertext.status().code() == absl::StatusCode::kUnavailable ||
              ciphertext.status().code() == absl::StatusCode::kDataLoss);
        Check(Printable(ciphertext.status()));
        break;
      }
      Check(!ciphertext->empty() && ciphertext->size() <= keywarden::byok::kMaxWrappedSize);
      // The canonical response for these bytes (CRC32C as Int64Value's decimal string).
      const std::string canonical =
          nlohmann::json({{"name", std::string(kGcpKey) + "/cryptoKeyVersions/1"},
                          {"ciphertext", keywarden::crypto::Base64Encode(*ciphertext)},
                          {"ciphertextCrc32c", std::to_string(gcp::Crc32c(*ciphertext))},
                          {"verifiedPlaintextCrc32c", true},
                          {"verifiedAdditionalAuthenticatedDataCrc32c", true}})
              .dump();
      auto again = gcp::ParseEncryptResponse(canonical, kGcpKey);
      Check(again.ok() && *again == *ciphertext);
      break;
    }
    case 5: {  // Cloud KMS DecryptResponse (wiped by the parser)
      std::string body(text);
      auto plaintext = gcp::ParseDecryptResponse(body);
      Check(body.empty());
      if (!plaintext.ok()) {
        Check(plaintext.status().code() == absl::StatusCode::kUnavailable ||
              plaintext.status().code() == absl::StatusCode::kDataLoss);
        break;
      }
      const auto bytes = plaintext->Reveal(InsecureSecretAccess::Get());
      Check(!bytes.empty() && bytes.size() <= text.size());
      std::string canonical =
          nlohmann::json({{"plaintext", keywarden::crypto::Base64Encode(bytes)},
                          {"plaintextCrc32c", std::to_string(gcp::Crc32c(bytes))}})
              .dump();
      auto again = gcp::ParseDecryptResponse(canonical);
      Check(again.ok() && SameBytes(again->Reveal(InsecureSecretAccess::Get()), bytes));
      break;
    }
    case 6: {  // Google token response (wiped by the parser)
      std::string body(text);
      auto token = gcp::ParseTokenResponse(body);
      Check(body.empty());
      if (!token.ok()) {
        Check(token.status().code() == absl::StatusCode::kUnavailable);
        Check(Printable(token.status()));
        break;
      }
      const auto bytes = token->token.Reveal(InsecureSecretAccess::Get());
      Check(!bytes.empty() && bytes.size() <= 4096 && bytes.size() <= text.size());
      Check(Printable({reinterpret_cast<const char*>(bytes.data()), bytes.size()}));
      Check(token->expires_in_seconds >= 1 && token->expires_in_seconds <= 86400);
      break;
    }
    case 7: {  // service-account key file
      auto key = gcp::ParseServiceAccountKey(SecretBytes(input));
      if (!key.ok()) {
        Check(key.status().code() == absl::StatusCode::kInvalidArgument);
        break;
      }
      Check(!key->client_email.empty() && key->client_email.size() <= 256);
      Check(key->private_key_id.size() <= 256 && !key->private_key_pem.empty());
      Check(!key->token_uri.empty());
      break;
    }
    case 9: {  // Cloud KMS error body; the HTTP status from the input's first two bytes
      if (text.size() < 2) break;
      const long status =
          400 + (static_cast<uint8_t>(text[0]) << 8 | static_cast<uint8_t>(text[1])) % 200;
      for (const char* method : {"encrypt", "decrypt"}) {
        const absl::Status error =
            gcp::ErrorFromResponse(status, text.substr(2), method, "GCP Cloud KMS key kek");
        Check(!error.ok() && Printable(error));
      }
      break;
    }
  }
  return 0;
}
