// Google Cloud KMS KEK provider: cryptoKeys.encrypt / cryptoKeys.decrypt of the Cloud KMS REST
// API v1 with OAuth 2.0 access tokens from a service-account key (JWT bearer grant, RS256).
// References: Cloud KMS REST reference (projects.locations.keyRings.cryptoKeys.encrypt/decrypt,
// "Verifying end-to-end data integrity"); Google Identity, "Using OAuth 2.0 for Server to Server
// Applications"; RFC 7515 (JWS), RFC 7518 §3.3 (RS256), RFC 7523 §2.1 (JWT bearer grant),
// RFC 3720 §B.4 (CRC32C). docs/byok-gcp.md.
//
// Security: the RSA key is parsed once into an OpenSSL EVP_PKEY (its private parts cleared by
// OpenSSL on free); the key file, access tokens, assertions, request bodies holding plaintexts and
// responses holding plaintexts live in SecretBytes or are wiped after use. None of them is
// formatted into a status or Describe(). libcurl's copies of headers and its socket buffers, and
// nlohmann::json's parser buffer while a key file or response is parsed, are outside Keywarden's
// reach (as for the AWS provider). RSA signing is done with OpenSSL here rather than in
// src/crypto/ because this module owns its only use.
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "keywarden/byok/gcp.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"
#include "src/byok/http.h"

