// The GCP Cloud KMS provider's building blocks against published examples: the RS256 JWS of
// RFC 7515 Appendix A.2 and the CRC32C examples of RFC 3720 Appendix B.4 (data files in
// tests/data/gcp/, see its README); the service-account JWT claim set Google documents; the
// encrypt/decrypt URLs and bodies; response checks (CRC32C, verified flags, key version name);
// error mapping; kms://gcp URI parsing. The provider end to end: tests/byok_gcp_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "keywarden/byok/gcp.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"
#include "tests/subprocess.h"

namespace keywarden::byok {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Message(const absl::Status& status) { return std::string(status.message()); }

SecretBytes Secret(std::string_view s) {
  return SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Text(const SecretBytes& secret) {
  const auto bytes = secret.Reveal(InsecureSecretAccess::Get());
  return std::string(bytes.begin(), bytes.end());
}

nlohmann::json LoadData(std::string_view name) {
  const std::filesystem::path path =
      std::filesystem::path(KEYWARDEN_SOURCE_DIR) / "tests/data/gcp" / name;
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, false);
  EXPECT_TRUE(json.is_object()) << "cannot load " << path;
  return json;
}

std::vector<std::string> Split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t at = text.find(separator, start);
    parts.emplace_back(text.substr(start, at - start));
    if (at == std::string_view::npos) return parts;
    start = at + 1;
  }
}

// The RFC 7515 A.2 key as PEM (from the data file): a real RSA-2048 key to sign with.
std::string Rfc7515Pem() { return LoadData("rfc7515_a2.json")["private_key_pem"]; }

// A PEM line from the middle of a private key, to check that no message quotes the key.
std::string PemMiddleLine(const std::string& pem) { return Split(pem, '\n').at(5); }

// PemOf returns the PKCS#8 PEM of `pkey` (a key the test generated) and frees it.
std::string PemOf(EVP_PKEY* pkey) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), &BIO_free);
  EXPECT_EQ(PEM_write_bio_PrivateKey(bio.get(), pkey, nullptr, nullptr, 0, nullptr, nullptr), 1);
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  std::string pem(data, static_cast<size_t>(size));
  EVP_PKEY_free(pkey);
  return pem;
}

std::string ServiceAccountJson(const std::string& pem,
                               std::string token_uri = "https://oauth2.googleapis.com/token") {
  nlohmann::json json = {{"type", "service_account"},
                         {"project_id", "kw-test"},
                         {"private_key_id", "0123456789abcdef0123456789abcdef01234567"},
                         {"private_key", pem},
                         {"client_email", "keywarden@kw-test.iam.gserviceaccount.com"},
                         {"client_id", "100000000000000000001"},
                         {"auth_uri", "https://accounts.google.com/o/oauth2/auth"},
                         {"universe_domain", "googleapis.com"}};
  if (!token_uri.empty()) json["token_uri"] = token_uri;
  return json.dump(2);
}

gcp::ServiceAccountKey Account(const std::string& pem) {
  auto key = gcp::ParseServiceAccountKey(Secret(ServiceAccountJson(pem)));
  EXPECT_TRUE(key.ok()) << key.status();
  return key.ok() ? *std::move(key) : gcp::ServiceAccountKey{};
}

// ---- CRC32C (RFC 3720 §B.4) ----

TEST(GcpCrc32c, Rfc3720AppendixB4) {
  const nlohmann::json data = LoadData("rfc3720_crc32c.json");
  ASSERT_EQ(data["vectors"].size(), 5u);  // all of B.4, none skipped
  for (const auto& v : data["vectors"]) {
    SCOPED_TRACE(v["name"].get<std::string>());
    auto input = crypto::HexDecode(v["input"].get<std::string>());
    ASSERT_TRUE(input.ok());
    const uint32_t expected =
        static_cast<uint32_t>(std::stoul(v["crc"].get<std::string>(), nullptr, 16));
    // The RFC prints the CRC bytes in the order they are sent, least significant first.
    std::string printed_hex = v["crc_bytes"];
    std::erase(printed_hex, ' ');
    auto printed = crypto::HexDecode(printed_hex);
    ASSERT_TRUE(printed.ok());
    ASSERT_EQ(printed->size(), 4u);
    EXPECT_EQ(expected, (*printed)[0] | (*printed)[1] << 8 | (*printed)[2] << 16 |
                            static_cast<uint32_t>((*printed)[3]) << 24);
    EXPECT_EQ(gcp::Crc32c(*input), expected);
    // Continuing from the CRC of a prefix gives the CRC of the whole, at every split point.
    for (size_t split = 0; split <= input->size(); ++split) {
      const std::span<const uint8_t> all(*input);
      EXPECT_EQ(gcp::Crc32c(all.subspan(split), gcp::Crc32c(all.first(split))), expected);
    }
    // A flipped bit changes it.
    (*input)[input->size() / 2] ^= 0x01;
    EXPECT_NE(gcp::Crc32c(*input), expected);
  }
  EXPECT_EQ(gcp::Crc32c({}), 0u);
}

