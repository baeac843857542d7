// Azure Key Vault (vaults and Managed HSM) as a KEK provider, over the Key Vault REST API
// (wrapkey / unwrapkey, api-version 7.4) with Microsoft Entra ID client-credentials tokens.
// docs/byok-azure-kv.md describes the URI, authentication, the ciphertext format and the errors.
//
//   kms://azure?tenantID=T&clientID=C&clientSecret=S&vaultName=V&vaultType=vault.azure.net
//              &keyName=K[&algorithm=RSA-OAEP-256|A256KW][&endpoint=URL][&authEndpoint=URL]
//
// The parameter names are Constellation's (internal/kms/uri/uri.go, DecodeAzureConfigFromURI);
// algorithm, endpoint and authEndpoint are Keywarden's optional extensions. Untested against the
// live Azure service: the tests run against Microsoft's published examples and a stand-in server.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::byok {

// AzureKeyVaultConfig names one key in a vault or Managed HSM and the service principal that
// may use it. The client secret never appears in logs, errors or Describe().
struct AzureKeyVaultConfig {
  // tenant_id: the Entra ID tenant (a GUID or a domain name such as contoso.onmicrosoft.com).
  std::string tenant_id;
  // client_id: the application (client) id of the service principal.
  std::string client_id;
  SecretBytes client_secret;
  // vault_name and vault_type give the vault host VAULT_NAME.VAULT_TYPE. vault_type is one of
  // Constellation's VaultBaseURL values: vault.azure.net, vault.azure.cn,
  // vault.usgovcloudapi.net, vault.microsoftazure.de (vaults) or managedhsm.azure.net (Managed
  // HSM). The token scope is https://VAULT_TYPE/.default.
  std::string vault_name;
  std::string vault_type = "vault.azure.net";
  // key_name: the key (1 to 127 of A-Z a-z 0-9 -). Wrap uses its current version; the
  // version is recorded in the ciphertext and Unwrap uses that one.
  std::string key_name;
  // algorithm: "RSA-OAEP-256" (RSA and RSA-HSM keys, vaults and Managed HSM) or "A256KW"
  // (AES-256 oct-HSM keys, Managed HSM only).
  std::string algorithm = "RSA-OAEP-256";
  // endpoint: empty = https://VAULT_NAME.VAULT_TYPE; http:// only to loopback (tests).
  std::string endpoint;
  // auth_endpoint: empty = the cloud's Entra ID login host (https://login.microsoftonline.com,
  // https://login.chinacloudapi.cn for vault.azure.cn, https://login.microsoftonline.us for
  // vault.usgovcloudapi.net, https://login.microsoftonline.de for vault.microsoftazure.de);
  // http:// only to loopback (tests).
  std::string auth_endpoint;
};

// NewAzureKeyVaultProvider returns a provider that wraps with Key Vault's wrapkey and unwraps
// with unwrapkey on the key version the wrap used. kek_id() is
// "azure-kv:VAULT_NAME.VAULT_TYPE/keys/KEY_NAME" (the endpoint override does not change it).
// Bearer tokens are fetched on first use, cached until shortly before they expire and fetched
// again then or after a 401; concurrent callers share one fetch. Thread-safe. INVALID_ARGUMENT
// for a bad configuration; no request is sent before the first Wrap/Unwrap.
absl::StatusOr<std::unique_ptr<KekProvider>> NewAzureKeyVaultProvider(AzureKeyVaultConfig config,
                                                                      const RemoteOptions& options);

// AzureKeyVaultConfigFromParams builds a configuration from a URI's decoded query parameters
// (the form above). INVALID_ARGUMENT naming the missing or unknown parameter, never quoting
// clientSecret.
absl::StatusOr<AzureKeyVaultConfig> AzureKeyVaultConfigFromParams(
    const std::map<std::string, std::string>& params);

// RegisterAzureKeyVault registers "azure" for kms:// URIs (storage://azure is the Azure Blob DEK
// store, a separate namespace); RegisterAllProviders calls it.
void RegisterAzureKeyVault();

