// Google Cloud KMS as a KEK provider, over the Cloud KMS REST API v1 with a service-account key
// (OAuth 2.0 JWT bearer grant, RS256). docs/byok-gcp.md.
//
//   kms://gcp?projectID=P&location=L&keyRing=R&keyName=K&credentialsPath=FILE[&endpoint=URL]
//   kms://gcp?projectID=P&location=L&keyRing=R&keyName=K&credentials=JSON-OR-BASE64[&endpoint=URL]
//
// The first form is Constellation's (internal/kms/uri: projectID, location, keyRing, keyName,
// credentialsPath = the path of the service-account key file). `credentials` (the key file's
// contents inline, as JSON or base64) and `endpoint` are Keywarden's extensions.
#pragma once

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

// GcpKmsConfig names one symmetric Cloud KMS key (purpose ENCRYPT_DECRYPT) and the service
// account that uses it.
struct GcpKmsConfig {
  std::string project_id;  // e.g. "my-project" (or a domain-scoped "example.com:my-project")
  std::string location;    // e.g. "global", "europe-west3"
  std::string key_ring;
  std::string key_name;
  // credentials_json is the service-account key file Google issues ("type": "service_account",
  // client_email, private_key, private_key_id, token_uri, ...). It never appears in logs, errors
  // or Describe().
  SecretBytes credentials_json;
  // endpoint: empty = https://cloudkms.googleapis.com; http:// only to loopback (tests).
  std::string endpoint;
};

// NewGcpKmsProvider returns a provider that wraps with cryptoKeys.encrypt and unwraps with
// cryptoKeys.decrypt on the key's resource name, both with the fixed additional authenticated
// data gcp::kAad and the CRC32C integrity fields. kek_id() is "gcp-kms:" + the key's resource
// name (projects/P/locations/L/keyRings/R/cryptoKeys/K). Thread-safe; one OAuth access token is
// shared by all threads and fetched again shortly before it expires or after a 401.
// INVALID_ARGUMENT for a bad configuration (names, endpoint, a key file that is not a
// service-account key with an RSA private key of 2048 bits or more); no request is sent before
// the first Wrap/Unwrap. Errors of Wrap/Unwrap follow KekProvider: UNAVAILABLE (network, HTTP
// 5xx/429 and responses failing their CRC32C check, each after up to 3 attempts),
// PERMISSION_DENIED (401/403, a token request refused, a ciphertext KMS refuses),
// FAILED_PRECONDITION (key not found, disabled or destroyed), INVALID_ARGUMENT.
absl::StatusOr<std::unique_ptr<KekProvider>> NewGcpKmsProvider(GcpKmsConfig config,
                                                               const RemoteOptions& options);

// GcpKmsConfigFromParams builds a configuration from a kms://gcp URI's decoded parameters (the
// forms above; exactly one of credentialsPath and credentials). credentialsPath is read here (at
// most 64 KiB). INVALID_ARGUMENT naming the missing, unknown or malformed parameter, never
// quoting credentials.
absl::StatusOr<GcpKmsConfig> GcpKmsConfigFromParams(
    const std::map<std::string, std::string>& params);

// RegisterGcp registers "gcp" for kms:// URIs with byok's registry; RegisterAllProviders calls
// it.
void RegisterGcp();