// ---- base64url (RFC 4648 §5) ----

TEST(GcpBase64Url, RoundTripAndStrictness) {
  for (size_t n = 0; n < 70; ++n) {
    std::vector<uint8_t> bytes(n);
    for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(0xF0 + 37 * i);
    const std::string text = gcp::Base64UrlEncode(bytes);
    EXPECT_EQ(text.find_first_of("+/="), std::string::npos) << text;
    auto decoded = gcp::Base64UrlDecode(text);
    ASSERT_TRUE(decoded.ok()) << text;
    EXPECT_EQ(*decoded, bytes);
  }
  EXPECT_TRUE(gcp::Base64UrlDecode("-_8").ok());
  EXPECT_TRUE(gcp::Base64UrlDecode("-_8=").ok());
  for (std::string_view bad : {"+_8", "/_8", "-_8==", "a", "a b=", "%%%%"}) {
    EXPECT_EQ(gcp::Base64UrlDecode(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// ---- RS256 (RFC 7515 Appendix A.2) ----

TEST(GcpRs256, Rfc7515AppendixA2) {
  const nlohmann::json data = LoadData("rfc7515_a2.json");
  const std::vector<std::string> parts = Split(data["jws_compact"].get<std::string>(), '.');
  ASSERT_EQ(parts.size(), 3u);
  // A.2.1: the encoded header and payload (the payload has CRLF line breaks).
  EXPECT_EQ(gcp::Base64UrlEncode(Bytes(data["protected_header"].get<std::string>())), parts[0]);
  EXPECT_EQ(gcp::Base64UrlEncode(Bytes(data["payload"].get<std::string>())), parts[1]);
  // RSASSA-PKCS1-v1_5 is deterministic: signing the JWS Signing Input with the example's key
  // gives exactly the example's signature.
  auto signer = gcp::RsaSigner::New(Secret(data["private_key_pem"].get<std::string>()));
  ASSERT_TRUE(signer.ok()) << signer.status();
  const std::string signing_input = parts[0] + "." + parts[1];
  auto signature = (*signer)->SignRs256(Bytes(signing_input));
  ASSERT_TRUE(signature.ok()) << signature.status();
  EXPECT_EQ(signature->size(), 256u);
  EXPECT_EQ(gcp::Base64UrlEncode(*signature), parts[2]);
  auto expected = gcp::Base64UrlDecode(parts[2]);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(*signature, *expected);
  // Another message gives another signature.
  std::string changed = signing_input;
  changed.back() ^= 0x01;
  auto other = (*signer)->SignRs256(Bytes(changed));
  ASSERT_TRUE(other.ok());
  EXPECT_NE(*other, *signature);
}

TEST(GcpRs256, RefusesWhatIsNotAnRsaKeyOf2048BitsOrMore) {
  const std::string pem = Rfc7515Pem();
  std::string truncated = pem.substr(0, pem.size() / 2) + "\n-----END PRIVATE KEY-----\n";
  std::string flipped = pem;
  flipped[pem.size() / 2] = flipped[pem.size() / 2] == 'A' ? 'B' : 'A';
  const std::string ec = PemOf(EVP_EC_gen("P-256"));
  const std::string small = PemOf(EVP_RSA_gen(1024));
  // The public key alone is not a private key.
  std::string public_pem;
  {
    std::unique_ptr<BIO, decltype(&BIO_free)> in(
        BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), &BIO_free);
    EVP_PKEY* pkey = PEM_read_bio_PrivateKey(in.get(), nullptr, nullptr, nullptr);
    ASSERT_NE(pkey, nullptr);
    std::unique_ptr<BIO, decltype(&BIO_free)> out(BIO_new(BIO_s_mem()), &BIO_free);
    ASSERT_EQ(PEM_write_bio_PUBKEY(out.get(), pkey), 1);
    char* text = nullptr;
    const long size = BIO_get_mem_data(out.get(), &text);
    public_pem.assign(text, static_cast<size_t>(size));
    EVP_PKEY_free(pkey);
  }
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"empty", ""},    {"not PEM", "not a key"}, {"truncated", truncated},  {"flipped", flipped},
      {"EC P-256", ec}, {"RSA-1024", small},      {"public key", public_pem}};
  for (const auto& [name, bad] : cases) {
    SCOPED_TRACE(name);
    auto signer = gcp::RsaSigner::New(Secret(bad));
    ASSERT_FALSE(signer.ok());
    EXPECT_EQ(signer.status().code(), absl::StatusCode::kInvalidArgument) << signer.status();
    EXPECT_THAT(Message(signer.status()), Not(HasSubstr(PemMiddleLine(pem))));
  }
  // A 3072-bit key is fine.
  EXPECT_TRUE(gcp::RsaSigner::New(Secret(PemOf(EVP_RSA_gen(3072)))).ok());
}

// ---- Service-account key and JWT (Google, "Using OAuth 2.0 for Server to Server Applications")

TEST(GcpServiceAccount, ParsesGooglesKeyFile) {
  const std::string pem = Rfc7515Pem();
  auto key = gcp::ParseServiceAccountKey(Secret(ServiceAccountJson(pem)));
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(key->client_email, "keywarden@kw-test.iam.gserviceaccount.com");
  EXPECT_EQ(key->private_key_id, "0123456789abcdef0123456789abcdef01234567");
  EXPECT_EQ(key->token_uri, "https://oauth2.googleapis.com/token");
  EXPECT_EQ(Text(key->private_key_pem), pem);
  // token_uri defaults to Google's when absent; a loopback http one is accepted (tests).
  auto defaulted = gcp::ParseServiceAccountKey(Secret(ServiceAccountJson(pem, "")));
  ASSERT_TRUE(defaulted.ok());
  EXPECT_EQ(defaulted->token_uri, "https://oauth2.googleapis.com/token");
  EXPECT_TRUE(
      gcp::ParseServiceAccountKey(Secret(ServiceAccountJson(pem, "http://127.0.0.1:1/token")))
          .ok());
}

TEST(GcpServiceAccount, RefusesOtherFilesWithoutQuotingThem) {
  const std::string pem = Rfc7515Pem();
  nlohmann::json good = nlohmann::json::parse(ServiceAccountJson(pem));
  std::vector<std::pair<std::string, std::string>> cases;
  cases.emplace_back("not JSON", "not json " + pem);
  cases.emplace_back("array", "[1,2]");
  for (const char* field : {"type", "client_email", "private_key"}) {
    nlohmann::json j = good;
    j.erase(field);
    cases.emplace_back(std::string("without ") + field, j.dump());
  }
  {
    nlohmann::json j = good;
    j["type"] = "authorized_user";  // a user's application-default credentials
    cases.emplace_back("authorized_user", j.dump());
  }
  for (const char* uri : {"http://oauth2.example.com/token", "ftp://127.0.0.1/token",
                          "https://user@oauth2.googleapis.com/token"}) {
    nlohmann::json j = good;
    j["token_uri"] = uri;
    cases.emplace_back(uri, j.dump());
  }
  for (const auto& [name, text] : cases) {
    SCOPED_TRACE(name);
    auto key = gcp::ParseServiceAccountKey(Secret(text));
    ASSERT_FALSE(key.ok());
    EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(key.status()), Not(HasSubstr(PemMiddleLine(pem))));
    EXPECT_THAT(Message(key.status()), Not(HasSubstr("PRIVATE KEY")));
  }
}

