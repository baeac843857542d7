// Moto test peer. See moto.h.
#include "tests/moto.h"

#include <chrono>
#include <cstdlib>
#include <ctime>
#include <nlohmann/json.hpp>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "src/byok/sigv4.h"

namespace keywarden::testing {
namespace {

// Between returns the text between the first `open` and the following `close`, or "".
std::string Between(const std::string& text, std::string_view open, std::string_view close) {
  const size_t a = text.find(open);
  if (a == std::string::npos) return "";
  const size_t b = text.find(close, a + open.size());
  if (b == std::string::npos) return "";
  return text.substr(a + open.size(), b - a - open.size());
}

std::string Form(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [k, v] : fields) {
    if (!out.empty()) out.push_back('&');
    out += byok::sigv4::UriEncode(k, false) + "=" + byok::sigv4::UriEncode(v, false);
  }
  return out;
}

}  // namespace

Moto::Moto() : dir_("kw-moto"), port_(ReservedPort::Reserve()) {}

Moto::~Moto() { Stop(); }

std::string Moto::endpoint() const { return "http://127.0.0.1:" + std::to_string(port()); }

std::string Moto::Log() const { return server_.Log(); }

void Moto::Stop() { server_.Kill(); }

::testing::AssertionResult Moto::Start() {
  if (port() == 0) return ::testing::AssertionFailure() << "no port reserved";
  if (server_.pid() > 0) return ::testing::AssertionFailure() << "moto already runs";
  // $MOTO_SERVER names the program; else moto_server is looked up in PATH.
  const char* env = std::getenv("MOTO_SERVER");
  const std::string program = env != nullptr && *env != '\0' ? env : "moto_server";
  BackgroundOptions options;
  options.log = dir_ / "moto.log";
  options.env_overrides = {{"INITIAL_NO_AUTH_ACTION_COUNT", "3"}};
  options.env_drop_prefixes = {"INITIAL_NO_AUTH_ACTION_COUNT=", "AWS_"};
  if (auto started =
          server_.Start({program, "-H", "127.0.0.1", "-p", std::to_string(port())}, options);
      !started) {
    return started << " (pip install 'moto[server]', or set MOTO_SERVER)";
  }
  // moto imports its backends lazily; it usually listens within a few seconds.
  if (auto up = WaitForPort(server_, port(), "moto_server", std::chrono::seconds(60)); !up) {
    return up;
  }

  // The three unauthenticated requests (signed with made-up credentials moto does not check
  // yet; the signature only tells moto which service is meant).
  constexpr std::string_view kBootKey = "AKIDBOOTSTRAPEXAMPLE";
  constexpr std::string_view kBootSecret = "bootstrap-secret-not-checked-by-moto-0000";
  const auto iam =
      [&](std::vector<std::pair<std::string, std::string>> fields) -> absl::StatusOr<Reply> {
    fields.emplace_back("Version", "2010-05-08");
    return Signed("iam", "POST", "/",
                  {{"content-type", "application/x-www-form-urlencoded; charset=utf-8"}},
                  Form(fields), kBootKey, kBootSecret);
  };
  auto user = iam({{"Action", "CreateUser"}, {"UserName", "keywarden"}});
  if (!user.ok() || user->status != 200) {
    return ::testing::AssertionFailure()
           << "IAM CreateUser: " << (user.ok() ? user->body : user.status().ToString());
  }
  auto key = iam({{"Action", "CreateAccessKey"}, {"UserName", "keywarden"}});
  if (!key.ok() || key->status != 200) {
    return ::testing::AssertionFailure()
           << "IAM CreateAccessKey: " << (key.ok() ? key->body : key.status().ToString());
  }
  access_key_id_ = Between(key->body, "<AccessKeyId>", "</AccessKeyId>");
  secret_access_key_ = Between(key->body, "<SecretAccessKey>", "</SecretAccessKey>");
  if (access_key_id_.empty() || secret_access_key_.empty()) {
    return ::testing::AssertionFailure() << "IAM CreateAccessKey: no key in " << key->body;
  }
  auto policy = iam(
      {{"Action", "PutUserPolicy"},
       {"UserName", "keywarden"},
       {"PolicyName", "allow-all"},
       {"PolicyDocument", R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*",)"
                          R"("Resource":"*"}]})"}});
  if (!policy.ok() || policy->status != 200) {
    return ::testing::AssertionFailure()
           << "IAM PutUserPolicy: " << (policy.ok() ? policy->body : policy.status().ToString());
  }
  return ::testing::AssertionSuccess();
}

absl::StatusOr<Moto::Reply> Moto::Signed(std::string_view service, std::string_view method,
                                         std::string_view path,
                                         std::vector<std::pair<std::string, std::string>> headers,
                                         const std::string& body, std::string_view access_key_id,
                                         std::string_view secret) {
  const auto body_bytes =
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size());
  byok::sigv4::Request request;
  request.method = std::string(method);
  request.path = std::string(path);
  request.headers = std::move(headers);
  request.headers.emplace_back("host", "127.0.0.1:" + std::to_string(port()));
  request.payload_hash = crypto::HexEncode(crypto::Sha256({body_bytes}));
  const SecretBytes secret_bytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()));
  const bool s3 = service == "s3";
  auto authorization = byok::sigv4::Sign(request, {std::string(access_key_id), &secret_bytes, ""},
                                         kRegion, service, {.s3 = s3}, std::time(nullptr));
  if (!authorization.ok()) return authorization.status();
  auto client = byok::http::Client::New(std::chrono::seconds(30));
  if (!client.ok()) return client.status();
  byok::http::Request http_request;
  http_request.method = std::string(method);
  http_request.url = endpoint() + std::string(path);
  http_request.headers = std::move(request.headers);
  http_request.headers.emplace_back("Authorization", *authorization);
  http_request.body = body_bytes;
  auto response = (*client)->Send(http_request);
  if (!response.ok()) return response.status();
  return Reply{response->status, response->body};
}

absl::StatusOr<std::string> Moto::CreateKmsKey() {
  auto reply = Signed(
      "kms", "POST", "/",
      {{"content-type", "application/x-amz-json-1.1"}, {"x-amz-target", "TrentService.CreateKey"}},
      R"({"Description":"keywarden test KEK"})", access_key_id_, secret_access_key_);
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) {
    return InternalError("KMS CreateKey: {} {}", reply->status, reply->body);
  }
  const auto json = nlohmann::json::parse(reply->body, nullptr, false);
  if (!json.is_object() || !json.contains("KeyMetadata") || !json["KeyMetadata"].is_object() ||
      !json["KeyMetadata"].value("KeyId", nlohmann::json()).is_string()) {
    return InternalError("KMS CreateKey: {}", reply->body);
  }
  return json["KeyMetadata"]["KeyId"].get<std::string>();
}

absl::Status Moto::CreateBucket(std::string_view bucket) {
  auto reply =
      Signed("s3", "PUT", "/" + std::string(bucket), {}, "", access_key_id_, secret_access_key_);
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) {
    return InternalError("S3 CreateBucket: {} {}", reply->status, reply->body);
  }
  return absl::OkStatus();
}

}  // namespace keywarden::testing
