// Azure Key Vault KEK provider: the Key Vault REST API's wrapkey / unwrapkey (api-version 7.4)
// with bearer tokens from Microsoft Entra ID's client-credentials flow. docs/byok-azure-kv.md.
//
// References:
//   https://learn.microsoft.com/en-us/rest/api/keyvault/keys/wrap-key/wrap-key
//   https://learn.microsoft.com/en-us/rest/api/keyvault/keys/unwrap-key/unwrap-key
//   https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow
//   https://learn.microsoft.com/en-us/azure/key-vault/keys/about-keys-details (algorithms)
#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <chrono>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "keywarden/byok/azure_kv.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"
#include "src/byok/http.h"

namespace keywarden::byok {
namespace {

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string_view AsText(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

bool IsUnreserved(uint8_t c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

size_t FormEncodedSize(std::span<const uint8_t> value) {
  size_t n = 0;
  for (uint8_t c : value) n += IsUnreserved(c) ? 1 : 3;
  return n;
}

// FormEncode writes `value` percent-encoded (RFC 3986 unreserved kept, upper-case hex) at `out`
// and returns the position after it.
uint8_t* FormEncode(std::span<const uint8_t> value, uint8_t* out) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (uint8_t c : value) {
    if (IsUnreserved(c)) {
      *out++ = c;
    } else {
      *out++ = '%';
      *out++ = static_cast<uint8_t>(kHex[c >> 4]);
      *out++ = static_cast<uint8_t>(kHex[c & 0xf]);
    }
  }
  return out;
}

uint8_t* Append(std::string_view text, uint8_t* out) {
  return std::copy(text.begin(), text.end(), out);
}

// ToUrlChar maps a standard base64 character to its base64url form.
char ToUrlChar(char c) { return c == '+' ? '-' : c == '/' ? '_' : c; }

// PaddedSize is the length of the padded standard base64 that ToStandardBase64 makes of `text`.
size_t PaddedSize(std::string_view text) {
  return text.find('=') != std::string_view::npos ? text.size() : (text.size() + 3) / 4 * 4;
}

// ToStandardBase64 turns base64url text (padded or not) into padded standard base64 in `out`
// (PaddedSize(text) bytes); the standard decoder then checks the rest (padding placement,
// canonical trailing bits). false for '+' or '/' or a length no base64 text has.
bool ToStandardBase64(std::string_view text, std::span<uint8_t> out) {
  const bool padded = text.find('=') != std::string_view::npos;
  if (padded ? text.size() % 4 != 0 : text.size() % 4 == 1) return false;
  size_t i = 0;
  for (char c : text) {
    if (c == '+' || c == '/') return false;  // standard alphabet, not base64url
    out[i++] = static_cast<uint8_t>(c == '-' ? '+' : c == '_' ? '/' : c);
  }
  while (i < out.size()) out[i++] = '=';
  return true;
}

bool ValidKeyVersion(std::string_view version) {
  if (version.empty() || version.size() > 64) return false;
  return std::all_of(version.begin(), version.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0; });
}

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) ==
                  std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

namespace azure_kv {

std::string Base64UrlEncode(std::span<const uint8_t> bytes) {
  std::string text = crypto::Base64Encode(bytes);
  while (!text.empty() && text.back() == '=') text.pop_back();
  for (char& c : text) c = ToUrlChar(c);
  return text;
}

absl::StatusOr<std::vector<uint8_t>> Base64UrlDecode(std::string_view text) {
  std::string standard(PaddedSize(text), '\0');
  if (!ToStandardBase64(
          text, std::span<uint8_t>(reinterpret_cast<uint8_t*>(standard.data()), standard.size()))) {
    return InvalidArgumentError("malformed base64url ({} characters)", text.size());
  }
  auto decoded = crypto::Base64Decode(standard);
  if (!decoded.ok()) {
    return InvalidArgumentError("malformed base64url ({} characters)", text.size());
  }
  return decoded;
}

namespace {

// Base64UrlDecodeSecret decodes base64url text into locked memory, converting it in locked
// memory too.
absl::StatusOr<SecretBytes> Base64UrlDecodeSecret(std::string_view text) {
  SecretBytes standard(PaddedSize(text));
  if (!ToStandardBase64(text, standard.MutableReveal(InsecureSecretAccess::Get()))) {
    return InvalidArgumentError("malformed base64url");
  }
  auto decoded = crypto::Base64DecodeSecret(AsText(standard.Reveal(InsecureSecretAccess::Get())));
  if (!decoded.ok()) return InvalidArgumentError("malformed base64url");
  return decoded;
}

}  // namespace

SecretBytes TokenRequestBody(std::string_view client_id, const SecretBytes& client_secret,
                             std::string_view scope) {
  constexpr std::string_view kClientId = "client_id=", kScope = "&scope=",
                             kSecret = "&client_secret=", kGrant = "&grant_type=client_credentials";
  const auto secret = client_secret.Reveal(InsecureSecretAccess::Get());
  SecretBytes body(kClientId.size() + FormEncodedSize(AsBytes(client_id)) + kScope.size() +
                   FormEncodedSize(AsBytes(scope)) + kSecret.size() + FormEncodedSize(secret) +
                   kGrant.size());
  uint8_t* out = body.MutableReveal(InsecureSecretAccess::Get()).data();
  out = FormEncode(AsBytes(client_id), Append(kClientId, out));
  out = FormEncode(AsBytes(scope), Append(kScope, out));
  out = FormEncode(secret, Append(kSecret, out));
  Append(kGrant, out);
  return body;
}

absl::StatusOr<AccessToken> ParseTokenResponse(std::string_view body) {
  auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return UnavailableError("the token response is not a JSON object");
  const auto type = json.find("token_type");
  if (type == json.end() || !type->is_string() ||
      !EqualsIgnoreCase(type->get_ref<const std::string&>(), "Bearer")) {
    return UnavailableError("the token response has no token_type Bearer");
  }
  int64_t expires = 0;
  const auto exp = json.find("expires_in");
  if (exp != json.end() && exp->is_number_integer()) {
    expires = exp->get<int64_t>();
  } else if (exp != json.end() && exp->is_string()) {
    const std::string& text = exp->get_ref<const std::string&>();
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), expires);
    if (ec != std::errc() || ptr != text.data() + text.size()) expires = 0;
  }
  if (expires < 1 || expires > 86400) {
    return UnavailableError("the token response has no expires_in from 1 to 86400 seconds");
  }
  const auto token = json.find("access_token");
  if (token == json.end() || !token->is_string() || token->get_ref<std::string&>().empty()) {
    return UnavailableError("the token response has no access_token");
  }
  std::string& text = token->get_ref<std::string&>();
  const bool printable = std::all_of(text.begin(), text.end(), [](char c) {
    return static_cast<unsigned char>(c) > 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
  AccessToken out{SecretBytes(AsBytes(text)), std::chrono::seconds(expires)};
  SecureWipe(text);
  // The token travels in an HTTP header: no spaces, control characters or non-ASCII.
  if (!printable) return UnavailableError("the token response has a malformed access_token");
  return out;
}

std::chrono::milliseconds TokenCacheLifetime(std::chrono::seconds expires_in) {
  const std::chrono::milliseconds total = expires_in;
  const std::chrono::milliseconds margin =
      std::min<std::chrono::milliseconds>(std::chrono::minutes(5), total / 4);
  return total - margin;
}

std::string KeyOperationPath(std::string_view key_name, std::string_view version,
                             std::string_view operation) {
  return fmt::format("/keys/{}/{}/{}?api-version={}", key_name, version, operation, kApiVersion);
}

SecretBytes KeyOperationBody(std::string_view alg, const SecretBytes& value) {
  constexpr std::string_view kHead = "{\"alg\":\"", kMiddle = "\",\"value\":\"", kTail = "\"}";
  const SecretBytes b64 = crypto::Base64EncodeSecret(value);
  const auto text = b64.Reveal(InsecureSecretAccess::Get());
  const size_t unpadded =
      static_cast<size_t>(std::find(text.begin(), text.end(), '=') - text.begin());
  SecretBytes body(kHead.size() + alg.size() + kMiddle.size() + unpadded + kTail.size());
  uint8_t* out = body.MutableReveal(InsecureSecretAccess::Get()).data();
  out = Append(kMiddle, Append(alg, Append(kHead, out)));
  for (size_t i = 0; i < unpadded; ++i) {
    *out++ = static_cast<uint8_t>(ToUrlChar(static_cast<char>(text[i])));
  }
  Append(kTail, out);
  return body;
}

absl::StatusOr<KeyOperationResult> ParseKeyOperationResult(std::string_view body,
                                                           std::string_view key_name) {
  auto json = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) return UnavailableError("the key operation result is not a JSON object");
  const auto kid = json.find("kid");
  if (kid == json.end() || !kid->is_string()) {
    return UnavailableError("the key operation result has no kid");
  }
  // kid = https://HOST/keys/NAME/VERSION
  const std::string& id = kid->get_ref<const std::string&>();
  const size_t keys = id.rfind("/keys/");
  const std::string_view rest =
      keys == std::string::npos ? std::string_view() : std::string_view(id).substr(keys + 6);
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos || !EqualsIgnoreCase(rest.substr(0, slash), key_name) ||
      !ValidKeyVersion(rest.substr(slash + 1))) {
    return UnavailableError("the key operation result names key {} instead of {}/VERSION",
                            Printable(id, 200), Printable(key_name, 127));
  }
  KeyOperationResult out;
  out.key_version = std::string(rest.substr(slash + 1));
  const auto value = json.find("value");
  if (value == json.end() || !value->is_string()) {
    return UnavailableError("the key operation result has no value");
  }
  std::string& text = value->get_ref<std::string&>();
  auto decoded = Base64UrlDecodeSecret(text);
  SecureWipe(text);
  if (!decoded.ok() || decoded->empty()) {
    return UnavailableError("the key operation result has a malformed value");
  }
  out.value = *std::move(decoded);
  return out;
}