TEST(GcpJwt, ClaimSetAsGoogleDocumentsIt) {
  const gcp::ServiceAccountKey key = Account(Rfc7515Pem());
  const int64_t now = 1700000000;
  const nlohmann::json header = nlohmann::json::parse(gcp::JwtHeader(key));
  EXPECT_EQ(header, nlohmann::json({{"alg", "RS256"},
                                    {"typ", "JWT"},
                                    {"kid", "0123456789abcdef0123456789abcdef01234567"}}));
  const nlohmann::json claims = nlohmann::json::parse(gcp::JwtClaims(key, now));
  EXPECT_EQ(claims, nlohmann::json({{"iss", "keywarden@kw-test.iam.gserviceaccount.com"},
                                    {"scope", "https://www.googleapis.com/auth/cloudkms"},
                                    {"aud", "https://oauth2.googleapis.com/token"},
                                    {"iat", now},
                                    {"exp", now + 3600}}));
  // Google refuses assertions valid for more than an hour.
  EXPECT_LE(claims["exp"].get<int64_t>() - claims["iat"].get<int64_t>(), 3600);

  auto signer = gcp::RsaSigner::New(Secret(Rfc7515Pem()));
  ASSERT_TRUE(signer.ok());
  auto assertion = gcp::MakeJwtAssertion(key, **signer, now);
  ASSERT_TRUE(assertion.ok()) << assertion.status();
  const std::vector<std::string> parts = Split(*assertion, '.');
  ASSERT_EQ(parts.size(), 3u);
  auto header_json = gcp::Base64UrlDecode(parts[0]);
  auto claims_json = gcp::Base64UrlDecode(parts[1]);
  ASSERT_TRUE(header_json.ok() && claims_json.ok());
  EXPECT_EQ(nlohmann::json::parse(*header_json), header);
  EXPECT_EQ(nlohmann::json::parse(*claims_json), claims);
  auto signature = (*signer)->SignRs256(Bytes(parts[0] + "." + parts[1]));
  ASSERT_TRUE(signature.ok());
  EXPECT_EQ(gcp::Base64UrlEncode(*signature), parts[2]);

  // Without a private_key_id there is no "kid".
  gcp::ServiceAccountKey no_kid = Account(Rfc7515Pem());
  no_kid.private_key_id.clear();
  EXPECT_FALSE(nlohmann::json::parse(gcp::JwtHeader(no_kid)).contains("kid"));

  EXPECT_EQ(
      gcp::TokenRequestBody(*assertion),
      "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=" + *assertion);
}

