// AWS KMS KEK provider: the KMS JSON API (Encrypt / Decrypt) over HTTPS with SigV4.
// API reference: https://docs.aws.amazon.com/kms/latest/APIReference/ (Encrypt, Decrypt,
// "Common Errors"). docs/byok-aws.md.
#include <ctime>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "keywarden/byok/aws.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "src/byok/sigv4.h"

namespace keywarden::byok {
namespace {

// The encryption context every Encrypt and Decrypt carries. KMS binds it into the ciphertext
// (as AAD), so blobs other applications made under the same KMS key do not unwrap here, and
// ours do not unwrap without it. The DEK id is bound inside the plaintext (WrapDek).
constexpr std::string_view kContextKey = "keywarden";
constexpr std::string_view kContextValue = "wrapped-dek-v1";
// KMS's limit for Encrypt's plaintext.
constexpr size_t kMaxKmsPlaintext = 4096;

bool ValidRegion(std::string_view region) {
  if (region.empty() || region.size() > 64) return false;
  for (char c : region) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// ErrorType returns the short error name of a KMS error response: the JSON "__type"
// ("com.amazonaws.kms#AccessDeniedException" → "AccessDeniedException"), the x-amzn-ErrorType
// header, or the <Code> of an XML error (moto's signature errors).
std::string ErrorType(const http::Response& response, std::string* message) {
  std::string type;
  const auto json = nlohmann::json::parse(response.body, nullptr, /*allow_exceptions=*/false);
  if (json.is_object()) {
    if (auto it = json.find("__type"); it != json.end() && it->is_string()) {
      type = it->get<std::string>();
    }
    for (const char* key : {"message", "Message"}) {
      if (auto it = json.find(key); it != json.end() && it->is_string()) {
        *message = it->get<std::string>();
      }
    }
  }
  if (type.empty()) type = response.Header("x-amzn-errortype");
  if (type.empty()) {
    const size_t open = response.body.find("<Code>");
    const size_t close = response.body.find("</Code>");
    if (open != std::string::npos && close != std::string::npos && close > open) {
      type = response.body.substr(open + 6, close - open - 6);
    }
    const size_t mopen = response.body.find("<Message>");
    const size_t mclose = response.body.find("</Message>");
    if (mopen != std::string::npos && mclose != std::string::npos && mclose > mopen) {
      *message = response.body.substr(mopen + 9, mclose - mopen - 9);
    }
  }
  if (const size_t hash = type.rfind('#'); hash != std::string::npos) type.erase(0, hash + 1);
  if (const size_t colon = type.find(':'); colon != std::string::npos) type.erase(colon);
  return type;
}

class AwsKmsProvider final : public KekProvider {
 public:
  AwsKmsProvider(AwsKmsConfig config, http::Endpoint endpoint, std::unique_ptr<http::Client> http)
      : config_(std::move(config)), endpoint_(std::move(endpoint)), http_(std::move(http)) {}

  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    if (plaintext.empty() || plaintext.size() > kMaxKmsPlaintext) {
      return InvalidArgumentError("AWS KMS: plaintext of {} bytes (1 to {} allowed)",
                                  plaintext.size(), kMaxKmsPlaintext);
    }
    // The body holds the plaintext in base64; it is built in a buffer reserved up front (no
    // reallocation copies) and wiped after the call.
    const SecretBytes b64 = crypto::Base64EncodeSecret(plaintext);
    const std::string head =
        nlohmann::json({{"KeyId", config_.key_id}, {"EncryptionContext", Context()}}).dump();
    std::string body;
    body.reserve(head.size() + b64.size() + 32);
    body.append(head, 0, head.size() - 1);  // without the closing '}'
    body += ",\"Plaintext\":\"";
    const auto text = b64.Reveal(InsecureSecretAccess::Get());
    body.append(reinterpret_cast<const char*>(text.data()), text.size());
    body += "\"}";
    auto response = Call("TrentService.Encrypt", body, /*unwrap=*/false);
    SecureWipe(body);
    if (!response.ok()) return response.status();
    const auto json = nlohmann::json::parse(response->body, nullptr, false);
    if (!json.is_object() || !json.contains("CiphertextBlob") ||
        !json["CiphertextBlob"].is_string()) {
      return UnavailableError("{}: Encrypt returned no CiphertextBlob", Describe());
    }
    ASSIGN_OR_RETURN(auto wrapped,
                     crypto::Base64Decode(json["CiphertextBlob"].get_ref<const std::string&>()));
    if (wrapped.empty() || wrapped.size() > kMaxWrappedSize) {
      return UnavailableError("{}: Encrypt returned a {}-byte ciphertext", Describe(),
                              wrapped.size());
    }
    return wrapped;
  }

  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    if (wrapped.empty() || wrapped.size() > kMaxWrappedSize) {
      return InvalidArgumentError("AWS KMS: wrapped key of {} bytes (1 to {} allowed)",
                                  wrapped.size(), kMaxWrappedSize);
    }
    const std::string body = nlohmann::json({{"KeyId", config_.key_id},
                                             {"CiphertextBlob", crypto::Base64Encode(wrapped)},
                                             {"EncryptionContext", Context()}})
                                 .dump();
    auto response = Call("TrentService.Decrypt", body, /*unwrap=*/true);
    if (!response.ok()) return response.status();
    // The response holds the plaintext in base64: parse, decode into locked memory, wipe.
    absl::StatusOr<SecretBytes> plaintext =
        UnavailableError("{}: Decrypt returned no Plaintext", Describe());
    {
      auto json = nlohmann::json::parse(response->body, nullptr, false);
      SecureWipe(response->body);
      if (json.is_object() && json.contains("Plaintext") && json["Plaintext"].is_string()) {
        std::string& text = json["Plaintext"].get_ref<std::string&>();
        plaintext = crypto::Base64DecodeSecret(text);
        SecureWipe(text);
      }
    }
    if (!plaintext.ok()) {
      return UnavailableError("{}: Decrypt returned a malformed Plaintext", Describe());
    }
    return plaintext;
  }

