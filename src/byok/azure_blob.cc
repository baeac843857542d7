#include <algorithm>
#include <ctime>

#include "keywarden/byok/azure.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "src/byok/object_names.h"
#include "src/byok/xml.h"

namespace keywarden::byok {
namespace {

// The Blob service version this client speaks (SharedKey string-to-sign of 2015-02-21 and later:
// Content-Length is empty when zero).
constexpr char kApiVersion[] = "2021-08-06";
constexpr int kListPage = 500;

using Headers = std::vector<std::pair<std::string, std::string>>;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string HttpDate() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buffer[64];
  std::strftime(buffer, sizeof(buffer), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buffer;
}

// QueryEncode percent-encodes a query value (RFC 3986 unreserved kept).
std::string QueryEncode(std::string_view value) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : value) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

bool ValidName(std::string_view s, size_t max) {
  if (s.empty() || s.size() > max) return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

// ErrorCode returns the error code of an Azure answer (x-ms-error-code, else the body's <Code>).
std::string ErrorCode(const http::Response& response) {
  std::string code = response.Header("x-ms-error-code");
  if (!code.empty()) return code;
  return xml::ParseError(response.body).code;
}

class AzureBlobDekStore final : public DekStore {
 public:
  AzureBlobDekStore(AzureBlobConfig config, http::Endpoint endpoint,
                    std::unique_ptr<http::Client> client)
      : config_(std::move(config)), endpoint_(std::move(endpoint)), client_(std::move(client)) {}

  absl::StatusOr<std::optional<StoredDek>> Get(std::string_view id) override {
    ASSIGN_OR_RETURN(std::string path, BlobPath(id));
    ASSIGN_OR_RETURN(http::Response response, Send("GET", path, {}, {}, {}));
    if (response.status == 404) return std::nullopt;
    if (response.status != 200) return Failure("Get Blob", response);
    return StoredDek{std::vector<uint8_t>(response.body.begin(), response.body.end()),
                     response.Header("etag")};
  }

  absl::StatusOr<StoredDek> CreateIfAbsent(std::string_view id,
                                           std::span<const uint8_t> blob) override {
    ASSIGN_OR_RETURN(std::string path, BlobPath(id));
    ASSIGN_OR_RETURN(
        http::Response response,
        Send("PUT", path, {}, {{"If-None-Match", "*"}, {"x-ms-blob-type", "BlockBlob"}}, blob));
    if (response.status == 201) {
      return StoredDek{std::vector<uint8_t>(blob.begin(), blob.end()), response.Header("etag")};
    }
    // Someone stored one first (409 BlobAlreadyExists; some versions answer 412): take theirs.
    if (response.status == 409 || response.status == 412) {
      ASSIGN_OR_RETURN(std::optional<StoredDek> existing, Get(id));
      if (existing) return *std::move(existing);
      return UnavailableError("{}: the blob for \"{}\" exists and vanished again", Describe(),
                              Printable(id));
    }
    return Failure("Put Blob", response);
  }

  absl::Status ReplaceIf(std::string_view id, std::string_view version,
                         std::span<const uint8_t> blob) override {
    ASSIGN_OR_RETURN(std::string path, BlobPath(id));
    if (version.empty()) return InvalidArgumentError("an Azure DEK version is its ETag");
    ASSIGN_OR_RETURN(
        http::Response response,
        Send("PUT", path, {}, {{"If-Match", std::string(version)}, {"x-ms-blob-type", "BlockBlob"}},
             blob));
    if (response.status == 201) return absl::OkStatus();
    if (response.status == 404) {
      return NotFoundError("{}: no DEK stored for \"{}\"", Describe(), Printable(id));
    }
    if (response.status == 412) {
      // If-Match on a missing blob also fails the condition: say which case this is.
      ASSIGN_OR_RETURN(std::optional<StoredDek> current, Get(id));
      if (!current) return NotFoundError("{}: no DEK stored for \"{}\"", Describe(), Printable(id));
      return MakeStatus(absl::StatusCode::kAborted,
                        "{}: the DEK for \"{}\" changed since it was read", Describe(),
                        Printable(id));
    }
    return Failure("Put Blob (If-Match)", response).status();
  }

  absl::Status List(const std::function<absl::Status(std::string_view id)>& visit) override {
    const std::string name_prefix = config_.prefix + "key-";
    std::string marker;
    for (;;) {
      Headers query{{"comp", "list"},
                    {"maxresults", std::to_string(kListPage)},
                    {"prefix", name_prefix},
                    {"restype", "container"}};
      if (!marker.empty()) query.emplace_back("marker", marker);
      ASSIGN_OR_RETURN(http::Response response, Send("GET", ContainerPath(), query, {}, {}));
      if (response.status != 200) return Failure("List Blobs", response).status();
      ASSIGN_OR_RETURN(xml::AzureListPage page, xml::ParseAzureListPage(response.body));
      for (const std::string& name : page.names) {
        if (name.compare(0, name_prefix.size(), name_prefix) != 0) continue;
        std::optional<std::string> id = DecodeObjectId(name.substr(name_prefix.size()));
        if (!id) continue;  // not a name this store writes
        RETURN_IF_ERROR(visit(*id));
      }
      if (page.next_marker.empty()) return absl::OkStatus();
      marker = page.next_marker;
    }
  }

  std::string Describe() const override {
    return "azure://" + config_.account + "/" + config_.container + "/" + config_.prefix;
  }

  absl::Status CreateContainer() {
    ASSIGN_OR_RETURN(http::Response response,
                     Send("PUT", ContainerPath(), {{"restype", "container"}}, {}, {}));
    if (response.status == 201 || response.status == 409) return absl::OkStatus();
    return Failure("Create Container", response).status();
  }

 private:
  std::string ContainerPath() const { return endpoint_.base_path + "/" + config_.container; }

  absl::StatusOr<std::string> BlobPath(std::string_view id) const {
    if (id.empty() || id.size() > 1024) {
      return InvalidArgumentError("a DEK id is 1 to 1024 bytes, not {}", id.size());
    }
    const std::string name = config_.prefix + "key-" + EncodeObjectId(id);
    if (name.size() > 1024) {
      return InvalidArgumentError("DEK id \"{}\" makes a blob name over Azure's 1024 characters",
                                  Printable(id));
    }
    return ContainerPath() + "/" + name;
  }

  absl::StatusOr<http::Response> Send(const std::string& method, const std::string& path,
                                      Headers query, Headers headers,
                                      std::span<const uint8_t> body) {
    headers.emplace_back("x-ms-date", HttpDate());
    headers.emplace_back("x-ms-version", kApiVersion);
    if (method == "PUT") {
      headers.emplace_back("Content-Length", std::to_string(body.size()));
      // Always explicit (and so signed): libcurl would otherwise add its form content type.
      headers.emplace_back("Content-Type", "application/octet-stream");
    }
    ASSIGN_OR_RETURN(std::string signature, AzureSharedKeySignature(config_.key, config_.account,
                                                                    method, path, query, headers));
    headers.emplace_back("Authorization", "SharedKey " + config_.account + ":" + signature);
    std::sort(query.begin(), query.end());
    std::string path_and_query = path;
    for (size_t i = 0; i < query.size(); ++i) {
      path_and_query += (i == 0 ? "?" : "&") + query[i].first + "=" + QueryEncode(query[i].second);
    }
    http::Request request;
    request.method = method;
    // base_path is already part of `path`.
    http::Endpoint root = endpoint_;
    root.base_path.clear();
    request.url = root.Url(path_and_query);
    request.headers = std::move(headers);
    request.body = body;
    return client_->Send(request);
  }

  absl::StatusOr<StoredDek> Failure(std::string_view operation, const http::Response& response) {
    const std::string code = ErrorCode(response);
    const std::string what =
        fmt::format("{}: {} answered HTTP {} {}", Describe(), operation, response.status, code);
    if (response.status == 403 || response.status == 401) return PermissionDeniedError("{}", what);
    if (response.status >= 500) return UnavailableError("{}", what);
    if (response.status == 404) return NotFoundError("{} (does the container exist?)", what);
    return MakeStatus(absl::StatusCode::kFailedPrecondition, "{}", what);
  }

  const AzureBlobConfig config_;
  const http::Endpoint endpoint_;
  const std::unique_ptr<http::Client> client_;
};

absl::StatusOr<std::unique_ptr<AzureBlobDekStore>> MakeStore(AzureBlobConfig config,
                                                             const RemoteOptions& options) {
  if (!ValidName(config.account, 24) && config.account != "devstoreaccount1") {
    return InvalidArgumentError("storage://azure: account must be 3-24 lower-case letters/digits");
  }
  if (!ValidName(config.container, 63) || config.container.size() < 3) {
    return InvalidArgumentError(
        "storage://azure: container must be 3-63 lower-case letters, digits and '-'");
  }
  if (config.key.empty()) return InvalidArgumentError("storage://azure: the account key is empty");
  if (!config.prefix.empty() && config.prefix.back() != '/') config.prefix.push_back('/');
  const std::string url = config.endpoint.empty()
                              ? "https://" + config.account + ".blob.core.windows.net"
                              : config.endpoint;
  ASSIGN_OR_RETURN(http::Endpoint endpoint, http::ParseEndpoint(url));
  ASSIGN_OR_RETURN(std::unique_ptr<http::Client> client, http::Client::New(options.timeout));
  return std::make_unique<AzureBlobDekStore>(std::move(config), std::move(endpoint),
                                             std::move(client));
}

}  // namespace

absl::StatusOr<std::string> AzureSharedKeySignature(const SecretBytes& key,
                                                    std::string_view account,
                                                    std::string_view method, std::string_view path,
                                                    const Headers& query, const Headers& headers) {
  auto header = [&headers](std::string_view name) -> std::string {
    for (const auto& [k, v] : headers) {
      if (Lower(k) == name) return v;
    }
    return "";
  };
  std::string content_length = header("content-length");
  if (content_length == "0") content_length.clear();
  // VERB, Content-Encoding, Content-Language, Content-Length, Content-MD5, Content-Type, Date,
  // If-Modified-Since, If-Match, If-None-Match, If-Unmodified-Since, Range.
  std::string to_sign = std::string(method) + "\n" + header("content-encoding") + "\n" +
                        header("content-language") + "\n" + content_length + "\n" +
                        header("content-md5") + "\n" + header("content-type") + "\n" +
                        header("date") + "\n" + header("if-modified-since") + "\n" +
                        header("if-match") + "\n" + header("if-none-match") + "\n" +
                        header("if-unmodified-since") + "\n" + header("range") + "\n";
  // Canonicalized headers: x-ms-*, lower-case names, sorted, "name:value\n".
  std::vector<std::pair<std::string, std::string>> ms;
  for (const auto& [k, v] : headers) {
    const std::string name = Lower(k);
    if (name.rfind("x-ms-", 0) == 0) ms.emplace_back(name, v);
  }
  std::sort(ms.begin(), ms.end());
  for (const auto& [k, v] : ms) to_sign += k + ":" + v + "\n";
  // Canonicalized resource: "/" account path, then "\nname:value" per query parameter
  // (lower-case names, sorted; repeated names joined with ',').
  to_sign += "/" + std::string(account) + std::string(path);
  std::vector<std::pair<std::string, std::string>> params;
  for (const auto& [k, v] : query) params.emplace_back(Lower(k), v);
  std::sort(params.begin(), params.end());
  for (size_t i = 0; i < params.size(); ++i) {
    if (i > 0 && params[i].first == params[i - 1].first) {
      to_sign += "," + params[i].second;
    } else {
      to_sign += "\n" + params[i].first + ":" + params[i].second;
    }
  }
  ASSIGN_OR_RETURN(auto mac, crypto::HmacSha256::New(key));
  ASSIGN_OR_RETURN(
      auto tag, mac->Compute({reinterpret_cast<const uint8_t*>(to_sign.data()), to_sign.size()}));
  return crypto::Base64Encode(tag);
}

absl::StatusOr<std::unique_ptr<DekStore>> NewAzureBlobDekStore(AzureBlobConfig config,
                                                               const RemoteOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<AzureBlobDekStore> store, MakeStore(std::move(config), options));
  return std::unique_ptr<DekStore>(std::move(store));
}