TEST(GcpToken, ParsesTheTokenResponse) {
  std::string body =
      R"({"access_token":"ya29.c.b0Aaekm1K-example","expires_in":3599,"token_type":"Bearer"})";
  auto token = gcp::ParseTokenResponse(body);
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(Text(token->token), "ya29.c.b0Aaekm1K-example");
  EXPECT_EQ(token->expires_in_seconds, 3599);
  EXPECT_TRUE(body.empty());  // wiped

  std::string no_expiry = R"({"access_token":"t0k3n","token_type":"bearer"})";
  token = gcp::ParseTokenResponse(no_expiry);
  ASSERT_TRUE(token.ok());
  EXPECT_EQ(token->expires_in_seconds, 3600);

  for (std::string bad : {
           std::string("not json"),
           std::string(R"({"token_type":"Bearer","expires_in":3600})"),
           std::string(R"({"access_token":"","token_type":"Bearer"})"),
           std::string(R"({"access_token":"secret-tok en","token_type":"Bearer"})"),
           std::string(R"({"access_token":"secret-token","token_type":"mac"})"),
           std::string(R"({"access_token":"secret-token","token_type":"Bearer","expires_in":0})"),
           std::string(R"({"access_token":"secret-token","token_type":"Bearer","expires_in":"1"})"),
           std::string(
               R"({"access_token":"secret-token","token_type":"Bearer","expires_in":100000})"),
       }) {
    const std::string copy = bad;
    auto result = gcp::ParseTokenResponse(bad);
    ASSERT_FALSE(result.ok()) << copy;
    EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << copy;
    EXPECT_THAT(Message(result.status()), Not(HasSubstr("secret-tok"))) << copy;
  }
}

// ---- Cloud KMS requests and responses (REST v1 cryptoKeys.encrypt / decrypt) ----

GcpKmsConfig Config() {
  GcpKmsConfig config;
  config.project_id = "kw-test";
  config.location = "europe-west3";
  config.key_ring = "kw-ring";
  config.key_name = "kek_1";
  return config;
}

constexpr std::string_view kKeyName =
    "projects/kw-test/locations/europe-west3/keyRings/kw-ring/cryptoKeys/kek_1";

TEST(GcpKmsRequest, UrlsAndBodies) {
  EXPECT_EQ(gcp::KeyName(Config()), kKeyName);
  EXPECT_EQ(gcp::KmsUrl(gcp::kDefaultEndpoint, kKeyName, "encrypt"),
            "https://cloudkms.googleapis.com/v1/projects/kw-test/locations/europe-west3/"
            "keyRings/kw-ring/cryptoKeys/kek_1:encrypt");
  EXPECT_EQ(gcp::KmsUrl("http://127.0.0.1:8080", kKeyName, "decrypt"),
            "http://127.0.0.1:8080/v1/projects/kw-test/locations/europe-west3/"
            "keyRings/kw-ring/cryptoKeys/kek_1:decrypt");

  const std::vector<uint8_t> plain = {0x00, 0x01, 0xfe, 0xff, 'k', 'w'};
  const SecretBytes body = gcp::EncryptRequestBody(SecretBytes(plain), gcp::kAad);
  const nlohmann::json json = nlohmann::json::parse(Text(body));
  EXPECT_EQ(
      json,
      nlohmann::json({
          {"plaintext", crypto::Base64Encode(plain)},
          {"additionalAuthenticatedData", crypto::Base64Encode(Bytes(gcp::kAad))},
          {"plaintextCrc32c", std::to_string(gcp::Crc32c(plain))},
          {"additionalAuthenticatedDataCrc32c", std::to_string(gcp::Crc32c(Bytes(gcp::kAad)))},
      }));

  const std::vector<uint8_t> ciphertext = {9, 8, 7, 6, 5, 4, 3, 2, 1};
  EXPECT_EQ(
      nlohmann::json::parse(gcp::DecryptRequestBody(ciphertext, gcp::kAad)),
      nlohmann::json({
          {"ciphertext", crypto::Base64Encode(ciphertext)},
          {"additionalAuthenticatedData", crypto::Base64Encode(Bytes(gcp::kAad))},
          {"ciphertextCrc32c", std::to_string(gcp::Crc32c(ciphertext))},
          {"additionalAuthenticatedDataCrc32c", std::to_string(gcp::Crc32c(Bytes(gcp::kAad)))},
      }));
}