absl::StatusOr<std::vector<uint8_t>> EncodeCiphertext(const Ciphertext& ciphertext) {
  if (ciphertext.algorithm != Algorithm::kRsaOaep256 &&
      ciphertext.algorithm != Algorithm::kA256Kw) {
    return InvalidArgumentError("Azure Key Vault ciphertext: unknown algorithm {}",
                                static_cast<int>(ciphertext.algorithm));
  }
  if (!ValidKeyVersion(ciphertext.key_version)) {
    return InvalidArgumentError("Azure Key Vault ciphertext: bad key version {}",
                                Printable(ciphertext.key_version));
  }
  const size_t size = 3 + ciphertext.key_version.size() + ciphertext.wrapped.size();
  if (ciphertext.wrapped.empty() || size > kMaxWrappedSize) {
    return InvalidArgumentError("Azure Key Vault ciphertext: a wrapped key of {} bytes",
                                ciphertext.wrapped.size());
  }
  std::vector<uint8_t> out;
  out.reserve(size);
  out.push_back(kCiphertextFormat);
  out.push_back(static_cast<uint8_t>(ciphertext.algorithm));
  out.push_back(static_cast<uint8_t>(ciphertext.key_version.size()));
  out.insert(out.end(), ciphertext.key_version.begin(), ciphertext.key_version.end());
  out.insert(out.end(), ciphertext.wrapped.begin(), ciphertext.wrapped.end());
  return out;
}