namespace keywarden::byok {
namespace gcp {
namespace {

constexpr std::string_view kDefaultTokenUri = "https://oauth2.googleapis.com/token";
constexpr size_t kMaxCredentialsSize = 64 << 10;

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string_view AsText(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// ReadCrc reads an Int64Value CRC field: proto3 JSON writes int64 as a decimal string; a JSON
// number is accepted too. nullopt when absent, malformed or above 2^32 - 1.
std::optional<uint32_t> ReadCrc(const nlohmann::json& json, const char* field) {
  const auto it = json.find(field);
  if (it == json.end()) return std::nullopt;
  uint64_t value = 0;
  if (it->is_string()) {
    const std::string& text = it->get_ref<const std::string&>();
    if (text.empty() || text.size() > 10) return std::nullopt;
    auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  } else if (it->is_number_unsigned()) {
    value = it->get<uint64_t>();
  } else {
    return std::nullopt;
  }
  if (value > 0xFFFFFFFFu) return std::nullopt;
  return static_cast<uint32_t>(value);
}

bool IsTrue(const nlohmann::json& json, const char* field) {
  const auto it = json.find(field);
  return it != json.end() && it->is_boolean() && it->get<bool>();
}

std::string StringField(const nlohmann::json& json, const char* field) {
  const auto it = json.find(field);
  return it != json.end() && it->is_string() ? it->get<std::string>() : "";
}

}  // namespace

// Security: bitwise and branch-free rather than table-driven, because it runs over DEK
// plaintexts and a table indexed by secret bytes leaks through the cache. Plaintexts are at most
// kMaxPlaintext bytes, so the cost (8 shift/xor steps per byte) does not matter.
uint32_t Crc32c(std::span<const uint8_t> data, uint32_t crc) {
  constexpr uint32_t kPolynomial = 0x82F63B78u;  // 0x1EDC6F41 bit-reversed (RFC 3720 §12.1)
  crc = ~crc;
  for (const uint8_t byte : data) {
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (kPolynomial & (0u - (crc & 1u)));
  }
  return ~crc;
}

std::string Base64UrlEncode(std::span<const uint8_t> bytes) {
  std::string text = crypto::Base64Encode(bytes);
  while (!text.empty() && text.back() == '=') text.pop_back();
  for (char& c : text) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  return text;
}

absl::StatusOr<std::vector<uint8_t>> Base64UrlDecode(std::string_view text) {
  std::string standard(text);
  for (char& c : standard) {
    if (c == '-') {
      c = '+';
    } else if (c == '_') {
      c = '/';
    } else if (c == '+' || c == '/') {
      return InvalidArgumentError("not base64url");
    }
  }
  if (standard.find('=') == std::string::npos) standard.append((4 - standard.size() % 4) % 4, '=');
  auto decoded = crypto::Base64Decode(standard);
  if (!decoded.ok()) return InvalidArgumentError("not base64url");
  return decoded;
}

absl::StatusOr<ServiceAccountKey> ParseServiceAccountKey(const SecretBytes& json_text) {
  const auto bytes = json_text.Reveal(InsecureSecretAccess::Get());
  nlohmann::json json = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, false);
  // Wipes the private key's copy in the parsed document whatever happens below.
  struct WipeKey {
    nlohmann::json& json;
    ~WipeKey() {
      if (json.is_object()) {
        if (auto it = json.find("private_key"); it != json.end() && it->is_string()) {
          SecureWipe(it->get_ref<std::string&>());
        }
      }
    }
  } wipe{json};
  if (!json.is_object()) {
    return InvalidArgumentError("GCP service-account key: not a JSON object");
  }
  if (StringField(json, "type") != "service_account") {
    return InvalidArgumentError(
        "GCP service-account key: \"type\" is not \"service_account\" (a key file made with "
        "`gcloud iam service-accounts keys create` is needed)");
  }
  ServiceAccountKey key;
  key.client_email = StringField(json, "client_email");
  key.private_key_id = StringField(json, "private_key_id");
  key.token_uri = StringField(json, "token_uri");
  if (key.client_email.empty() || key.client_email.size() > 256) {
    return InvalidArgumentError("GCP service-account key: no client_email");
  }
  if (key.private_key_id.size() > 256) {
    return InvalidArgumentError("GCP service-account key: private_key_id too long");
  }
  const auto pk = json.find("private_key");
  if (pk == json.end() || !pk->is_string() || pk->get_ref<const std::string&>().empty()) {
    return InvalidArgumentError("GCP service-account key: no private_key");
  }
  key.private_key_pem = SecretBytes(AsBytes(pk->get_ref<const std::string&>()));
  if (key.token_uri.empty()) key.token_uri = std::string(kDefaultTokenUri);
  auto endpoint = http::ParseEndpoint(key.token_uri);
  if (!endpoint.ok()) {
    return InvalidArgumentError("GCP service-account key: token_uri: {}",
                                StatusMessage(endpoint.status()));
  }
  return key;
}

namespace {

using PkeyPtr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;

// Refuses to prompt for a passphrase: service-account keys are not encrypted.
int NoPassphrase(char*, int, int, void*) { return -1; }

}  // namespace

absl::StatusOr<std::unique_ptr<RsaSigner>> RsaSigner::New(const SecretBytes& pem) {
  const auto bytes = pem.Reveal(InsecureSecretAccess::Get());
  if (bytes.empty() || bytes.size() > (64 << 10)) {
    return InvalidArgumentError("GCP service-account key: private_key is not a PEM RSA key");
  }
  // A read-only memory BIO: it reads the SecretBytes in place, without a copy.
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(
      BIO_new_mem_buf(bytes.data(), static_cast<int>(bytes.size())), &BIO_free);
  if (bio == nullptr) return InternalError("BIO_new_mem_buf failed");
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, &NoPassphrase, nullptr), &EVP_PKEY_free);
  ERR_clear_error();
  if (pkey == nullptr) {
    return InvalidArgumentError(
        "GCP service-account key: private_key is not an unencrypted PEM private key");
  }
  if (EVP_PKEY_get_base_id(pkey.get()) != EVP_PKEY_RSA) {
    return InvalidArgumentError("GCP service-account key: private_key is not an RSA key");
  }
  const int bits = EVP_PKEY_get_bits(pkey.get());
  if (bits < 2048 || bits > 8192) {
    return InvalidArgumentError("GCP service-account key: RSA key of {} bits (2048 to 8192)", bits);
  }
  // A damaged key file can still parse: check that n = p·q, that d and the CRT values fit e, and
  // that p and q are prime (RSA_check_key), rather than send signatures Google refuses.
  std::unique_ptr<EVP_PKEY_CTX, decltype(&EVP_PKEY_CTX_free)> check(
      EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr), &EVP_PKEY_CTX_free);
  if (check == nullptr || EVP_PKEY_check(check.get()) != 1) {
    ERR_clear_error();
    return InvalidArgumentError("GCP service-account key: private_key is not a consistent RSA key");
  }
  return std::unique_ptr<RsaSigner>(new RsaSigner(pkey.release()));
}

RsaSigner::~RsaSigner() { EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_)); }