// gcp holds the provider's building blocks, public for their known-answer tests
// (src/byok/gcp_kms_test.cc). Callers use NewGcpKmsProvider.
namespace gcp {

// kDefaultEndpoint is Cloud KMS's REST endpoint.
inline constexpr std::string_view kDefaultEndpoint = "https://cloudkms.googleapis.com";
// kScope is the OAuth scope requested for the access token.
inline constexpr std::string_view kScope = "https://www.googleapis.com/auth/cloudkms";
// kAad is the additionalAuthenticatedData of every encrypt and decrypt: KMS binds it into the
// ciphertext, so ciphertexts other applications made under the same key do not unwrap here, and
// ours do not unwrap without it (the DEK id is bound inside the plaintext by WrapDek).
inline constexpr std::string_view kAad = "keywarden:wrapped-dek-v1";
// kMaxPlaintext bounds Wrap's plaintext, so that the ciphertext (plaintext + KMS's version
// header, nonce and tag) stays within kMaxWrappedSize.
inline constexpr size_t kMaxPlaintext = 2048;
// kTokenLifetimeSeconds is the lifetime the JWT assertion asks for (Google's maximum: one hour).
inline constexpr int64_t kTokenLifetimeSeconds = 3600;

// Crc32c returns the CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and
// final XOR 0xFFFFFFFF) of `data` as RFC 3720 §B.4 defines it, continuing from `crc` (the CRC of
// the preceding bytes; 0 to start). Bitwise and branch-free, so constant-time in the data
// (it runs over DEK plaintexts; a lookup table indexed by them would leak through the cache).
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc = 0);

// Base64UrlEncode returns base64url without padding (RFC 4648 §5, as JWS uses it, RFC 7515 §2).
std::string Base64UrlEncode(std::span<const uint8_t> bytes);
// Base64UrlDecode decodes base64url with or without padding; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::vector<uint8_t>> Base64UrlDecode(std::string_view text);

// ServiceAccountKey is the part of a service-account key file the provider uses.
struct ServiceAccountKey {
  std::string client_email;
  std::string private_key_id;  // the JWT header's "kid" (may be empty)
  std::string token_uri;       // the OAuth token endpoint and the JWT's "aud", as written
  SecretBytes private_key_pem;
};
// ParseServiceAccountKey parses a key file's JSON. INVALID_ARGUMENT (never quoting values other
// than token_uri) when it is not JSON, "type" is not "service_account", client_email or
// private_key is missing, or token_uri (default https://oauth2.googleapis.com/token) is not
// https:// (or http:// to loopback). The private key is only copied here, not yet parsed.
absl::StatusOr<ServiceAccountKey> ParseServiceAccountKey(const SecretBytes& json);

// RsaSigner signs with an RSA private key (2048 to 8192 bits) read from PEM (PKCS#8
// "PRIVATE KEY", as Google issues, or PKCS#1 "RSA PRIVATE KEY"). Thread-safe; the key is freed
// (and its private parts cleared by OpenSSL) on destruction.
class RsaSigner {
 public:
  // New parses `pem` and checks the key (EVP_PKEY_check: n = p·q, primes, d and CRT values);
  // INVALID_ARGUMENT for anything but a consistent, unencrypted RSA key of 2048 to 8192 bits,
  // without quoting the PEM.
  static absl::StatusOr<std::unique_ptr<RsaSigner>> New(const SecretBytes& pem);
  ~RsaSigner();
  RsaSigner(const RsaSigner&) = delete;
  RsaSigner& operator=(const RsaSigner&) = delete;

  // SignRs256 returns the RSASSA-PKCS1-v1_5 signature with SHA-256 (RFC 8017 §8.2; JWS "RS256",
  // RFC 7518 §3.3) of `message`. Deterministic.
  absl::StatusOr<std::vector<uint8_t>> SignRs256(std::span<const uint8_t> message) const;

 private:
  explicit RsaSigner(void* pkey) : pkey_(pkey) {}
  void* pkey_;  // EVP_PKEY*
};

// JwtHeader and JwtClaims return the JSON texts of the service-account JWT (Google, "Using OAuth
// 2.0 for Server to Server Applications"): header {"alg":"RS256","typ":"JWT"[,"kid":ID]};
// claims {"iss": client_email, "scope": kScope, "aud": token_uri, "iat": now,
// "exp": now + kTokenLifetimeSeconds}.
std::string JwtHeader(const ServiceAccountKey& key);
std::string JwtClaims(const ServiceAccountKey& key, int64_t now_unix);
// MakeJwtAssertion returns the signed JWT in compact form (RFC 7515 §7.1):
// BASE64URL(header) "." BASE64URL(claims) "." BASE64URL(RS256 signature).
absl::StatusOr<std::string> MakeJwtAssertion(const ServiceAccountKey& key, const RsaSigner& signer,
                                             int64_t now_unix);