// ---- The wire and storage formats, exposed for tests against the published examples.
namespace azure_kv {

// kApiVersion is the Key Vault REST API version every request names.
inline constexpr std::string_view kApiVersion = "7.4";

// Base64UrlEncode returns base64url (RFC 4648 §5) without padding, as Key Vault's JSON uses.
std::string Base64UrlEncode(std::span<const uint8_t> bytes);
// Base64UrlDecode accepts base64url with or without padding (strict otherwise: no other
// characters, canonical trailing bits); INVALID_ARGUMENT for anything else.
absl::StatusOr<std::vector<uint8_t>> Base64UrlDecode(std::string_view text);

// TokenRequestBody returns the application/x-www-form-urlencoded body of the client-credentials
// token request (Microsoft identity platform, "OAuth 2.0 client credentials flow", first case:
// shared secret): client_id=..&scope=..&client_secret=..&grant_type=client_credentials, each
// value percent-encoded (A-Z a-z 0-9 - . _ ~ kept). It holds the secret, hence SecretBytes.
SecretBytes TokenRequestBody(std::string_view client_id, const SecretBytes& client_secret,
                             std::string_view scope);

// AccessToken is a parsed token response.
struct AccessToken {
  SecretBytes token;
  std::chrono::seconds expires_in{0};
};
// ParseTokenResponse reads {"token_type": "Bearer", "expires_in": N, "access_token": "..."}
// (expires_in as a number or a decimal string, 1 to 86400). UNAVAILABLE for anything else; the
// message never quotes the token.
absl::StatusOr<AccessToken> ParseTokenResponse(std::string_view body);
// TokenCacheLifetime returns how long a token that expires in `expires_in` is used: until
// min(5 minutes, expires_in / 4) before it expires.
std::chrono::milliseconds TokenCacheLifetime(std::chrono::seconds expires_in);

// KeyOperationPath returns "/keys/KEY/VERSION/OPERATION?api-version=7.4" (OPERATION "wrapkey"
// or "unwrapkey"). An empty version leaves the segment empty ("/keys/KEY//wrapkey"), which
// names the key's current version.
std::string KeyOperationPath(std::string_view key_name, std::string_view version,
                             std::string_view operation);
// KeyOperationBody returns the JSON body {"alg":"ALG","value":"BASE64URL(value)"}; it holds
// the value (a plaintext for wrapkey), hence SecretBytes.
SecretBytes KeyOperationBody(std::string_view alg, const SecretBytes& value);

// KeyOperationResult is a parsed wrapkey / unwrapkey response.
struct KeyOperationResult {
  // key_version: the last segment of "kid" (https://HOST/keys/KEY/VERSION).
  std::string key_version;
  SecretBytes value;
};
// ParseKeyOperationResult reads {"kid": ".../keys/KEY/VERSION", "value": "BASE64URL"}; the kid's
// key name must be `key_name` (compared without case, as Key Vault names are) and the version
// 1 to 64 of A-Z a-z 0-9. UNAVAILABLE for anything else (never quoting the value).
absl::StatusOr<KeyOperationResult> ParseKeyOperationResult(std::string_view body,
                                                           std::string_view key_name);

// Algorithm is the wrapping algorithm recorded in a ciphertext.
enum class Algorithm : uint8_t {
  kRsaOaep256 = 1,  // "RSA-OAEP-256": RSAES-OAEP, SHA-256 and MGF1-SHA-256 (RFC 8017 §7.1)
  kA256Kw = 2,      // "A256KW": RFC 3394 AES key wrap of the ISO/IEC 7816-4-padded plaintext
};

// Ciphertext is the provider's wrapped form (docs/byok-azure-kv.md, "Ciphertext format"):
//   u8 format (1) || u8 algorithm || u8 len(key_version) || key_version || Key Vault's result
// key_version is 1 to 64 of A-Z a-z 0-9; the result is at least 1 byte and the whole at most
// kMaxWrappedSize bytes.
struct Ciphertext {
  Algorithm algorithm = Algorithm::kRsaOaep256;
  std::string key_version;
  std::vector<uint8_t> wrapped;
};
inline constexpr uint8_t kCiphertextFormat = 1;
// EncodeCiphertext returns the stored form; INVALID_ARGUMENT when a field is out of range.
absl::StatusOr<std::vector<uint8_t>> EncodeCiphertext(const Ciphertext& ciphertext);
// DecodeCiphertext parses the stored form. PERMISSION_DENIED (a ciphertext this provider does
// not accept), naming what is wrong but never quoting the bytes: empty or truncated, another
// format version, an unknown algorithm, a bad key version, no wrapped key, oversized.
absl::StatusOr<Ciphertext> DecodeCiphertext(std::span<const uint8_t> bytes);

}  // namespace azure_kv
}  // namespace keywarden::byok