absl::StatusOr<std::vector<uint8_t>> RsaSigner::SignRs256(std::span<const uint8_t> message) const {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (ctx == nullptr) return InternalError("EVP_MD_CTX_new failed");
  // RSA's default padding for EVP_DigestSign is PKCS #1 v1.5 (RSASSA-PKCS1-v1_5).
  size_t size = 0;
  if (EVP_DigestSignInit(ctx.get(), nullptr, EVP_sha256(), nullptr,
                         static_cast<EVP_PKEY*>(pkey_)) != 1 ||
      EVP_DigestSign(ctx.get(), nullptr, &size, message.data(), message.size()) != 1) {
    ERR_clear_error();
    return InternalError("RS256 signing failed");
  }
  std::vector<uint8_t> signature(size);
  if (EVP_DigestSign(ctx.get(), signature.data(), &size, message.data(), message.size()) != 1) {
    ERR_clear_error();
    return InternalError("RS256 signing failed");
  }
  signature.resize(size);
  return signature;
}

std::string JwtHeader(const ServiceAccountKey& key) {
  nlohmann::json header = {{"alg", "RS256"}, {"typ", "JWT"}};
  if (!key.private_key_id.empty()) header["kid"] = key.private_key_id;
  return header.dump();
}

std::string JwtClaims(const ServiceAccountKey& key, int64_t now_unix) {
  return nlohmann::json({{"iss", key.client_email},
                         {"scope", std::string(kScope)},
                         {"aud", key.token_uri},
                         {"iat", now_unix},
                         {"exp", now_unix + kTokenLifetimeSeconds}})
      .dump();
}

absl::StatusOr<std::string> MakeJwtAssertion(const ServiceAccountKey& key, const RsaSigner& signer,
                                             int64_t now_unix) {
  std::string signing_input = Base64UrlEncode(AsBytes(JwtHeader(key))) + "." +
                              Base64UrlEncode(AsBytes(JwtClaims(key, now_unix)));
  ASSIGN_OR_RETURN(std::vector<uint8_t> signature, signer.SignRs256(AsBytes(signing_input)));
  signing_input += ".";
  signing_input += Base64UrlEncode(signature);
  return signing_input;
}

std::string TokenRequestBody(std::string_view assertion) {
  // The assertion is base64url and '.', which need no form encoding.
  std::string body = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
  body.append(assertion);
  return body;
}

absl::StatusOr<AccessToken> ParseTokenResponse(std::string& body) {
  nlohmann::json json = nlohmann::json::parse(body, nullptr, false);
  SecureWipe(body);
  std::string* token_text = nullptr;
  if (json.is_object()) {
    if (auto it = json.find("access_token"); it != json.end() && it->is_string()) {
      token_text = &it->get_ref<std::string&>();
    }
  }
  struct WipeToken {
    std::string* text;
    ~WipeToken() {
      if (text != nullptr) SecureWipe(*text);
    }
  } wipe{token_text};
  if (token_text == nullptr || token_text->empty() || token_text->size() > 4096) {
    return UnavailableError("the token response has no access_token");
  }
  for (const char c : *token_text) {
    if (static_cast<unsigned char>(c) <= 0x20 || static_cast<unsigned char>(c) >= 0x7f) {
      return UnavailableError("the token response's access_token is not printable ASCII");
    }
  }
  std::string type = StringField(json, "token_type");
  std::transform(type.begin(), type.end(), type.begin(), [](char c) {
    return static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  });
  if (type != "bearer") {
    return UnavailableError("the token response's token_type is \"{}\", not Bearer",
                            Printable(type, 32));
  }
  AccessToken token;
  token.expires_in_seconds = kTokenLifetimeSeconds;
  if (auto it = json.find("expires_in"); it != json.end()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > 86400) {
      return UnavailableError("the token response's expires_in is not 1 to 86400 seconds");
    }
    token.expires_in_seconds = it->get<int64_t>();
  }
  token.token = SecretBytes(AsBytes(*token_text));
  return token;
}

std::string KeyName(const GcpKmsConfig& config) {
  return fmt::format("projects/{}/locations/{}/keyRings/{}/cryptoKeys/{}", config.project_id,
                     config.location, config.key_ring, config.key_name);
}

std::string KmsUrl(std::string_view endpoint, std::string_view key_name, std::string_view method) {
  return fmt::format("{}/v1/{}:{}", endpoint, key_name, method);
}