  std::string kek_id() const override { return "aws-kms:" + config_.key_id; }

  std::string Describe() const override {
    return fmt::format("AWS KMS key {} in {} at {}", Printable(config_.key_id, 256), config_.region,
                       endpoint_.Url(""));
  }

 private:
  static nlohmann::json Context() { return {{std::string(kContextKey), kContextValue}}; }

  // Call sends one signed KMS JSON request and maps errors (KMS API reference, "Common Errors"
  // and each operation's "Errors").
  absl::StatusOr<http::Response> Call(std::string_view target, const std::string& body,
                                      bool unwrap) {
    sigv4::Request request;
    request.method = "POST";
    request.path = "/";
    request.headers = {{"host", endpoint_.HostHeader()},
                       {"content-type", "application/x-amz-json-1.1"},
                       {"x-amz-target", std::string(target)}};
    request.payload_hash = crypto::HexEncode(crypto::Sha256({AsBytes(body)}));
    const sigv4::Credentials credentials{config_.credentials.access_key_id,
                                         &config_.credentials.secret_access_key,
                                         config_.credentials.session_token};
    ASSIGN_OR_RETURN(std::string authorization, sigv4::Sign(request, credentials, config_.region,
                                                            "kms", {}, std::time(nullptr)));
    http::Request http_request;
    http_request.method = "POST";
    http_request.url = endpoint_.Url("/");
    http_request.headers = std::move(request.headers);
    http_request.headers.emplace_back("Authorization", std::move(authorization));
    http_request.body = AsBytes(body);
    ASSIGN_OR_RETURN(http::Response response, http_->Send(http_request));
    if (response.status == 200) return response;

    std::string message;
    const std::string type = ErrorType(response, &message);
    const std::string what = fmt::format(
        "{}: {} refused ({} {}{}{})", Describe(), target.substr(target.find('.') + 1),
        response.status, Printable(type, 80), message.empty() ? "" : ": ", Printable(message, 200));
    static const std::set<std::string, std::less<>> kRefused = {
        "AccessDeniedException", "InvalidCiphertextException", "IncorrectKeyException",
        "InvalidKeyUsageException"};
    static const std::set<std::string, std::less<>> kAuth = {
        "UnrecognizedClientException", "InvalidSignatureException",
        "SignatureDoesNotMatch",       "InvalidClientTokenId",
        "IncompleteSignature",         "MissingAuthenticationToken",
        "ExpiredTokenException",       "AccessDenied"};
    static const std::set<std::string, std::less<>> kUnusableKey = {
        "NotFoundException", "DisabledException", "KMSInvalidStateException"};
    static const std::set<std::string, std::less<>> kTransient = {
        "ThrottlingException", "KeyUnavailableException", "DependencyTimeoutException",
        "KMSInternalException", "LimitExceededException"};
    if (response.status >= 500 || kTransient.contains(type)) {
      return UnavailableError("{}", what);
    }
    if (kAuth.contains(type) || response.status == 401 || response.status == 403) {
      return PermissionDeniedError("{}", what);
    }
    if (kRefused.contains(type)) {
      // One message for every refused unwrap (no oracle beyond KMS's own error name).
      return PermissionDeniedError("{}", what);
    }
    if (kUnusableKey.contains(type)) return FailedPreconditionError("{}", what);
    if (unwrap) return PermissionDeniedError("{}", what);
    return InvalidArgumentError("{}", what);
  }