nlohmann::json EncryptResponse(const std::vector<uint8_t>& ciphertext) {
  return {{"name", std::string(kKeyName) + "/cryptoKeyVersions/3"},
          {"ciphertext", crypto::Base64Encode(ciphertext)},
          {"ciphertextCrc32c", std::to_string(gcp::Crc32c(ciphertext))},
          {"verifiedPlaintextCrc32c", true},
          {"verifiedAdditionalAuthenticatedDataCrc32c", true},
          {"protectionLevel", "HSM"}};
}

TEST(GcpKmsResponse, EncryptResponseIsChecked) {
  const std::vector<uint8_t> ciphertext(120, 0x5a);
  auto ok = gcp::ParseEncryptResponse(EncryptResponse(ciphertext).dump(), kKeyName);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(*ok, ciphertext);
  // proto3 JSON may also carry the int64 as a number.
  nlohmann::json numeric = EncryptResponse(ciphertext);
  numeric["ciphertextCrc32c"] = gcp::Crc32c(ciphertext);
  EXPECT_TRUE(gcp::ParseEncryptResponse(numeric.dump(), kKeyName).ok());

  struct Case {
    std::string name;
    std::function<void(nlohmann::json&)> change;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"CRC of other bytes",
       [&](nlohmann::json& j) {
         j["ciphertextCrc32c"] = std::to_string(gcp::Crc32c(ciphertext) ^ 1);
       },
       absl::StatusCode::kDataLoss},
      {"ciphertext changed in transit",
       [&](nlohmann::json& j) {
         std::vector<uint8_t> other = ciphertext;
         other[7] ^= 0x80;
         j["ciphertext"] = crypto::Base64Encode(other);
       },
       absl::StatusCode::kDataLoss},
      {"plaintext CRC not verified",
       [](nlohmann::json& j) { j["verifiedPlaintextCrc32c"] = false; },
       absl::StatusCode::kDataLoss},
      {"plaintext CRC flag missing", [](nlohmann::json& j) { j.erase("verifiedPlaintextCrc32c"); },
       absl::StatusCode::kDataLoss},
      {"AAD CRC not verified",
       [](nlohmann::json& j) { j["verifiedAdditionalAuthenticatedDataCrc32c"] = false; },
       absl::StatusCode::kDataLoss},
      {"no CRC", [](nlohmann::json& j) { j.erase("ciphertextCrc32c"); },
       absl::StatusCode::kUnavailable},
      {"CRC above 2^32-1", [](nlohmann::json& j) { j["ciphertextCrc32c"] = "4294967296"; },
       absl::StatusCode::kUnavailable},
      {"negative CRC", [](nlohmann::json& j) { j["ciphertextCrc32c"] = "-1"; },
       absl::StatusCode::kUnavailable},
      {"CRC not a number", [](nlohmann::json& j) { j["ciphertextCrc32c"] = "12ab"; },
       absl::StatusCode::kUnavailable},
      {"another key's version",
       [](nlohmann::json& j) {
         j["name"] =
             "projects/kw-test/locations/europe-west3/keyRings/kw-ring/cryptoKeys/"
             "kek_2/cryptoKeyVersions/1";
       },
       absl::StatusCode::kUnavailable},
      {"a key whose name extends ours",
       [](nlohmann::json& j) { j["name"] = std::string(kKeyName) + "x/cryptoKeyVersions/1"; },
       absl::StatusCode::kUnavailable},
      {"no version number",
       [](nlohmann::json& j) { j["name"] = std::string(kKeyName) + "/cryptoKeyVersions/"; },
       absl::StatusCode::kUnavailable},
      {"version path injected",
       [](nlohmann::json& j) { j["name"] = std::string(kKeyName) + "/cryptoKeyVersions/1/x"; },
       absl::StatusCode::kUnavailable},
      {"no name", [](nlohmann::json& j) { j.erase("name"); }, absl::StatusCode::kUnavailable},
      {"ciphertext not base64", [](nlohmann::json& j) { j["ciphertext"] = "!!!"; },
       absl::StatusCode::kUnavailable},
      {"empty ciphertext",
       [](nlohmann::json& j) {
         j["ciphertext"] = "";
         j["ciphertextCrc32c"] = "0";
       },
       absl::StatusCode::kUnavailable},
      {"oversized ciphertext",
       [](nlohmann::json& j) {
         const std::vector<uint8_t> big(kMaxWrappedSize + 1, 1);
         j["ciphertext"] = crypto::Base64Encode(big);
         j["ciphertextCrc32c"] = std::to_string(gcp::Crc32c(big));
       },
       absl::StatusCode::kUnavailable},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    nlohmann::json j = EncryptResponse(ciphertext);
    c.change(j);
    auto result = gcp::ParseEncryptResponse(j.dump(), kKeyName);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
  }
  EXPECT_EQ(gcp::ParseEncryptResponse("<html>", kKeyName).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(GcpKmsResponse, DecryptResponseIsChecked) {
  const std::vector<uint8_t> plain = {'d', 'e', 'k', '-', 's', 'e', 'c', 'r', 'e', 't', 0, 0xff};
  const std::string plain_b64 = crypto::Base64Encode(plain);
  auto response = [&](const nlohmann::json& crc) {
    nlohmann::json j = {{"plaintext", plain_b64}, {"usedPrimary", true}};
    if (!crc.is_null()) j["plaintextCrc32c"] = crc;
    return j.dump();
  };
  std::string body = response(std::to_string(gcp::Crc32c(plain)));
  auto ok = gcp::ParseDecryptResponse(body);
  ASSERT_TRUE(ok.ok()) << ok.status();
  const auto revealed = ok->Reveal(InsecureSecretAccess::Get());
  EXPECT_EQ(std::vector<uint8_t>(revealed.begin(), revealed.end()), plain);
  EXPECT_TRUE(body.empty());  // wiped

  struct Case {
    std::string name;
    std::string body;
    absl::StatusCode code;
  };
  std::vector<uint8_t> flipped = plain;
  flipped[0] ^= 1;
  const std::vector<Case> cases = {
      {"CRC mismatch", response(std::to_string(gcp::Crc32c(plain) ^ 0x10)),
       absl::StatusCode::kDataLoss},
      {"CRC of a changed plaintext", response(std::to_string(gcp::Crc32c(flipped))),
       absl::StatusCode::kDataLoss},
      {"no CRC", response(nullptr), absl::StatusCode::kUnavailable},
      {"CRC not a number", response("x"), absl::StatusCode::kUnavailable},
      {"no plaintext", R"({"plaintextCrc32c":"1"})", absl::StatusCode::kUnavailable},
      {"plaintext not base64", R"({"plaintext":"a!","plaintextCrc32c":"1"})",
       absl::StatusCode::kUnavailable},
      {"not JSON", "Service Unavailable", absl::StatusCode::kUnavailable},
  };
  for (Case c : cases) {
    SCOPED_TRACE(c.name);
    auto result = gcp::ParseDecryptResponse(c.body);
    ASSERT_FALSE(result.ok());
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_THAT(Message(result.status()), Not(HasSubstr(plain_b64)));
    EXPECT_THAT(Message(result.status()), Not(HasSubstr("dek-secret")));
    EXPECT_TRUE(c.body.empty());
  }
}

TEST(GcpKmsResponse, ErrorsMapToKekProviderCodes) {
  auto error = [](int code, std::string_view status, std::string_view message) {
    return nlohmann::json({{"error", {{"code", code}, {"status", status}, {"message", message}}}})
        .dump();
  };
  struct Case {
    long http;
    std::string body;
    std::string method;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {503, error(503, "UNAVAILABLE", "try again"), "encrypt", absl::StatusCode::kUnavailable},
      {500, "", "decrypt", absl::StatusCode::kUnavailable},
      {429, error(429, "RESOURCE_EXHAUSTED", "quota"), "encrypt", absl::StatusCode::kUnavailable},
      {401, error(401, "UNAUTHENTICATED", "bad token"), "decrypt",
       absl::StatusCode::kPermissionDenied},
      {403, error(403, "PERMISSION_DENIED", "Permission denied"), "encrypt",
       absl::StatusCode::kPermissionDenied},
      {404, error(404, "NOT_FOUND", "CryptoKey not found."), "encrypt",
       absl::StatusCode::kFailedPrecondition},
      {400, error(400, "FAILED_PRECONDITION", "is not enabled, current state is: DISABLED."),
       "decrypt", absl::StatusCode::kFailedPrecondition},
      {400, error(400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid."),
       "decrypt", absl::StatusCode::kPermissionDenied},
      {400, error(400, "INVALID_ARGUMENT", "Plaintext too large"), "encrypt",
       absl::StatusCode::kInvalidArgument},
      {409, "<html>conflict</html>", "decrypt", absl::StatusCode::kPermissionDenied},
  };
  for (const Case& c : cases) {
    const absl::Status status = gcp::ErrorFromResponse(c.http, c.body, c.method, "KEY");
    EXPECT_EQ(status.code(), c.code) << c.http << " " << c.body;
    EXPECT_THAT(Message(status),
                HasSubstr("KEY: " + c.method + " refused (" + std::to_string(c.http)));
  }
  // Google's status and message are quoted, printable and cut.
  const absl::Status status = gcp::ErrorFromResponse(
      403, error(403, "PERMISSION_DENIED", "denied\x1b[31m" + std::string(1000, 'x')), "encrypt",
      "KEY");
  EXPECT_THAT(Message(status), HasSubstr("PERMISSION_DENIED: denied\\x1b[31m"));
  EXPECT_LT(Message(status).size(), 400u);
}

// ---- kms://gcp URIs and the provider's configuration ----

std::string PercentEncode(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(c);
    } else {
      out += fmt::format("%{:02X}", u);
    }
  }
  return out;
}

class GcpUriTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pem_ = Rfc7515Pem();
    RegisterGcp();
  }

  std::map<std::string, std::string> Params() const {
    return {{"projectID", "kw-test"},
            {"location", "global"},
            {"keyRing", "kw-ring"},
            {"keyName", "kek"},
            {"credentials", ServiceAccountJson(pem_)}};
  }

  void ExpectNoSecret(const absl::Status& status) const {
    EXPECT_THAT(Message(status), Not(HasSubstr(PemMiddleLine(pem_))));
    EXPECT_THAT(Message(status), Not(HasSubstr("PRIVATE KEY")));
  }

  std::string pem_;
  testing::TempDir dir_{"kw-gcp-unit"};
};

TEST_F(GcpUriTest, ConstellationFormWithCredentialsPath) {
  const std::filesystem::path file = dir_.WriteFile("sa.json", ServiceAccountJson(pem_));
  auto params = Params();
  params.erase("credentials");
  params["projectID"] = "example.com:kw-test";
  params["credentialsPath"] = file.string();
  auto config = GcpKmsConfigFromParams(params);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->project_id, "example.com:kw-test");
  EXPECT_EQ(config->location, "global");
  EXPECT_EQ(config->key_ring, "kw-ring");
  EXPECT_EQ(config->key_name, "kek");
  EXPECT_EQ(Text(config->credentials_json), ServiceAccountJson(pem_));
  EXPECT_EQ(config->endpoint, "");
  auto provider = NewGcpKmsProvider(*std::move(config), {});
  ASSERT_TRUE(provider.ok()) << provider.status();
  EXPECT_EQ(
      (*provider)->kek_id(),
      "gcp-kms:projects/example.com:kw-test/locations/global/keyRings/kw-ring/cryptoKeys/kek");
  EXPECT_EQ((*provider)->Describe(),
            "GCP Cloud KMS key projects/example.com:kw-test/locations/global/keyRings/kw-ring/"
            "cryptoKeys/kek at https://cloudkms.googleapis.com as "
            "keywarden@kw-test.iam.gserviceaccount.com");
}