SecretBytes EncryptRequestBody(const SecretBytes& plaintext, std::string_view aad) {
  const SecretBytes b64 = crypto::Base64EncodeSecret(plaintext);
  const uint32_t plaintext_crc = Crc32c(plaintext.Reveal(InsecureSecretAccess::Get()));
  const std::string head = "{\"plaintext\":\"";
  const std::string tail = fmt::format(
      "\",\"additionalAuthenticatedData\":\"{}\",\"plaintextCrc32c\":\"{}\","
      "\"additionalAuthenticatedDataCrc32c\":\"{}\"}}",
      crypto::Base64Encode(AsBytes(aad)), plaintext_crc, Crc32c(AsBytes(aad)));
  SecretBytes body(head.size() + b64.size() + tail.size());
  auto out = body.MutableReveal(InsecureSecretAccess::Get());
  const auto text = b64.Reveal(InsecureSecretAccess::Get());
  std::copy(head.begin(), head.end(), out.begin());
  std::copy(text.begin(), text.end(), out.begin() + static_cast<ptrdiff_t>(head.size()));
  std::copy(tail.begin(), tail.end(),
            out.begin() + static_cast<ptrdiff_t>(head.size() + text.size()));
  return body;
}

std::string DecryptRequestBody(std::span<const uint8_t> ciphertext, std::string_view aad) {
  return nlohmann::json(
             {{"ciphertext", crypto::Base64Encode(ciphertext)},
              {"additionalAuthenticatedData", crypto::Base64Encode(AsBytes(aad))},
              {"ciphertextCrc32c", std::to_string(Crc32c(ciphertext))},
              {"additionalAuthenticatedDataCrc32c", std::to_string(Crc32c(AsBytes(aad)))}})
      .dump();
}

absl::StatusOr<std::vector<uint8_t>> ParseEncryptResponse(std::string_view body,
                                                          std::string_view key_name) {
  const nlohmann::json json = nlohmann::json::parse(body, nullptr, false);
  if (!json.is_object()) return UnavailableError("encrypt returned no JSON object");
  // "Check this field to verify that the intended resource was used for encryption."
  const std::string name = StringField(json, "name");
  const std::string prefix = std::string(key_name) + "/cryptoKeyVersions/";
  if (!name.starts_with(prefix) || name.size() == prefix.size() ||
      !std::all_of(name.begin() + static_cast<ptrdiff_t>(prefix.size()), name.end(),
                   [](char c) { return c >= '0' && c <= '9'; })) {
    return UnavailableError("encrypt used the key version \"{}\", not a version of {}",
                            Printable(name, 300), key_name);
  }
  // The flags say that KMS received our CRC32Cs and checked the plaintext and AAD with them.
  if (!IsTrue(json, "verifiedPlaintextCrc32c")) {
    return absl::DataLossError("encrypt did not verify the plaintext's CRC32C");
  }
  if (!IsTrue(json, "verifiedAdditionalAuthenticatedDataCrc32c")) {
    return absl::DataLossError("encrypt did not verify the additional authenticated data's CRC32C");
  }
  const std::string text = StringField(json, "ciphertext");
  auto ciphertext = crypto::Base64Decode(text);
  if (text.empty() || !ciphertext.ok()) {
    return UnavailableError("encrypt returned no base64 ciphertext");
  }
  if (ciphertext->empty() || ciphertext->size() > kMaxWrappedSize) {
    return UnavailableError("encrypt returned a {}-byte ciphertext (1 to {} allowed)",
                            ciphertext->size(), kMaxWrappedSize);
  }
  const std::optional<uint32_t> crc = ReadCrc(json, "ciphertextCrc32c");
  if (!crc.has_value()) return UnavailableError("encrypt returned no valid ciphertextCrc32c");
  if (*crc != Crc32c(*ciphertext)) {
    return absl::DataLossError("encrypt's ciphertext does not match its ciphertextCrc32c");
  }
  return ciphertext;
}

absl::StatusOr<SecretBytes> ParseDecryptResponse(std::string& body) {
  nlohmann::json json = nlohmann::json::parse(body, nullptr, false);
  SecureWipe(body);
  std::string* text = nullptr;
  if (json.is_object()) {
    if (auto it = json.find("plaintext"); it != json.end() && it->is_string()) {
      text = &it->get_ref<std::string&>();
    }
  }
  struct WipeText {
    std::string* text;
    ~WipeText() {
      if (text != nullptr) SecureWipe(*text);
    }
  } wipe{text};
  if (text == nullptr || text->empty()) return UnavailableError("decrypt returned no plaintext");
  auto plaintext = crypto::Base64DecodeSecret(*text);
  if (!plaintext.ok() || plaintext->empty()) {
    return UnavailableError("decrypt returned a malformed plaintext");
  }
  const std::optional<uint32_t> crc = ReadCrc(json, "plaintextCrc32c");
  if (!crc.has_value()) return UnavailableError("decrypt returned no valid plaintextCrc32c");
  if (*crc != Crc32c(plaintext->Reveal(InsecureSecretAccess::Get()))) {
    return absl::DataLossError("decrypt's plaintext does not match its plaintextCrc32c");
  }
  return plaintext;
}