  const AwsKmsConfig config_;
  const http::Endpoint endpoint_;
  const std::unique_ptr<http::Client> http_;
};

std::string Optional(const std::map<std::string, std::string>& params, const char* name) {
  auto it = params.find(name);
  return it == params.end() ? "" : it->second;
}

}  // namespace

absl::StatusOr<std::unique_ptr<KekProvider>> NewAwsKmsProvider(AwsKmsConfig config,
                                                               const RemoteOptions& options) {
  if (config.key_id.empty() || config.key_id.size() > 2048) {
    return InvalidArgumentError("AWS KMS: a key id is required");
  }
  if (!ValidRegion(config.region)) {
    return InvalidArgumentError("AWS KMS: bad region {}", Printable(config.region));
  }
  if (config.credentials.access_key_id.empty() || config.credentials.secret_access_key.empty()) {
    return InvalidArgumentError("AWS KMS: an access key id and secret access key are required");
  }
  const std::string url = config.endpoint.empty()
                              ? fmt::format("https://kms.{}.amazonaws.com", config.region)
                              : config.endpoint;
  ASSIGN_OR_RETURN(http::Endpoint endpoint, http::ParseEndpoint(url));
  if (!endpoint.base_path.empty()) {
    return InvalidArgumentError("AWS KMS: the endpoint must not have a path");
  }
  // KMS responses are small; 64 KiB bounds them and the reservation avoids reallocations of
  // a Decrypt response (which holds a plaintext).
  ASSIGN_OR_RETURN(auto client, http::Client::New(options.timeout, 64 << 10, 64 << 10));
  return std::unique_ptr<KekProvider>(
      new AwsKmsProvider(std::move(config), std::move(endpoint), std::move(client)));
}

absl::StatusOr<AwsKmsConfig> AwsKmsConfigFromParams(
    const std::map<std::string, std::string>& params) {
  RETURN_IF_ERROR(CheckUriParams(params, {"keyID", "region", "accessKeyID", "accessKey"},
                                 {"sessionToken", "endpoint"}, "kms://aws"));
  AwsKmsConfig config;
  config.key_id = params.at("keyID");
  config.region = params.at("region");
  config.credentials.access_key_id = params.at("accessKeyID");
  config.credentials.secret_access_key = SecretBytes(AsBytes(params.at("accessKey")));
  config.credentials.session_token = Optional(params, "sessionToken");
  config.endpoint = Optional(params, "endpoint");
  return config;
}

absl::StatusOr<S3Config> S3ConfigFromParams(const std::map<std::string, std::string>& params) {
  RETURN_IF_ERROR(CheckUriParams(params, {"bucket", "region", "accessKeyID", "accessKey"},
                                 {"sessionToken", "endpoint", "prefix"}, "storage://aws"));
  S3Config config;
  config.bucket = params.at("bucket");
  config.region = params.at("region");
  config.credentials.access_key_id = params.at("accessKeyID");
  config.credentials.secret_access_key = SecretBytes(AsBytes(params.at("accessKey")));
  config.credentials.session_token = Optional(params, "sessionToken");
  config.endpoint = Optional(params, "endpoint");
  if (params.contains("prefix")) config.prefix = params.at("prefix");
  return config;
}

void RegisterAws() {
  RegisterKekProvider(
      "aws",
      [](const UriParams& params,
         const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<KekProvider>> {
        ASSIGN_OR_RETURN(AwsKmsConfig config, AwsKmsConfigFromParams(params));
        return NewAwsKmsProvider(std::move(config), options);
      });
  RegisterDekStore("aws",
                   [](const UriParams& params,
                      const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<DekStore>> {
                     ASSIGN_OR_RETURN(S3Config config, S3ConfigFromParams(params));
                     return NewS3DekStore(std::move(config), options);
                   });
}

}  // namespace keywarden::byok