absl::Status CreateAzureContainer(const AzureBlobConfig& config, const RemoteOptions& options) {
  AzureBlobConfig copy{config.account, config.container, config.key.Clone(), config.endpoint,
                       config.prefix};
  ASSIGN_OR_RETURN(std::unique_ptr<AzureBlobDekStore> store, MakeStore(std::move(copy), options));
  return store->CreateContainer();
}

void RegisterAzure() {
  RegisterDekStore("azure",
                   [](const UriParams& params,
                      const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<DekStore>> {
                     RETURN_IF_ERROR(CheckUriParams(params, {"account", "container", "key"},
                                                    {"endpoint", "prefix"}, "storage://azure"));
                     AzureBlobConfig config;
                     config.account = params.at("account");
                     config.container = params.at("container");
                     auto key = crypto::Base64DecodeSecret(params.at("key"));
                     if (!key.ok())
                       return InvalidArgumentError("storage://azure: key is not base64");
                     config.key = std::move(*key);
                     if (auto it = params.find("endpoint"); it != params.end())
                       config.endpoint = it->second;
                     if (auto it = params.find("prefix"); it != params.end())
                       config.prefix = it->second;
                     return NewAzureBlobDekStore(std::move(config), options);
                   });
}

}  // namespace keywarden::byok