absl::Status ErrorFromResponse(long http_status, std::string_view body, std::string_view method,
                               std::string_view what) {
  std::string status_name;
  std::string message;
  const auto json = nlohmann::json::parse(body, nullptr, false);
  if (json.is_object()) {
    if (auto it = json.find("error"); it != json.end() && it->is_object()) {
      status_name = StringField(*it, "status");
      message = StringField(*it, "message");
    }
  }
  const std::string text = fmt::format("{}: {} refused ({}{}{}{}{})", what, method, http_status,
                                       status_name.empty() ? "" : " ", Printable(status_name, 40),
                                       message.empty() ? "" : ": ", Printable(message, 300));
  if (http_status == 429 || http_status >= 500) return UnavailableError("{}", text);
  if (http_status == 401 || http_status == 403) return PermissionDeniedError("{}", text);
  if (http_status == 404 || status_name == "FAILED_PRECONDITION" || status_name == "NOT_FOUND") {
    return FailedPreconditionError("{}", text);
  }
  if (method == "decrypt") return PermissionDeniedError("{}", text);
  return InvalidArgumentError("{}", text);
}

}  // namespace gcp

namespace {

constexpr int kMaxAttempts = 3;
constexpr std::chrono::milliseconds kFirstBackoff{100};

// ScopedWipe wipes a string that held a credential or plaintext when it goes out of scope.
class ScopedWipe {
 public:
  explicit ScopedWipe(std::string& text) : text_(text) {}
  ~ScopedWipe() { SecureWipe(text_); }
  ScopedWipe(const ScopedWipe&) = delete;
  ScopedWipe& operator=(const ScopedWipe&) = delete;

 private:
  std::string& text_;
};

bool ValidName(std::string_view name, size_t max, std::string_view extra) {
  if (name.empty() || name.size() > max) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           extra.find(c) != std::string_view::npos;
  });
}

std::string Optional(const std::map<std::string, std::string>& params, const char* name) {
  auto it = params.find(name);
  return it == params.end() ? "" : it->second;
}

absl::StatusOr<SecretBytes> ReadCredentialsFile(const std::string& path) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return InvalidArgumentError("kms://gcp: cannot open credentialsPath {}: {}",
                                Printable(path, 200), std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{fd};
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    return InvalidArgumentError("kms://gcp: credentialsPath {} is not a regular file",
                                Printable(path, 200));
  }
  if (st.st_size <= 0 || static_cast<size_t>(st.st_size) > gcp::kMaxCredentialsSize) {
    return InvalidArgumentError("kms://gcp: credentialsPath {} has {} bytes (1 to {} allowed)",
                                Printable(path, 200), st.st_size, gcp::kMaxCredentialsSize);
  }
  SecretBytes contents(static_cast<size_t>(st.st_size));
  auto out = contents.MutableReveal(InsecureSecretAccess::Get());
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = read(fd, out.data() + done, out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return InvalidArgumentError("kms://gcp: cannot read credentialsPath {}",
                                  Printable(path, 200));
    }
    done += static_cast<size_t>(n);
  }
  return contents;
}

// InlineCredentials decodes credentials=: the key file's JSON as is (percent-encoded in the URI),
// or its base64 / base64url encoding (with or without padding).
absl::StatusOr<SecretBytes> InlineCredentials(const std::string& value) {
  const size_t first = value.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && value[first] == '{') return SecretBytes(gcp::AsBytes(value));
  // To the standard alphabet with padding, in locked memory, then decoded.
  SecretBytes standard(value.size() + 3);
  auto out = standard.MutableReveal(InsecureSecretAccess::Get());
  size_t n = 0;
  for (const char c : value) {
    out[n++] = static_cast<uint8_t>(c == '-' ? '+' : c == '_' ? '/' : c);
  }
  if (value.find('=') == std::string::npos) {
    while (n % 4 != 0) out[n++] = '=';
  }
  auto decoded = crypto::Base64DecodeSecret(gcp::AsText(out.first(n)));
  if (!decoded.ok() || decoded->empty() ||
      decoded->Reveal(InsecureSecretAccess::Get()).front() != '{') {
    return InvalidArgumentError(
        "kms://gcp: credentials= must hold the service-account key file's JSON, percent-encoded "
        "or in base64 (use credentialsPath= for a file)");
  }
  return decoded;
}