TEST_F(GcpUriTest, InlineCredentialsAsJsonOrBase64) {
  const std::string json = ServiceAccountJson(pem_);
  const std::vector<uint8_t> bytes(json.begin(), json.end());
  std::string url_unpadded = gcp::Base64UrlEncode(bytes);
  for (const std::string& value :
       {json, crypto::Base64Encode(bytes), url_unpadded,
        url_unpadded + std::string((4 - url_unpadded.size() % 4) % 4, '=')}) {
    auto params = Params();
    params["credentials"] = value;
    auto config = GcpKmsConfigFromParams(params);
    ASSERT_TRUE(config.ok()) << config.status();
    EXPECT_EQ(Text(config->credentials_json), json);
  }
  // Through the registry, percent-encoded in a URI.
  const std::string uri =
      "kms://gcp?projectID=kw-test&location=global&keyRing=kw-ring&keyName=kek&credentials=" +
      PercentEncode(json) + "&endpoint=http://127.0.0.1:9";
  auto provider = OpenKekProvider(uri);
  ASSERT_TRUE(provider.ok()) << provider.status();
  EXPECT_EQ((*provider)->kek_id(),
            "gcp-kms:projects/kw-test/locations/global/keyRings/kw-ring/cryptoKeys/kek");
  EXPECT_THAT((*provider)->Describe(), HasSubstr("at http://127.0.0.1:9 as keywarden@"));
}

TEST_F(GcpUriTest, RedactUriHidesInlineCredentials) {
  // The inline key is the URI's one secret parameter: logs and errors must not show it.
  // (Needs "credentials" in byok.cc's list of secret parameter names.)
  const std::string encoded = PercentEncode(ServiceAccountJson(pem_));
  const std::string redacted =
      RedactUri("kms://gcp?projectID=p&location=global&keyRing=r&keyName=k&credentials=" + encoded +
                "&endpoint=http://127.0.0.1:9");
  // (Checked without printing the URI: a failure would print the whole key.)
  EXPECT_NE(redacted.find("&credentials=***&endpoint="), std::string::npos)
      << "RedactUri does not hide credentials=";
  EXPECT_EQ(redacted.find(PercentEncode(PemMiddleLine(pem_))), std::string::npos)
      << "RedactUri leaves the private key in the URI";
}