absl::StatusOr<Ciphertext> DecodeCiphertext(std::span<const uint8_t> bytes) {
  constexpr std::string_view kWhat = "Azure Key Vault ciphertext";
  if (bytes.empty()) return PermissionDeniedError("{} is empty", kWhat);
  if (bytes.size() > kMaxWrappedSize) {
    return PermissionDeniedError("{} of {} bytes is over the {}-byte limit", kWhat, bytes.size(),
                                 kMaxWrappedSize);
  }
  if (bytes[0] != kCiphertextFormat) {
    return PermissionDeniedError("{} has format version {}; this build reads version {}", kWhat,
                                 bytes[0], kCiphertextFormat);
  }
  if (bytes.size() < 3) return PermissionDeniedError("{} is truncated (header)", kWhat);
  Ciphertext out;
  switch (bytes[1]) {
    case static_cast<uint8_t>(Algorithm::kRsaOaep256):
      out.algorithm = Algorithm::kRsaOaep256;
      break;
    case static_cast<uint8_t>(Algorithm::kA256Kw):
      out.algorithm = Algorithm::kA256Kw;
      break;
    default:
      return PermissionDeniedError("{} names unknown algorithm {}", kWhat, bytes[1]);
  }
  const size_t version_size = bytes[2];
  if (bytes.size() < 3 + version_size) {
    return PermissionDeniedError("{} is truncated (key version)", kWhat);
  }
  out.key_version = std::string(AsText(bytes.subspan(3, version_size)));
  if (!ValidKeyVersion(out.key_version)) {
    return PermissionDeniedError("{} has a malformed key version", kWhat);
  }
  if (bytes.size() == 3 + version_size) {
    return PermissionDeniedError("{} is truncated (no wrapped key)", kWhat);
  }
  const auto wrapped = bytes.subspan(3 + version_size);
  out.wrapped.assign(wrapped.begin(), wrapped.end());
  return out;
}

}  // namespace azure_kv