class GcpKmsProvider final : public KekProvider {
 public:
  GcpKmsProvider(std::string key_name, std::string endpoint, gcp::ServiceAccountKey account,
                 std::unique_ptr<gcp::RsaSigner> signer, std::unique_ptr<http::Client> http,
                 std::chrono::milliseconds timeout)
      : key_name_(std::move(key_name)),
        endpoint_(std::move(endpoint)),
        account_(std::move(account)),
        signer_(std::move(signer)),
        http_(std::move(http)),
        timeout_(timeout) {}

  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    if (plaintext.empty() || plaintext.size() > gcp::kMaxPlaintext) {
      return InvalidArgumentError("GCP Cloud KMS: plaintext of {} bytes (1 to {} allowed)",
                                  plaintext.size(), gcp::kMaxPlaintext);
    }
    const SecretBytes body = gcp::EncryptRequestBody(plaintext, gcp::kAad);
    return Call<std::vector<uint8_t>>(
        "encrypt", body.Reveal(InsecureSecretAccess::Get()),
        [this](std::string& response) -> absl::StatusOr<std::vector<uint8_t>> {
          return gcp::ParseEncryptResponse(response, key_name_);
        });
  }

  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    if (wrapped.empty() || wrapped.size() > kMaxWrappedSize) {
      return InvalidArgumentError("GCP Cloud KMS: wrapped key of {} bytes (1 to {} allowed)",
                                  wrapped.size(), kMaxWrappedSize);
    }
    const std::string body = gcp::DecryptRequestBody(wrapped, gcp::kAad);
    return Call<SecretBytes>("decrypt", gcp::AsBytes(body),
                             [](std::string& response) -> absl::StatusOr<SecretBytes> {
                               return gcp::ParseDecryptResponse(response);
                             });
  }

  std::string kek_id() const override { return "gcp-kms:" + key_name_; }

  std::string Describe() const override {
    return fmt::format("GCP Cloud KMS key {} at {} as {}", key_name_, endpoint_,
                       Printable(account_.client_email, 256));
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Call sends one KMS request, retrying (up to kMaxAttempts in all, while the time spent stays
  // under the timeout) on no response, HTTP 429/5xx and responses failing their CRC32C check
  // (which parse reports as DATA_LOSS), and once after a 401 with a fresh token.
  template <typename T>
  absl::StatusOr<T> Call(std::string_view method, std::span<const uint8_t> body,
                         const std::function<absl::StatusOr<T>(std::string&)>& parse) {
    const std::string url = gcp::KmsUrl(endpoint_, key_name_, method);
    const Clock::time_point start = Clock::now();
    absl::Status last = UnavailableError("{}: {} was not attempted", Describe(), method);
    bool refreshed = false;
    int attempts = 0;
    while (attempts < kMaxAttempts) {
      if (attempts > 0 && !Backoff(start, attempts)) break;
      ++attempts;
      uint64_t generation = 0;
      ASSIGN_OR_RETURN(std::string authorization, Authorization(&generation));
      http::Request request;
      request.method = "POST";
      request.url = url;
      request.headers = {{"Content-Type", "application/json"},
                         {"Authorization", std::move(authorization)}};
      request.body = body;
      absl::StatusOr<http::Response> response = http_->Send(request);
      SecureWipe(request.headers.back().second);
      if (!response.ok()) {
        last = UnavailableError("{}: {}", Describe(), StatusMessage(response.status()));
        continue;
      }
      ScopedWipe wipe_response(response->body);
      if (response->status == 200) {
        absl::StatusOr<T> result = parse(response->body);
        if (result.ok()) return result;
        if (result.status().code() == absl::StatusCode::kDataLoss) {
          last = UnavailableError("{}: {}", Describe(), StatusMessage(result.status()));
          continue;
        }
        return absl::Status(
            result.status().code(),
            internal::ToAbsl(fmt::format("{}: {}", Describe(), StatusMessage(result.status()))));
      }
      if (response->status == 401 && !refreshed) {
        // The token was revoked or expired early: fetch another once, without counting this.
        refreshed = true;
        --attempts;
        InvalidateToken(generation);
        continue;
      }
      absl::Status error =
          gcp::ErrorFromResponse(response->status, response->body, method, Describe());
      if (error.code() != absl::StatusCode::kUnavailable) return error;
      last = std::move(error);
    }
    return UnavailableError("{} (after {} attempts)", StatusMessage(last), attempts);
  }

  // Backoff sleeps before attempt `attempts` + 1 (100 ms, then 200 ms) and returns false when
  // that would take the call past its timeout.
  bool Backoff(Clock::time_point start, int attempts) const {
    const auto pause = kFirstBackoff * (1 << (attempts - 1));
    if (Clock::now() - start + pause >= timeout_) return false;
    std::this_thread::sleep_for(pause);
    return true;
  }

  // Authorization returns "Bearer TOKEN" (the caller wipes it) and the token's generation,
  // fetching a token first when there is none or it is about to expire. Concurrent callers wait
  // for one fetch (token_mu_ is held during it) and share its token.
  absl::StatusOr<std::string> Authorization(uint64_t* generation) {
    std::lock_guard<std::mutex> lock(token_mu_);
    if (token_.empty() || Clock::now() >= token_refresh_at_) {
      RETURN_IF_ERROR(FetchTokenLocked());
    }
    *generation = token_generation_;
    const auto token = token_.Reveal(InsecureSecretAccess::Get());
    std::string header;
    header.reserve(7 + token.size());
    header = "Bearer ";
    header.append(gcp::AsText(token));
    return header;
  }

  // InvalidateToken drops the cached token if it is still the one of `generation` (another
  // thread may have replaced it already).
  void InvalidateToken(uint64_t generation) {
    std::lock_guard<std::mutex> lock(token_mu_);
    if (generation == token_generation_) token_ = SecretBytes();
  }

  // FetchTokenLocked exchanges a fresh JWT assertion for an access token at token_uri (RFC 7523
  // §2.1), retrying like Call. Caller holds token_mu_.
  absl::Status FetchTokenLocked() {
    const Clock::time_point start = Clock::now();
    const int64_t now_unix = std::chrono::duration_cast<std::chrono::seconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    ASSIGN_OR_RETURN(std::string assertion, gcp::MakeJwtAssertion(account_, *signer_, now_unix));
    std::string body = gcp::TokenRequestBody(assertion);
    SecureWipe(assertion);
    ScopedWipe wipe_body(body);
    absl::Status last = UnavailableError("{}: no token request was attempted", Describe());
    int attempts = 0;
    while (attempts < kMaxAttempts) {
      if (attempts > 0 && !Backoff(start, attempts)) break;
      ++attempts;
      http::Request request;
      request.method = "POST";
      request.url = account_.token_uri;
      request.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
      request.body = gcp::AsBytes(body);
      absl::StatusOr<http::Response> response = http_->Send(request);
      if (!response.ok()) {
        last =
            UnavailableError("{}: token request: {}", Describe(), StatusMessage(response.status()));
        continue;
      }
      ScopedWipe wipe_response(response->body);
      if (response->status == 200) {
        auto token = gcp::ParseTokenResponse(response->body);
        if (!token.ok()) {
          return UnavailableError("{}: {} at {}", Describe(), StatusMessage(token.status()),
                                  Printable(account_.token_uri, 200));
        }
        // Refresh a little before expiry: a quarter of the lifetime, at most 5 minutes, early.
        const auto lifetime = std::chrono::seconds(token->expires_in_seconds);
        const auto margin = std::min<Clock::duration>(std::chrono::minutes(5), lifetime / 4);
        token_ = std::move(token->token);
        token_refresh_at_ = start + lifetime - margin;
        ++token_generation_;
        return absl::OkStatus();
      }
      // RFC 6749 §5.2 error response: {"error": "invalid_grant", "error_description": "..."}.
      std::string error;
      std::string description;
      const auto json = nlohmann::json::parse(response->body, nullptr, false);
      if (json.is_object()) {
        error = gcp::StringField(json, "error");
        description = gcp::StringField(json, "error_description");
      }
      const std::string text = fmt::format(
          "{}: the token endpoint {} refused the service account ({} {}{}{})", Describe(),
          Printable(account_.token_uri, 200), response->status, Printable(error, 60),
          description.empty() ? "" : ": ", Printable(description, 200));
      if (response->status == 429 || response->status >= 500) {
        last = UnavailableError("{}", text);
        continue;
      }
      return PermissionDeniedError("{}", text);
    }
    return UnavailableError("{} (after {} attempts)", StatusMessage(last), attempts);
  }

  const std::string key_name_;
  const std::string endpoint_;  // scheme://host[:port], no trailing slash
  const gcp::ServiceAccountKey account_;
  const std::unique_ptr<gcp::RsaSigner> signer_;
  const std::unique_ptr<http::Client> http_;
  const std::chrono::milliseconds timeout_;

  std::mutex token_mu_;
  SecretBytes token_;                   // guarded by token_mu_; empty = none
  Clock::time_point token_refresh_at_;  // guarded by token_mu_
  uint64_t token_generation_ = 0;       // guarded by token_mu_
};

}  // namespace

