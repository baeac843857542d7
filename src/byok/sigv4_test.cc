// SigV4 against the AWS Signature Version 4 test suite (shared vectors) and the worked examples
// of the AWS documentation (tests/data/sigv4_vectors.json); URI encoding, path normalization,
// endpoint and URI-parameter checks.
#include "src/byok/sigv4.h"

#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ctime>
#include <fstream>
#include <iomanip>
#include <nlohmann/json.hpp>
#include <sstream>

#include "keywarden/byok/aws.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "src/byok/http.h"
#include "tests/subprocess.h"
#include "tests/vectors.h"

namespace keywarden::byok::sigv4 {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

nlohmann::json LoadLocalVectors() {
  const std::filesystem::path path =
      std::filesystem::path(KEYWARDEN_SOURCE_DIR) / "tests/data/sigv4_vectors.json";
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  return nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
}

std::string ReadSuiteFile(const std::filesystem::path& path) {
  const auto text = keywarden::testing::ReadFile(path);
  EXPECT_TRUE(text.has_value()) << "missing " << path;
  return text.value_or("");
}

SecretBytes Secret(std::string_view s) {
  return SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

std::string Sha256Hex(std::string_view s) {
  return crypto::HexEncode(crypto::Sha256(
      {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size())}));
}

Request MakeRequest(std::string method, std::string path,
                    std::vector<std::pair<std::string, std::string>> headers) {
  Request request;
  request.method = std::move(method);
  request.path = std::move(path);
  request.headers = std::move(headers);
  return request;
}

std::time_t ParseAmzDate(const std::string& amz_date) {
  std::tm tm{};
  std::istringstream in(amz_date);
  in >> std::get_time(&tm, "%Y%m%dT%H%M%SZ");
  return timegm(&tm);
}

// ParseSuiteRequest reads a test-suite .req file: "METHOD PATH[?QUERY] HTTP/1.1", header lines
// "Name:value" (a line that starts with white space continues the previous header with another
// value, which the suite's canonical form joins with ','), an empty line, then the body.
Request ParseSuiteRequest(const std::string& text, std::string* body) {
  Request request;
  const size_t head_end = text.find("\n\n");
  const std::string head = text.substr(0, head_end);
  *body = head_end == std::string::npos ? "" : text.substr(head_end + 2);
  std::istringstream lines(head);
  std::string line;
  std::getline(lines, line);
  const size_t sp = line.find(' ');
  request.method = line.substr(0, sp);
  std::string target = line.substr(sp + 1, line.rfind(" HTTP/") - sp - 1);
  const size_t q = target.find('?');
  request.path = target.substr(0, q);
  if (q != std::string::npos) {
    std::string query = target.substr(q + 1);
    size_t start = 0;
    while (start <= query.size()) {
      size_t amp = query.find('&', start);
      if (amp == std::string::npos) amp = query.size();
      const std::string pair = query.substr(start, amp - start);
      if (!pair.empty()) {
        const size_t eq = pair.find('=');
        request.query.emplace_back(pair.substr(0, eq),
                                   eq == std::string::npos ? "" : pair.substr(eq + 1));
      }
      start = amp + 1;
    }
  }
  std::string last_name;
  while (std::getline(lines, line)) {
    if (!line.empty() && (line[0] == ' ' || line[0] == '\t')) {
      request.headers.emplace_back(last_name, line);
      continue;
    }
    const size_t colon = line.find(':');
    last_name = line.substr(0, colon);
    request.headers.emplace_back(last_name, line.substr(colon + 1));
  }
  request.payload_hash = Sha256Hex(*body);
  return request;
}

TEST(SigV4Test, AwsTestSuite) {
  const nlohmann::json vectors = LoadLocalVectors();
  ASSERT_TRUE(vectors.is_object());
  const auto& suite = vectors["suite"];
  const std::filesystem::path dir =
      keywarden::testing::VectorsDir() / suite["dir"].get<std::string>();
  const SecretBytes secret = Secret(suite["secret_access_key"].get<std::string>());
  const std::string access_key = suite["access_key_id"].get<std::string>();
  int ran = 0;
  for (const auto& case_path : suite["cases"]) {
    const std::filesystem::path base = dir / case_path.get<std::string>();
    const std::string name = base.filename().string();
    SCOPED_TRACE(name);
    std::string body;
    Request request = ParseSuiteRequest(ReadSuiteFile(base / (name + ".req")), &body);
    std::string amz_date;
    for (const auto& [n, v] : request.headers) {
      if (n == "X-Amz-Date") amz_date = v;
    }
    ASSERT_EQ(amz_date.size(), 16u);
    std::string signed_headers;
    const std::string canonical = CanonicalRequest(request, {}, &signed_headers);
    EXPECT_EQ(canonical, ReadSuiteFile(base / (name + ".creq")));
    const Scope scope{amz_date.substr(0, 8), suite["region"].get<std::string>(),
                      suite["service"].get<std::string>()};
    const std::string sts = StringToSign(amz_date, scope, canonical);
    EXPECT_EQ(sts, ReadSuiteFile(base / (name + ".sts")));
    auto key = SigningKey(secret, scope);
    ASSERT_TRUE(key.ok()) << key.status();
    auto signature = Signature(*key, sts);
    ASSERT_TRUE(signature.ok()) << signature.status();
    EXPECT_EQ(fmt::format("AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
                          access_key, scope.ToString(), signed_headers, *signature),
              ReadSuiteFile(base / (name + ".authz")));
    ++ran;
  }
  EXPECT_EQ(ran, suite["expected_case_count"].get<int>());
  EXPECT_TRUE(suite["skipped"].empty());
}

TEST(SigV4Test, DocumentationExamples) {
  const nlohmann::json vectors = LoadLocalVectors();
  ASSERT_TRUE(vectors.is_object());
  int ran = 0;
  for (const auto& ex : vectors["examples"]) {
    SCOPED_TRACE(ex["name"].get<std::string>());
    Request request;
    request.method = ex["method"].get<std::string>();
    request.path = ex["path"].get<std::string>();
    for (const auto& q : ex["query"])
      request.query.emplace_back(q[0].get<std::string>(), q[1].get<std::string>());
    for (const auto& h : ex["headers"])
      request.headers.emplace_back(h[0].get<std::string>(), h[1].get<std::string>());
    request.payload_hash = Sha256Hex(ex["body"].get<std::string>());
    if (ex.contains("payload_sha256")) {
      EXPECT_EQ(request.payload_hash, ex["payload_sha256"]);
    }
    const SecretBytes secret = Secret(ex["secret_access_key"].get<std::string>());
    const Options options{.s3 = ex["s3"].get<bool>()};
    const std::string amz_date = ex["amz_date"].get<std::string>();
    auto authorization = Sign(request, {ex["access_key_id"].get<std::string>(), &secret, ""},
                              ex["region"].get<std::string>(), ex["service"].get<std::string>(),
                              options, ParseAmzDate(amz_date));
    ASSERT_TRUE(authorization.ok()) << authorization.status();
    const std::string canonical = CanonicalRequest(request, options);
    if (ex.contains("canonical_request")) {
      EXPECT_EQ(canonical, ex["canonical_request"]);
    }
    if (ex.contains("canonical_request_sha256")) {
      EXPECT_EQ(Sha256Hex(canonical), ex["canonical_request_sha256"]);
    }
    if (ex.contains("signing_key")) {
      auto key = SigningKey(secret, {amz_date.substr(0, 8), ex["region"].get<std::string>(),
                                     ex["service"].get<std::string>()});
      ASSERT_TRUE(key.ok());
      EXPECT_EQ(crypto::HexEncode(key->Reveal(InsecureSecretAccess::Get())), ex["signing_key"]);
    }
    EXPECT_EQ(
        *authorization,
        fmt::format("AWS4-HMAC-SHA256 Credential={}/{}/{}/{}/aws4_request, "
                    "SignedHeaders={}, Signature={}",
                    ex["access_key_id"].get<std::string>(), amz_date.substr(0, 8),
                    ex["region"].get<std::string>(), ex["service"].get<std::string>(),
                    ex["signed_headers"].get<std::string>(), ex["signature"].get<std::string>()));
    ++ran;
  }
  EXPECT_EQ(ran, 4);
}

TEST(SigV4Test, WrongSecretGivesAnotherSignature) {
  Request a = MakeRequest("GET", "/", {{"host", "example.com"}});
  Request b = a;
  const SecretBytes s1 = Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
  const SecretBytes s2 = Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ");
  auto x = Sign(a, {"AKID", &s1, ""}, "us-east-1", "kms", {}, 1440938160);
  auto y = Sign(b, {"AKID", &s2, ""}, "us-east-1", "kms", {}, 1440938160);
  ASSERT_TRUE(x.ok() && y.ok());
  EXPECT_NE(*x, *y);
  EXPECT_THAT(*x, Not(HasSubstr("wJalr")));
}

TEST(SigV4Test, RefusesUnusableInput) {
  const SecretBytes shorty = Secret("short");
  Request request = MakeRequest("GET", "/", {{"host", "example.com"}});
  EXPECT_EQ(Sign(request, {"AKID", &shorty, ""}, "us-east-1", "s3", {}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const SecretBytes secret = Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
  Request no_host = MakeRequest("GET", "/", {});
  EXPECT_EQ(Sign(no_host, {"AKID", &secret, ""}, "us-east-1", "s3", {}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Sign(request, {"", &secret, ""}, "us-east-1", "s3", {}, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SigV4Test, SessionTokenIsSigned) {
  const SecretBytes secret = Secret("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
  Request request = MakeRequest("POST", "/", {{"host", "example.com"}});
  auto auth = Sign(request, {"AKID", &secret, "TOKEN"}, "us-east-1", "kms", {}, 0);
  ASSERT_TRUE(auth.ok());
  EXPECT_THAT(*auth, HasSubstr("SignedHeaders=host;x-amz-date;x-amz-security-token,"));
}

TEST(SigV4Test, S3PathIsSignedAsSent) {
  Request request = MakeRequest("GET", "/bucket/a//b/../key-%2520x", {{"host", "h"}});
  EXPECT_THAT(CanonicalRequest(request, {.s3 = true}), HasSubstr("\n/bucket/a//b/../key-%2520x\n"));
  // Other services normalize the path and encode it again.
  EXPECT_THAT(CanonicalRequest(request, {}), HasSubstr("\n/bucket/a/key-%252520x\n"));
}

TEST(SigV4Test, UriEncoding) {
  EXPECT_EQ(UriEncode("AZaz09-._~", false), "AZaz09-._~");
  EXPECT_EQ(UriEncode("a b/c+d=e&f%", false), "a%20b%2Fc%2Bd%3De%26f%25");
  EXPECT_EQ(UriEncode("a b/c", true), "a%20b/c");
  EXPECT_EQ(UriEncode("\xe1\x88\xb4", false), "%E1%88%B4");
  EXPECT_EQ(*UriDecode("a%20b%2Fc+%e1%88%B4"), "a b/c+\xe1\x88\xb4");
  for (const char* bad : {"%", "%2", "%zz", "a%2g"}) {
    EXPECT_EQ(UriDecode(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(CanonicalQueryString({{"b", "2"}, {"a", "x y"}, {"a", "1"}}), "a=1&a=x%20y&b=2");
}

TEST(SigV4Test, NormalizePath) {
  EXPECT_EQ(NormalizePath("/"), "/");
  EXPECT_EQ(NormalizePath("//"), "/");
  EXPECT_EQ(NormalizePath("//example//"), "/example/");
  EXPECT_EQ(NormalizePath("/./example"), "/example");
  EXPECT_EQ(NormalizePath("/example/.."), "/");
  EXPECT_EQ(NormalizePath("/a/b/../c"), "/a/c");
  EXPECT_EQ(NormalizePath("/../../a"), "/a");
}

TEST(SigV4Test, AmzDate) { EXPECT_EQ(AmzDate(1440938160), "20150830T123600Z"); }

TEST(HttpEndpointTest, Parse) {
  auto e = http::ParseEndpoint("https://kms.us-east-1.amazonaws.com");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->HostHeader(), "kms.us-east-1.amazonaws.com");
  EXPECT_EQ(e->Url("/"), "https://kms.us-east-1.amazonaws.com/");
  e = http::ParseEndpoint("http://127.0.0.1:4566/");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->HostHeader(), "127.0.0.1:4566");
  EXPECT_EQ(e->Url("/b/k"), "http://127.0.0.1:4566/b/k");
  e = http::ParseEndpoint("https://minio.example:9000/base/");
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->Url("/b"), "https://minio.example:9000/base/b");
  EXPECT_TRUE(http::ParseEndpoint("http://[::1]:80").ok());
  for (const char* bad : {"http://s3.example.com", "ftp://x", "https://", "https://h:0",
                          "https://h:99999", "https://h:1x", "https://u@h", "https://h/?q",
                          "https://h/#f", "https://h h", "kms.us-east-1.amazonaws.com"}) {
    EXPECT_EQ(http::ParseEndpoint(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AwsConfigTest, KmsParams) {
  std::map<std::string, std::string> params = {{"keyID", "k1"},
                                               {"region", "eu-west-1"},
                                               {"accessKeyID", "AKID"},
                                               {"accessKey", "SECRET-VALUE-1234567890"}};
  auto config = AwsKmsConfigFromParams(params);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->key_id, "k1");
  EXPECT_EQ(config->endpoint, "");
  auto provider = NewAwsKmsProvider(*std::move(config), {});
  ASSERT_TRUE(provider.ok()) << provider.status();
  EXPECT_EQ((*provider)->kek_id(), "aws-kms:k1");
  EXPECT_THAT((*provider)->Describe(), HasSubstr("https://kms.eu-west-1.amazonaws.com"));
  EXPECT_THAT((*provider)->Describe(), Not(HasSubstr("SECRET")));

  for (const char* missing : {"keyID", "region", "accessKeyID", "accessKey"}) {
    auto p = params;
    p.erase(missing);
    const auto status = AwsKmsConfigFromParams(p).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << missing;
    EXPECT_THAT(std::string(status.message()), HasSubstr(missing));
  }
  auto p = params;
  p["acessKey"] = "typo";
  EXPECT_EQ(AwsKmsConfigFromParams(p).status().code(), absl::StatusCode::kInvalidArgument);
  p = params;
  p["endpoint"] = "http://kms.example.com";  // plain http off loopback
  EXPECT_EQ(NewAwsKmsProvider(*AwsKmsConfigFromParams(p), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
  p = params;
  p["region"] = "us-east-1.evil.com/";
  EXPECT_EQ(NewAwsKmsProvider(*AwsKmsConfigFromParams(p), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AwsConfigTest, S3Params) {
  std::map<std::string, std::string> params = {{"bucket", "my-bucket"},
                                               {"region", "eu-west-1"},
                                               {"accessKeyID", "AKID"},
                                               {"accessKey", "SECRET-VALUE-1234567890"}};
  auto config = S3ConfigFromParams(params);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->prefix, "keywarden/deks/");
  auto store = NewS3DekStore(*std::move(config), {});
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_THAT((*store)->Describe(), Not(HasSubstr("SECRET")));
  for (const char* bucket : {"", "ab", "UPPER", "a/b", "a b"}) {
    auto p = params;
    p["bucket"] = bucket;
    auto c = S3ConfigFromParams(p);
    if (!c.ok()) continue;
    EXPECT_EQ(NewS3DekStore(*std::move(c), {}).status().code(), absl::StatusCode::kInvalidArgument)
        << bucket;
  }
  auto p = params;
  p["endpoint"] = "https://storage.googleapis.com";
  p["prefix"] = "deks/";
  auto gcs = S3ConfigFromParams(p);
  ASSERT_TRUE(gcs.ok());
  EXPECT_EQ(gcs->prefix, "deks/");
  EXPECT_TRUE(NewS3DekStore(*std::move(gcs), {}).ok());
}

}  // namespace
}  // namespace keywarden::byok::sigv4
