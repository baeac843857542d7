// S3 DEK store: one object per DEK, conditional writes decide races. S3 API reference:
// PutObject (If-None-Match, If-Match; "Conditional requests"), GetObject, ListObjectsV2,
// "Error responses". docs/byok-aws.md.
#include <algorithm>
#include <ctime>
#include <mutex>
#include <optional>

#include "keywarden/byok/aws.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "src/byok/object_names.h"
#include "src/byok/sigv4.h"
#include "src/byok/xml.h"

namespace keywarden::byok {
namespace {

// S3's limit on an object key's length in bytes.
constexpr size_t kMaxObjectKey = 1024;
// A stored blob is a WrappedDek: small. Anything larger is not ours.
constexpr size_t kMaxBlob = 64 << 10;
// How often CreateIfAbsent retries when the object vanished between its 412 and its GET, or S3
// reported a conflicting concurrent conditional write (409).
constexpr int kCreateAttempts = 5;

bool ValidBucket(std::string_view bucket) {
  if (bucket.size() < 3 || bucket.size() > 222) return false;  // 222: GCS's limit with dots
  for (char c : bucket) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_')) {
      return false;
    }
  }
  return true;
}

bool ValidRegion(std::string_view region) {
  if (region.empty() || region.size() > 64) return false;
  for (char c : region) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

// ErrorCode returns an S3 XML error's <Code> and, through `message`, its <Message>.
std::string ErrorCode(const http::Response& response, std::string* message) {
  xml::ErrorFields fields = xml::ParseError(response.body);
  *message = std::move(fields.message);
  return fields.code;
}

class S3DekStore final : public DekStore {
 public:
  S3DekStore(S3Config config, http::Endpoint endpoint, bool virtual_host, bool gcs,
             std::unique_ptr<http::Client> http)
      : config_(std::move(config)),
        endpoint_(std::move(endpoint)),
        virtual_host_(virtual_host),
        gcs_(gcs),
        http_(std::move(http)) {}

  absl::StatusOr<std::optional<StoredDek>> Get(std::string_view id) override {
    ASSIGN_OR_RETURN(std::string key, ObjectKey(id));
    ASSIGN_OR_RETURN(http::Response response, Call("GET", ObjectPath(key), {}, {}, {}));
    if (response.status == 404) {
      std::string message;
      const std::string code = ErrorCode(response, &message);
      if (code == "NoSuchBucket") return Failed(response, "GetObject", Printable(id));
      return std::nullopt;
    }
    if (response.status != 200) return Failed(response, "GetObject", Printable(id));
    StoredDek dek;
    dek.blob.assign(response.body.begin(), response.body.end());
    dek.version = Version(response);
    if (dek.version.empty()) {
      return UnavailableError("{}: GetObject for {} returned no ETag", Describe(), Printable(id));
    }
    return dek;
  }

  absl::StatusOr<StoredDek> CreateIfAbsent(std::string_view id,
                                           std::span<const uint8_t> blob) override {
    ASSIGN_OR_RETURN(std::string key, ObjectKey(id));
    if (blob.empty() || blob.size() > kMaxBlob) {
      return InvalidArgumentError("{}: blob of {} bytes", Describe(), blob.size());
    }
    for (int attempt = 0; attempt < kCreateAttempts; ++attempt) {
      std::vector<std::pair<std::string, std::string>> conditions;
      if (gcs_) {
        conditions.emplace_back("x-goog-if-generation-match", "0");
      } else {
        conditions.emplace_back("If-None-Match", "*");
      }
      ASSIGN_OR_RETURN(http::Response response,
                       Call("PUT", ObjectPath(key), {}, std::move(conditions), blob));
      if (response.status == 200) {
        const std::string version = Version(response);
        if (version.empty()) {
          return UnavailableError("{}: PutObject for {} returned no ETag", Describe(),
                                  Printable(id));
        }
        return StoredDek{std::vector<uint8_t>(blob.begin(), blob.end()), version};
      }
      if (response.status != 412 && response.status != 409) {
        return Failed(response, "PutObject (If-None-Match)", Printable(id));
      }
      // 412: another writer stored one first; take theirs. 409: a concurrent conditional write
      // is in flight; look, and try again if nothing is there yet.
      ASSIGN_OR_RETURN(std::optional<StoredDek> theirs, Get(id));
      if (theirs.has_value()) return *std::move(theirs);
    }
    return AbortedError(id);
  }

  absl::Status ReplaceIf(std::string_view id, std::string_view version,
                         std::span<const uint8_t> blob) override {
    ASSIGN_OR_RETURN(std::string key, ObjectKey(id));
    if (blob.empty() || blob.size() > kMaxBlob) {
      return InvalidArgumentError("{}: blob of {} bytes", Describe(), blob.size());
    }
    if (version.empty()) return InvalidArgumentError("{}: empty version", Describe());
    std::vector<std::pair<std::string, std::string>> conditions;
    conditions.emplace_back(gcs_ ? "x-goog-if-generation-match" : "If-Match", std::string(version));
    ASSIGN_OR_RETURN(http::Response response,
                     Call("PUT", ObjectPath(key), {}, std::move(conditions), blob));
    if (response.status == 200) return absl::OkStatus();
    if (response.status == 412 || response.status == 409) {
      return MakeStatus(absl::StatusCode::kAborted,
                        "{}: the DEK of {} changed since version {} was read", Describe(),
                        Printable(id), Printable(version));
    }
    if (response.status == 404) {
      return NotFoundError("{}: no DEK for {}", Describe(), Printable(id));
    }
    return Failed(response, "PutObject (If-Match)", Printable(id));
  }

  absl::Status List(const std::function<absl::Status(std::string_view id)>& visit) override {
    const std::string key_prefix = config_.prefix + "key-";
    std::vector<std::string> ids;
    std::string token;
    do {
      std::vector<std::pair<std::string, std::string>> query = {
          {"list-type", "2"},
          {"prefix", key_prefix},
          {"max-keys", std::to_string(config_.list_page_size)}};
      if (!token.empty()) query.emplace_back("continuation-token", token);
      ASSIGN_OR_RETURN(http::Response response, Call("GET", BucketPath(), query, {}, {}));
      if (response.status != 200) return Failed(response, "ListObjectsV2", "");
      ASSIGN_OR_RETURN(xml::S3ListPage page, xml::ParseS3ListPage(response.body));
      for (const std::string& object_key : page.keys) {
        if (!object_key.starts_with(key_prefix)) continue;
        const std::string_view encoded = std::string_view(object_key).substr(key_prefix.size());
        // Only objects this store named: the canonical encoding of a non-empty id.
        std::optional<std::string> id = DecodeObjectId(encoded);
        if (id.has_value()) ids.push_back(*std::move(id));
      }
      if (page.truncated && page.next_token.empty()) {
        return UnavailableError("{}: truncated listing without a continuation token", Describe());
      }
      if (page.truncated && page.next_token == token) {
        return UnavailableError("{}: listing repeats its continuation token", Describe());
      }
      token = page.truncated ? page.next_token : "";
    } while (!token.empty());
    // S3 lists in the byte order of the encoded names, which is not the ids' order.
    std::sort(ids.begin(), ids.end());
    for (const std::string& id : ids) RETURN_IF_ERROR(visit(id));
    return absl::OkStatus();
  }

  std::string Describe() const override {
    return fmt::format("S3 bucket {} ({}) prefix {} at {}", config_.bucket, config_.region,
                       Printable(config_.prefix, 128), endpoint_.Url(""));
  }

 private:
  absl::StatusOr<std::string> ObjectKey(std::string_view id) const {
    if (id.empty()) return InvalidArgumentError("{}: empty id", Describe());
    std::string key = config_.prefix + "key-" + EncodeObjectId(id);
    if (key.size() > kMaxObjectKey) {
      return InvalidArgumentError("{}: id {} makes an object key over {} bytes", Describe(),
                                  Printable(id), kMaxObjectKey);
    }
    return key;
  }

  std::string BucketPath() const { return virtual_host_ ? "/" : "/" + config_.bucket; }

  std::string ObjectPath(std::string_view key) const {
    const std::string encoded = sigv4::UriEncode(key, true);
    return virtual_host_ ? "/" + encoded : "/" + config_.bucket + "/" + encoded;
  }

  std::string Version(const http::Response& response) const {
    if (gcs_) {
      if (std::string generation = response.Header("x-goog-generation"); !generation.empty()) {
        return generation;
      }
    }
    return response.Header("etag");
  }

  absl::Status AbortedError(std::string_view id) const {
    return MakeStatus(absl::StatusCode::kAborted,
                      "{}: creating the DEK of {} kept conflicting with other writers", Describe(),
                      Printable(id));
  }

  absl::Status Failed(const http::Response& response, std::string_view operation,
                      std::string_view what) const {
    std::string message;
    const std::string code = ErrorCode(response, &message);
    const std::string text = fmt::format(
        "{}: {}{}{} failed ({} {}{}{})", Describe(), operation, what.empty() ? "" : " ", what,
        response.status, Printable(code, 80), message.empty() ? "" : ": ", Printable(message, 200));
    if (response.status >= 500 || code == "SlowDown" || code == "RequestTimeout") {
      return UnavailableError("{}", text);
    }
    if (response.status == 401 || response.status == 403) return PermissionDeniedError("{}", text);
    if (code == "NoSuchBucket" || response.status == 301 || response.status == 307) {
      return FailedPreconditionError("{}", text);
    }
    return InternalError("{}", text);
  }

  absl::StatusOr<http::Response> Call(
      const char* method, std::string path, std::vector<std::pair<std::string, std::string>> query,
      std::vector<std::pair<std::string, std::string>> extra_headers,
      std::span<const uint8_t> body) {
    sigv4::Request request;
    request.method = method;
    request.path = std::move(path);
    request.query = std::move(query);
    request.headers.emplace_back("host", Host());
    for (auto& h : extra_headers) request.headers.push_back(std::move(h));
    if (std::string_view(method) == "PUT") {
      request.headers.emplace_back("content-type", "application/octet-stream");
    }
    request.payload_hash = crypto::HexEncode(crypto::Sha256({body}));
    const sigv4::Credentials credentials{config_.credentials.access_key_id,
                                         &config_.credentials.secret_access_key,
                                         config_.credentials.session_token};
    ASSIGN_OR_RETURN(
        std::string authorization,
        sigv4::Sign(request, credentials, config_.region, "s3", {.s3 = true}, std::time(nullptr)));
    http::Request http_request;
    http_request.method = method;
    std::string path_and_query = request.path;
    if (!request.query.empty()) {
      path_and_query += "?" + sigv4::CanonicalQueryString(request.query);
    }
    http_request.url = virtual_host_ ? endpoint_.scheme + "://" + Host() + path_and_query
                                     : endpoint_.Url(path_and_query);
    http_request.headers = std::move(request.headers);
    http_request.headers.emplace_back("Authorization", std::move(authorization));
    http_request.body = body;
    return http_->Send(http_request);
  }

  std::string Host() const {
    return virtual_host_ ? config_.bucket + "." + endpoint_.HostHeader() : endpoint_.HostHeader();
  }

  const S3Config config_;
  const http::Endpoint endpoint_;
  const bool virtual_host_;
  const bool gcs_;
  const std::unique_ptr<http::Client> http_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DekStore>> NewS3DekStore(S3Config config,
                                                        const RemoteOptions& options) {
  if (!ValidBucket(config.bucket)) {
    return InvalidArgumentError("S3: bad bucket name {}", Printable(config.bucket));
  }
  if (!ValidRegion(config.region)) {
    return InvalidArgumentError("S3: bad region {}", Printable(config.region));
  }
  if (config.credentials.access_key_id.empty() || config.credentials.secret_access_key.empty()) {
    return InvalidArgumentError("S3: an access key id and secret access key are required");
  }
  if (config.list_page_size < 1 || config.list_page_size > 1000) {
    return InvalidArgumentError("S3: list page size {} (1 to 1000)", config.list_page_size);
  }
  if (config.prefix.size() > 512) return InvalidArgumentError("S3: prefix over 512 bytes");
  const bool default_endpoint = config.endpoint.empty();
  const std::string url = default_endpoint
                              ? fmt::format("https://s3.{}.amazonaws.com", config.region)
                              : config.endpoint;
  ASSIGN_OR_RETURN(http::Endpoint endpoint, http::ParseEndpoint(url));
  // Virtual-hosted style for AWS itself, unless the bucket name has a dot (its TLS certificate
  // would not match); path-style for any endpoint given explicitly.
  const bool virtual_host = default_endpoint && config.bucket.find('.') == std::string::npos;
  if (virtual_host && config.bucket.find('_') != std::string::npos) {
    return InvalidArgumentError("S3: bad bucket name {}", Printable(config.bucket));
  }
  const bool gcs = endpoint.host == "storage.googleapis.com";
  ASSIGN_OR_RETURN(auto client, http::Client::New(options.timeout, 16 << 20, 16 << 10));
  return std::unique_ptr<DekStore>(
      new S3DekStore(std::move(config), std::move(endpoint), virtual_host, gcs, std::move(client)));
}

}  // namespace keywarden::byok