absl::StatusOr<std::unique_ptr<KekProvider>> NewGcpKmsProvider(GcpKmsConfig config,
                                                               const RemoteOptions& options) {
  // Resource names go into the URL path: only the characters Google allows in them.
  if (!ValidName(config.project_id, 100, "-.:")) {
    return InvalidArgumentError("GCP Cloud KMS: bad project id {}", Printable(config.project_id));
  }
  if (!ValidName(config.location, 64, "-")) {
    return InvalidArgumentError("GCP Cloud KMS: bad location {}", Printable(config.location));
  }
  constexpr std::string_view kUpperAndMore = "ABCDEFGHIJKLMNOPQRSTUVWXYZ_-";
  if (!ValidName(config.key_ring, 63, kUpperAndMore)) {
    return InvalidArgumentError("GCP Cloud KMS: bad key ring name {}", Printable(config.key_ring));
  }
  if (!ValidName(config.key_name, 63, kUpperAndMore)) {
    return InvalidArgumentError("GCP Cloud KMS: bad key name {}", Printable(config.key_name));
  }
  if (config.credentials_json.empty()) {
    return InvalidArgumentError("GCP Cloud KMS: a service-account key is required");
  }
  ASSIGN_OR_RETURN(gcp::ServiceAccountKey account,
                   gcp::ParseServiceAccountKey(config.credentials_json));
  ASSIGN_OR_RETURN(std::unique_ptr<gcp::RsaSigner> signer,
                   gcp::RsaSigner::New(account.private_key_pem));
  account.private_key_pem = SecretBytes();  // the signer holds the key from here on
  ASSIGN_OR_RETURN(
      http::Endpoint endpoint,
      http::ParseEndpoint(config.endpoint.empty() ? gcp::kDefaultEndpoint
                                                  : std::string_view(config.endpoint)));
  if (!endpoint.base_path.empty()) {
    return InvalidArgumentError("GCP Cloud KMS: the endpoint must not have a path");
  }
  // KMS and token responses are small; 64 KiB bounds them and the reservation avoids
  // reallocation copies of a decrypt response (which holds a plaintext).
  ASSIGN_OR_RETURN(auto client, http::Client::New(options.timeout, 64 << 10, 64 << 10));
  return std::unique_ptr<KekProvider>(new GcpKmsProvider(gcp::KeyName(config), endpoint.Url(""),
                                                         std::move(account), std::move(signer),
                                                         std::move(client), options.timeout));
}