namespace {

using azure_kv::Algorithm;
using azure_kv::Ciphertext;
using azure_kv::DecodeCiphertext;
using azure_kv::EncodeCiphertext;
using azure_kv::KeyOperationBody;
using azure_kv::KeyOperationPath;
using azure_kv::ParseKeyOperationResult;
using azure_kv::ParseTokenResponse;
using azure_kv::TokenCacheLifetime;
using azure_kv::TokenRequestBody;

constexpr std::string_view kManagedHsm = "managedhsm.azure.net";
// Constellation's VaultBaseURL values (internal/kms/uri/uri.go) and each cloud's Entra ID host.
struct Cloud {
  std::string_view vault_type;
  std::string_view login;
};
constexpr std::array<Cloud, 5> kClouds = {{
    {"vault.azure.net", "https://login.microsoftonline.com"},
    {"vault.azure.cn", "https://login.chinacloudapi.cn"},
    {"vault.usgovcloudapi.net", "https://login.microsoftonline.us"},
    {"vault.microsoftazure.de", "https://login.microsoftonline.de"},
    {kManagedHsm, "https://login.microsoftonline.com"},
}};

// Retries of a 429 or 5xx answer: kMaxAttempts in all, waiting Retry-After (at most
// kMaxRetryWait) or 100 ms, then 200 ms.
constexpr int kMaxAttempts = 3;
constexpr std::chrono::milliseconds kMaxRetryWait{2000};

bool AllOf(std::string_view s, bool (*ok)(char)) { return std::all_of(s.begin(), s.end(), ok); }
bool AlnumOrHyphen(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-'; }
bool HostChar(char c) { return AlnumOrHyphen(c) || c == '.'; }
bool IdChar(char c) { return HostChar(c) || c == '_'; }

bool ValidVaultName(std::string_view name) {
  // Key Vault and Managed HSM names: 3 to 24 of A-Z a-z 0-9 -, starting with a letter, ending
  // with a letter or digit, no "--".
  return name.size() >= 3 && name.size() <= 24 && AllOf(name, AlnumOrHyphen) &&
         std::isalpha(static_cast<unsigned char>(name.front())) && name.back() != '-' &&
         name.find("--") == std::string_view::npos;
}

bool Transient(long status) { return status == 429 || (status >= 500 && status <= 599); }

std::chrono::milliseconds RetryWait(const http::Response& response, int attempt) {
  const std::string header = response.Header("retry-after");
  int seconds = 0;
  auto [ptr, ec] = std::from_chars(header.data(), header.data() + header.size(), seconds);
  if (!header.empty() && ec == std::errc() && ptr == header.data() + header.size() &&
      seconds >= 0) {
    return std::min<std::chrono::milliseconds>(std::chrono::seconds(seconds), kMaxRetryWait);
  }
  return std::chrono::milliseconds(100 << attempt);
}

// VaultError reads Key Vault's {"error": {"code": ..., "message": ...}}.
void VaultError(const http::Response& response, std::string* code, std::string* message) {
  const auto json = nlohmann::json::parse(response.body, nullptr, false);
  if (!json.is_object()) return;
  const auto error = json.find("error");
  if (error == json.end() || !error->is_object()) return;
  if (auto it = error->find("code"); it != error->end() && it->is_string()) {
    *code = it->get<std::string>();
  }
  if (auto it = error->find("message"); it != error->end() && it->is_string()) {
    *message = it->get<std::string>();
  }
}

// TokenError reads an Entra ID error: "error" and the AADSTS numbers of "error_codes". The
// error_description is left out: it is long, and a message of ours should not carry text a
// server made up from our request.
std::string TokenError(const http::Response& response) {
  const auto json = nlohmann::json::parse(response.body, nullptr, false);
  if (!json.is_object()) return "";
  std::string out;
  if (auto it = json.find("error"); it != json.end() && it->is_string()) {
    out = Printable(it->get_ref<const std::string&>(), 64);
  }
  if (auto it = json.find("error_codes"); it != json.end() && it->is_array()) {
    int shown = 0;
    for (const auto& code : *it) {
      if (!code.is_number_integer() || ++shown > 4) continue;
      out += fmt::format("{}AADSTS{}", out.empty() ? "" : ", ", code.get<int64_t>());
    }
  }
  return out;
}

class AzureKeyVaultProvider final : public KekProvider {
 public:
  AzureKeyVaultProvider(AzureKeyVaultConfig config, http::Endpoint vault, http::Endpoint auth,
                        std::string scope, std::unique_ptr<http::Client> http)
      : config_(std::move(config)),
        algorithm_(config_.algorithm == "A256KW" ? Algorithm::kA256Kw : Algorithm::kRsaOaep256),
        vault_host_(config_.vault_name + "." + config_.vault_type),
        vault_(std::move(vault)),
        auth_(std::move(auth)),
        scope_(std::move(scope)),
        http_(std::move(http)) {}

  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    if (plaintext.empty() || plaintext.size() > 512) {
      return InvalidArgumentError("{}: can wrap 1 to 512 bytes, not {}", Describe(),
                                  plaintext.size());
    }
    const SecretBytes body = KeyOperationBody(
        config_.algorithm, algorithm_ == Algorithm::kA256Kw ? Pad(plaintext) : plaintext.Clone());
    ASSIGN_OR_RETURN(http::Response response,
                     Call("wrapkey", KeyOperationPath(config_.key_name, "", "wrapkey"), body));
    auto result = ParseKeyOperationResult(response.body, config_.key_name);
    if (!result.ok()) {
      return UnavailableError("{}: wrapkey: {}", Describe(), StatusMessage(result.status()));
    }
    const auto wrapped = result->value.Reveal(InsecureSecretAccess::Get());
    auto out = EncodeCiphertext(
        {algorithm_, result->key_version, std::vector<uint8_t>(wrapped.begin(), wrapped.end())});
    if (!out.ok()) {
      return UnavailableError("{}: wrapkey: {}", Describe(), StatusMessage(out.status()));
    }
    return out;
  }

  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    if (wrapped.empty() || wrapped.size() > kMaxWrappedSize) {
      return InvalidArgumentError("{}: wrapped key of {} bytes (1 to {} allowed)", Describe(),
                                  wrapped.size(), kMaxWrappedSize);
    }
    auto decoded = DecodeCiphertext(wrapped);
    if (!decoded.ok()) {
      return PermissionDeniedError("{}: {}", Describe(), StatusMessage(decoded.status()));
    }
    Ciphertext ciphertext = *std::move(decoded);
    if (ciphertext.algorithm != algorithm_) {
      return PermissionDeniedError("{}: the ciphertext was made with {}; this key uses {}",
                                   Describe(), AlgorithmName(ciphertext.algorithm),
                                   config_.algorithm);
    }
    const SecretBytes body = KeyOperationBody(
        config_.algorithm, SecretBytes(std::span<const uint8_t>(ciphertext.wrapped)));
    ASSIGN_OR_RETURN(
        http::Response response,
        Call("unwrapkey", KeyOperationPath(config_.key_name, ciphertext.key_version, "unwrapkey"),
             body, ciphertext.key_version));
    auto result = ParseKeyOperationResult(response.body, config_.key_name);
    SecureWipe(response.body);
    if (!result.ok()) {
      return UnavailableError("{}: unwrapkey: {}", Describe(), StatusMessage(result.status()));
    }
    if (!EqualsIgnoreCase(result->key_version, ciphertext.key_version)) {
      return UnavailableError("{}: unwrapkey of version {} answered for version {}", Describe(),
                              ciphertext.key_version, result->key_version);
    }
    if (algorithm_ == Algorithm::kA256Kw) return Unpad(result->value);
    return std::move(result->value);
  }