// TokenRequestBody returns the form body of the token request (RFC 7523 §2.1):
// grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=JWT.
std::string TokenRequestBody(std::string_view assertion);

// AccessToken is a bearer token and its lifetime from the token response.
struct AccessToken {
  SecretBytes token;
  int64_t expires_in_seconds = 0;
};
// ParseTokenResponse parses a token endpoint's 200 response (RFC 6749 §5.1): access_token,
// token_type "Bearer" (any case), expires_in (1 to 86400; 3600 when absent). UNAVAILABLE
// (never quoting the token) for anything else. Wipes `body`.
absl::StatusOr<AccessToken> ParseTokenResponse(std::string& body);

// KeyName returns projects/P/locations/L/keyRings/R/cryptoKeys/K.
std::string KeyName(const GcpKmsConfig& config);
// KmsUrl returns ENDPOINT/v1/KEY_NAME:METHOD ("encrypt" or "decrypt").
std::string KmsUrl(std::string_view endpoint, std::string_view key_name, std::string_view method);

// EncryptRequestBody returns the JSON body of cryptoKeys.encrypt: plaintext (base64),
// additionalAuthenticatedData (base64 of `aad`), plaintextCrc32c and
// additionalAuthenticatedDataCrc32c (decimal strings, the JSON form of Int64Value). Held as a
// secret: it contains the plaintext.
SecretBytes EncryptRequestBody(const SecretBytes& plaintext, std::string_view aad);
// DecryptRequestBody returns the JSON body of cryptoKeys.decrypt: ciphertext,
// additionalAuthenticatedData and their CRC32Cs.
std::string DecryptRequestBody(std::span<const uint8_t> ciphertext, std::string_view aad);

// ParseEncryptResponse checks an EncryptResponse and returns its ciphertext: "name" must be a
// version of `key_name` (KEY_NAME/cryptoKeyVersions/N), verifiedPlaintextCrc32c and
// verifiedAdditionalAuthenticatedDataCrc32c must be true, and ciphertextCrc32c must be the
// CRC32C of the ciphertext (1 to kMaxWrappedSize bytes). DATA_LOSS when an integrity field fails
// (the caller retries), UNAVAILABLE for a malformed response.
absl::StatusOr<std::vector<uint8_t>> ParseEncryptResponse(std::string_view body,
                                                          std::string_view key_name);
// ParseDecryptResponse returns a DecryptResponse's plaintext after checking plaintextCrc32c
// (required). DATA_LOSS for a CRC mismatch, UNAVAILABLE for a malformed response; never quotes
// the plaintext. Wipes `body`.
absl::StatusOr<SecretBytes> ParseDecryptResponse(std::string& body);

// ErrorFromResponse maps a non-200 Cloud KMS response (google.rpc.Status JSON:
// {"error": {"code", "message", "status"}}) to a Keywarden status for `method` ("encrypt" or
// "decrypt"), with Google's status name and message (printable, cut) after `what`:
// 429, 5xx → UNAVAILABLE; 401, 403 → PERMISSION_DENIED; 404 and status FAILED_PRECONDITION →
// FAILED_PRECONDITION; any other 4xx → PERMISSION_DENIED on decrypt (KMS's answer to a tampered
// ciphertext or wrong AAD is 400 INVALID_ARGUMENT), INVALID_ARGUMENT on encrypt.
absl::Status ErrorFromResponse(long http_status, std::string_view body, std::string_view method,
                               std::string_view what);

}  // namespace gcp
}  // namespace keywarden::byok