absl::StatusOr<GcpKmsConfig> GcpKmsConfigFromParams(
    const std::map<std::string, std::string>& params) {
  RETURN_IF_ERROR(CheckUriParams(params, {"projectID", "location", "keyRing", "keyName"},
                                 {"credentialsPath", "credentials", "endpoint"}, "kms://gcp"));
  const std::string path = Optional(params, "credentialsPath");
  const auto inline_it = params.find("credentials");
  const bool has_inline = inline_it != params.end() && !inline_it->second.empty();
  if (path.empty() == !has_inline) {
    return InvalidArgumentError(
        "kms://gcp needs exactly one of credentialsPath= (the service-account key file) and "
        "credentials= (its contents)");
  }
  GcpKmsConfig config;
  config.project_id = params.at("projectID");
  config.location = params.at("location");
  config.key_ring = params.at("keyRing");
  config.key_name = params.at("keyName");
  config.endpoint = Optional(params, "endpoint");
  if (has_inline) {
    ASSIGN_OR_RETURN(config.credentials_json, InlineCredentials(inline_it->second));
  } else {
    ASSIGN_OR_RETURN(config.credentials_json, ReadCredentialsFile(path));
  }
  return config;
}

void RegisterGcp() {
  RegisterKekProvider(
      "gcp",
      [](const UriParams& params,
         const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<KekProvider>> {
        ASSIGN_OR_RETURN(GcpKmsConfig config, GcpKmsConfigFromParams(params));
        return NewGcpKmsProvider(std::move(config), options);
      });
}

}  // namespace keywarden::byok