  std::string kek_id() const override {
    return fmt::format("azure-kv:{}/keys/{}", vault_host_, config_.key_name);
  }

  std::string Describe() const override {
    std::string out = fmt::format("Azure Key Vault key {} in {}", config_.key_name, vault_host_);
    if (!config_.endpoint.empty()) out += " at " + vault_.Url("");
    return out;
  }

 private:
  struct Token {
    SecretBytes value;
    uint64_t generation = 0;
  };

  static std::string_view AlgorithmName(Algorithm algorithm) {
    return algorithm == Algorithm::kA256Kw ? "A256KW" : "RSA-OAEP-256";
  }

  // Pad appends 0x80 0x00... up to a multiple of 8 bytes, at least 16 (ISO/IEC 7816-4
  // padding), so that RFC 3394 key wrap, which takes whole 64-bit blocks and at least two,
  // can wrap any plaintext and Unpad can find its end.
  static SecretBytes Pad(const SecretBytes& plaintext) {
    const auto in = plaintext.Reveal(InsecureSecretAccess::Get());
    SecretBytes padded(std::max<size_t>((in.size() / 8 + 1) * 8, 16));
    const auto bytes = padded.MutableReveal(InsecureSecretAccess::Get());
    std::copy(in.begin(), in.end(), bytes.begin());
    bytes[in.size()] = 0x80;
    return padded;
  }