TEST_F(GcpUriTest, BadParametersAreRefusedByName) {
  struct Case {
    std::string name;
    std::function<void(std::map<std::string, std::string>&)> change;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"no project", [](auto& p) { p.erase("projectID"); }, "projectID="},
      {"no location", [](auto& p) { p.erase("location"); }, "location="},
      {"no key ring", [](auto& p) { p.erase("keyRing"); }, "keyRing="},
      {"no key name", [](auto& p) { p["keyName"] = ""; }, "keyName="},
      {"no credentials", [](auto& p) { p.erase("credentials"); }, "exactly one of"},
      {"both credentials", [](auto& p) { p["credentialsPath"] = "/nonexistent"; },
       "exactly one of"},
      {"unknown parameter", [](auto& p) { p["keyRingg"] = "x"; }, "keyRingg"},
      {"Constellation's old name", [](auto& p) { p["project"] = "x"; }, "project"},
      {"credentials neither JSON nor base64", [](auto& p) { p["credentials"] = "/etc/sa.json"; },
       "credentials="},
      {"credentials base64 but not JSON",
       [](auto& p) { p["credentials"] = crypto::Base64Encode(Bytes("-----BEGIN")); },
       "credentials="},
      {"missing credentials file",
       [](auto& p) {
         p.erase("credentials");
         p["credentialsPath"] = "/nonexistent/sa.json";
       },
       "/nonexistent/sa.json"},
      {"credentials file is a directory",
       [](auto& p) {
         p.erase("credentials");
         p["credentialsPath"] = "/tmp";
       },
       "not a regular file"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto params = Params();
    c.change(params);
    auto config = GcpKmsConfigFromParams(params);
    ASSERT_FALSE(config.ok());
    EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(Message(config.status()), HasSubstr(c.says));
    ExpectNoSecret(config.status());
  }
}

TEST_F(GcpUriTest, BadConfigurationsAreRefused) {
  struct Case {
    std::string name;
    std::function<void(GcpKmsConfig&)> change;
  };
  const std::vector<Case> cases = {
      {"project with a slash", [](GcpKmsConfig& c) { c.project_id = "p/../q"; }},
      {"upper-case project", [](GcpKmsConfig& c) { c.project_id = "KW-Test"; }},
      {"location with a query", [](GcpKmsConfig& c) { c.location = "global?x=1"; }},
      {"key ring with a colon", [](GcpKmsConfig& c) { c.key_ring = "ring:encrypt"; }},
      {"key name with a percent", [](GcpKmsConfig& c) { c.key_name = "k%2Fx"; }},
      {"key name too long", [](GcpKmsConfig& c) { c.key_name = std::string(64, 'k'); }},
      {"empty key name", [](GcpKmsConfig& c) { c.key_name.clear(); }},
      {"no credentials", [](GcpKmsConfig& c) { c.credentials_json = SecretBytes(); }},
      {"plain http off loopback", [](GcpKmsConfig& c) { c.endpoint = "http://kms.example.com"; }},
      {"endpoint with a path", [](GcpKmsConfig& c) { c.endpoint = "https://kms.example.com/v2"; }},
      {"endpoint with a query", [](GcpKmsConfig& c) { c.endpoint = "https://kms.example.com?x"; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    GcpKmsConfig config = Config();
    config.credentials_json = Secret(ServiceAccountJson(pem_));
    c.change(config);
    auto provider = NewGcpKmsProvider(std::move(config), {});
    ASSERT_FALSE(provider.ok());
    EXPECT_EQ(provider.status().code(), absl::StatusCode::kInvalidArgument) << provider.status();
    ExpectNoSecret(provider.status());
  }
}

TEST_F(GcpUriTest, NoRequestBeforeFirstUseAndInputBounds) {
  // Nothing listens on a reserved port: opening works (no request), the first use fails
  // UNAVAILABLE at the token endpoint.
  testing::ReservedPort port = testing::ReservedPort::Reserve();
  const std::string base = "http://127.0.0.1:" + std::to_string(port.port());
  GcpKmsConfig config = Config();
  config.credentials_json = Secret(ServiceAccountJson(pem_, base + "/token"));
  config.endpoint = base;
  auto provider = NewGcpKmsProvider(std::move(config), {.timeout = std::chrono::seconds(2)});
  ASSERT_TRUE(provider.ok()) << provider.status();

  EXPECT_EQ((*provider)->Wrap(SecretBytes()).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*provider)->Wrap(SecretBytes(gcp::kMaxPlaintext + 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*provider)->Unwrap({}).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<uint8_t> big(kMaxWrappedSize + 1, 1);
  EXPECT_EQ((*provider)->Unwrap(big).status().code(), absl::StatusCode::kInvalidArgument);

  auto wrapped = (*provider)->Wrap(Secret("a DEK binding"));
  ASSERT_FALSE(wrapped.ok());
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kUnavailable) << wrapped.status();
  EXPECT_THAT(Message(wrapped.status()), HasSubstr("token request"));
  ExpectNoSecret(wrapped.status());
}

}  // namespace
}  // namespace keywarden::byok