  // Unpad removes Pad's padding. Key Vault authenticated the plaintext (RFC 3394's integrity
  // check), so this is no padding oracle; it still answers with the one generic refusal.
  absl::StatusOr<SecretBytes> Unpad(const SecretBytes& padded) const {
    const auto bytes = padded.Reveal(InsecureSecretAccess::Get());
    size_t end = bytes.size();
    while (end > 0 && bytes[end - 1] == 0) --end;
    if (end <= 1 || bytes[end - 1] != 0x80) {
      return PermissionDeniedError(
          "{}: unwrapkey refused the ciphertext (tampered, or made under another key)", Describe());
    }
    return SecretBytes(bytes.first(end - 1));
  }

  // Send performs `request`, repeating it after a 429 or 5xx answer (kMaxAttempts in all).
  absl::StatusOr<http::Response> Send(const http::Request& request) {
    for (int attempt = 0;; ++attempt) {
      auto response = http_->Send(request);
      if (!response.ok()) {
        return UnavailableError("{}: {}", Describe(), StatusMessage(response.status()));
      }
      if (!Transient(response->status) || attempt + 1 >= kMaxAttempts) return response;
      std::this_thread::sleep_for(RetryWait(*response, attempt));
    }
  }

  // GetToken returns the cached bearer token, or fetches one. token_mu_ is held during the
  // fetch, so concurrent callers wait for one fetch instead of each making their own.
  absl::StatusOr<Token> GetToken() {
    std::lock_guard<std::mutex> lock(token_mu_);
    if (!token_.empty() && std::chrono::steady_clock::now() < token_refresh_at_) {
      return Token{token_.Clone(), token_generation_};
    }
    const auto started = std::chrono::steady_clock::now();
    const SecretBytes body = TokenRequestBody(config_.client_id, config_.client_secret, scope_);
    http::Request request;
    request.method = "POST";
    request.url = auth_.Url(fmt::format("/{}/oauth2/v2.0/token", config_.tenant_id));
    request.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
    request.body = body.Reveal(InsecureSecretAccess::Get());
    ASSIGN_OR_RETURN(http::Response response, Send(request));
    if (response.status != 200) {
      const std::string what = TokenError(response);
      if (Transient(response.status)) {
        return UnavailableError("{}: the Entra ID token endpoint answered {}{}{}", Describe(),
                                response.status, what.empty() ? "" : " ", what);
      }
      return PermissionDeniedError(
          "{}: Entra ID refused the client credentials of client {} in tenant {} ({}{}{})",
          Describe(), config_.client_id, config_.tenant_id, response.status,
          what.empty() ? "" : " ", what);
    }
    auto token = ParseTokenResponse(response.body);
    SecureWipe(response.body);
    if (!token.ok()) return UnavailableError("{}: {}", Describe(), StatusMessage(token.status()));
    token_ = std::move(token->token);
    token_refresh_at_ = started + TokenCacheLifetime(token->expires_in);
    ++token_generation_;
    return Token{token_.Clone(), token_generation_};
  }

  // DropToken forgets the cached token after a 401, unless a newer one replaced it meanwhile.
  void DropToken(uint64_t generation) {
    std::lock_guard<std::mutex> lock(token_mu_);
    if (token_generation_ == generation) token_ = SecretBytes();
  }

  // Call sends one key operation; after a 401 it fetches a new token and tries once more.
  // Maps errors per byok.h (docs/byok-azure-kv.md, "Errors").
  absl::StatusOr<http::Response> Call(std::string_view operation, const std::string& path,
                                      const SecretBytes& body, std::string_view version = "") {
    const bool unwrap = operation == "unwrapkey";
    for (int auth_attempt = 0;; ++auth_attempt) {
      ASSIGN_OR_RETURN(Token token, GetToken());
      const auto value = token.value.Reveal(InsecureSecretAccess::Get());
      http::Request request;
      request.method = "POST";
      request.url = vault_.Url(path);
      std::string authorization;
      authorization.reserve(7 + value.size());
      authorization.append("Bearer ").append(AsText(value));
      request.headers = {{"Content-Type", "application/json"},
                         {"Authorization", std::move(authorization)}};
      request.body = body.Reveal(InsecureSecretAccess::Get());
      auto response = Send(request);
      SecureWipe(request.headers[1].second);
      if (!response.ok()) return response.status();
      if (response->status == 200) return response;
      if (response->status == 401 && auth_attempt == 0) {
        DropToken(token.generation);
        continue;
      }
      std::string code, message;
      VaultError(*response, &code, &message);
      if (unwrap) SecureWipe(response->body);
      const std::string status_text =
          fmt::format("{}{}{}", response->status, code.empty() ? "" : " ", Printable(code, 64));
      const std::string detail =
          message.empty() ? "" : fmt::format(": {}", Printable(message, 200));
      if (Transient(response->status)) {
        return UnavailableError("{}: {} failed ({}{})", Describe(), operation, status_text, detail);
      }
      if (response->status == 401 || response->status == 403) {
        return PermissionDeniedError("{}: {} refused ({}{})", Describe(), operation, status_text,
                                     detail);
      }
      if (unwrap) {
        if (response->status == 404) {
          return PermissionDeniedError(
              "{}: key version {} not found (deleted, or the ciphertext is not from this key) "
              "({})",
              Describe(), version, status_text);
        }
        // One message for every refused ciphertext: Key Vault's own text is left out.
        return PermissionDeniedError(
            "{}: unwrapkey refused the ciphertext (tampered, or made under another key) ({})",
            Describe(), status_text);
      }
      if (response->status == 404) {
        return FailedPreconditionError("{}: {} failed ({}{})", Describe(), operation, status_text,
                                       detail);
      }
      return InvalidArgumentError("{}: {} refused ({}{})", Describe(), operation, status_text,
                                  detail);
    }
  }

  const AzureKeyVaultConfig config_;
  const Algorithm algorithm_;
  const std::string vault_host_;
  const http::Endpoint vault_;
  const http::Endpoint auth_;
  const std::string scope_;
  const std::unique_ptr<http::Client> http_;

  // token_mu_ guards the three below and serializes token fetches (GetToken). std::mutex, as
  // elsewhere in Keywarden, so the guard is a comment rather than ABSL_GUARDED_BY.
  std::mutex token_mu_;
  SecretBytes token_;  // empty: none cached
  std::chrono::steady_clock::time_point token_refresh_at_;
  uint64_t token_generation_ = 0;
};

std::string Optional(const std::map<std::string, std::string>& params, const char* name) {
  auto it = params.find(name);
  return it == params.end() ? "" : it->second;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KekProvider>> NewAzureKeyVaultProvider(
    AzureKeyVaultConfig config, const RemoteOptions& options) {
  if (config.tenant_id.empty() || config.tenant_id.size() > 256 ||
      !AllOf(config.tenant_id, HostChar)) {
    return InvalidArgumentError("Azure Key Vault: bad tenant id {}", Printable(config.tenant_id));
  }
  if (config.client_id.empty() || config.client_id.size() > 128 ||
      !AllOf(config.client_id, IdChar)) {
    return InvalidArgumentError("Azure Key Vault: bad client id {}", Printable(config.client_id));
  }
  if (config.client_secret.empty() || config.client_secret.size() > 1024) {
    return InvalidArgumentError("Azure Key Vault: a client secret (1 to 1024 bytes) is required");
  }
  if (!ValidVaultName(config.vault_name)) {
    return InvalidArgumentError(
        "Azure Key Vault: bad vault name {} (3 to 24 of A-Z a-z 0-9 -, starting with a letter)",
        Printable(config.vault_name));
  }
  const auto cloud = std::find_if(kClouds.begin(), kClouds.end(), [&](const Cloud& c) {
    return c.vault_type == config.vault_type;
  });
  if (cloud == kClouds.end()) {
    std::string known;
    for (const Cloud& c : kClouds) {
      known += fmt::format("{}{}", known.empty() ? "" : ", ", c.vault_type);
    }
    return InvalidArgumentError("Azure Key Vault: unknown vault type {} (known: {})",
                                Printable(config.vault_type), known);
  }
  if (config.key_name.empty() || config.key_name.size() > 127 ||
      !AllOf(config.key_name, AlnumOrHyphen)) {
    return InvalidArgumentError("Azure Key Vault: bad key name {} (1 to 127 of A-Z a-z 0-9 -)",
                                Printable(config.key_name));
  }
  if (config.algorithm != "RSA-OAEP-256" && config.algorithm != "A256KW") {
    return InvalidArgumentError("Azure Key Vault: algorithm {} (RSA-OAEP-256 or A256KW)",
                                Printable(config.algorithm));
  }
  if (config.algorithm == "A256KW" && config.vault_type != kManagedHsm) {
    return InvalidArgumentError(
        "Azure Key Vault: A256KW needs an AES key, which only Managed HSM (vault type {}) has",
        kManagedHsm);
  }
  auto vault = http::ParseEndpoint(
      config.endpoint.empty() ? fmt::format("https://{}.{}", config.vault_name, config.vault_type)
                              : config.endpoint);
  if (!vault.ok()) {
    return InvalidArgumentError("Azure Key Vault endpoint=: {}", StatusMessage(vault.status()));
  }
  auto auth = http::ParseEndpoint(config.auth_endpoint.empty() ? std::string(cloud->login)
                                                               : config.auth_endpoint);
  if (!auth.ok()) {
    return InvalidArgumentError("Azure Key Vault authEndpoint=: {}", StatusMessage(auth.status()));
  }
  std::string scope = fmt::format("https://{}/.default", config.vault_type);
  // Key Vault and token responses are small; 64 KiB bounds them, and the reservation keeps an
  // unwrapkey response (a plaintext) from being copied by reallocation.
  ASSIGN_OR_RETURN(auto client, http::Client::New(options.timeout, 64 << 10, 64 << 10));
  return std::unique_ptr<KekProvider>(new AzureKeyVaultProvider(
      std::move(config), *std::move(vault), *std::move(auth), std::move(scope), std::move(client)));
}

absl::StatusOr<AzureKeyVaultConfig> AzureKeyVaultConfigFromParams(
    const std::map<std::string, std::string>& params) {
  RETURN_IF_ERROR(CheckUriParams(
      params, {"tenantID", "clientID", "clientSecret", "vaultName", "vaultType", "keyName"},
      {"algorithm", "endpoint", "authEndpoint"}, "kms://azure"));
  AzureKeyVaultConfig config;
  config.tenant_id = params.at("tenantID");
  config.client_id = params.at("clientID");
  config.client_secret = SecretBytes(AsBytes(params.at("clientSecret")));
  config.vault_name = params.at("vaultName");
  config.vault_type = params.at("vaultType");
  config.key_name = params.at("keyName");
  if (params.contains("algorithm")) config.algorithm = params.at("algorithm");
  config.endpoint = Optional(params, "endpoint");
  config.auth_endpoint = Optional(params, "authEndpoint");
  return config;
}

void RegisterAzureKeyVault() {
  RegisterKekProvider(
      "azure",
      [](const UriParams& params,
         const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<KekProvider>> {
        ASSIGN_OR_RETURN(AzureKeyVaultConfig config, AzureKeyVaultConfigFromParams(params));
        return NewAzureKeyVaultProvider(std::move(config), options);
      });
}

}  // namespace keywarden::byok
