// Cloud KMS stand-in peer. See gcp_kms_standin.h.
#include "tests/gcp_kms_standin.h"

#include <fmt/format.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <chrono>
#include <memory>
#include <utility>

#include "src/byok/http.h"

namespace keywarden::testing {
namespace {

using namespace std::chrono_literals;

std::string BioText(BIO* bio) {
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio, &data);
  return size > 0 ? std::string(data, static_cast<size_t>(size)) : std::string();
}

// Send sends one request to the stand-in's test controls and returns the JSON answer, or null
// (with the test failed) when it does not answer 200.
nlohmann::json Send(const std::string& url, const char* method, const std::string& body) {
  auto client = byok::http::Client::New(10s);
  if (!client.ok()) {
    ADD_FAILURE() << "http client: " << client.status();
    return nullptr;
  }
  byok::http::Request request;
  request.method = method;
  request.url = url;
  if (!body.empty()) {
    request.headers = {{"Content-Type", "application/json"}};
    request.body = {reinterpret_cast<const uint8_t*>(body.data()), body.size()};
  }
  auto response = (*client)->Send(request);
  if (!response.ok() || response->status != 200) {
    ADD_FAILURE() << url << ": "
                  << (response.ok() ? response->body : std::string(response.status().message()));
    return nullptr;
  }
  return nlohmann::json::parse(response->body, nullptr, false);
}

}  // namespace

GcpKmsStandIn::RsaPem GcpKmsStandIn::GenerateRsa2048() {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(EVP_RSA_gen(2048), &EVP_PKEY_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> priv(BIO_new(BIO_s_mem()), &BIO_free);
  std::unique_ptr<BIO, decltype(&BIO_free)> pub(BIO_new(BIO_s_mem()), &BIO_free);
  if (pkey == nullptr || priv == nullptr || pub == nullptr ||
      PEM_write_bio_PrivateKey(priv.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) !=
          1 ||
      PEM_write_bio_PUBKEY(pub.get(), pkey.get()) != 1) {
    ADD_FAILURE() << "RSA-2048 key generation failed";
    return {};
  }
  return {BioText(priv.get()), BioText(pub.get())};
}

GcpKmsStandIn::GcpKmsStandIn() : dir_("kw-gcp-standin"), port_(ReservedPort::Reserve()) {}

GcpKmsStandIn::~GcpKmsStandIn() { Stop(); }

void GcpKmsStandIn::Stop() { server_.Kill(); }

std::string GcpKmsStandIn::Log() const { return server_.Log(); }

std::string GcpKmsStandIn::endpoint() const { return fmt::format("http://127.0.0.1:{}", port()); }

::testing::AssertionResult GcpKmsStandIn::Start(const RsaPem& account_key, Options options) {
  if (port() == 0) return ::testing::AssertionFailure() << "no port reserved";
  if (server_.pid() > 0) return ::testing::AssertionFailure() << "the stand-in already runs";
  if (account_key.private_pem.empty() || account_key.public_pem.empty()) {
    return ::testing::AssertionFailure() << "no service-account key";
  }
  const std::filesystem::path public_key = dir_.WriteFile("sa-public.pem", account_key.public_pem);
  credentials_ = dir_.WriteFile("sa.json", KeyFile(account_key.private_pem));
  const std::string python =
      std::filesystem::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
  std::vector<std::string> argv = {
      python,
      (std::filesystem::path(KEYWARDEN_SOURCE_DIR) / "tests/gcp_kms_standin.py").string(),
      "--port",
      std::to_string(port()),
      "--public-key",
      public_key.string(),
      "--client-email",
      kClientEmail,
      "--token-uri",
      TokenUri()};
  for (const std::string& key : options.keys) {
    argv.push_back("--key");
    argv.push_back(std::string(kKeyRingName) + "/cryptoKeys/" + key);
  }
  BackgroundOptions background;
  background.log = dir_ / "standin.log";
  if (auto started = server_.Start(argv, background); !started) {
    return started << " (needs python3 with python3-cryptography)";
  }
  return WaitForPort(server_, port(), "gcp_kms_standin", 30s);
}

std::string GcpKmsStandIn::KeyFile(const std::string& private_pem,
                                   std::string_view client_email) const {
  return nlohmann::json({{"type", "service_account"},
                         {"project_id", kProject},
                         {"private_key_id", "4f3c1a2b5d6e7f8091a2b3c4d5e6f708192a3b4c"},
                         {"private_key", private_pem},
                         {"client_email", client_email},
                         {"client_id", "100000000000000000042"},
                         {"auth_uri", "https://accounts.google.com/o/oauth2/auth"},
                         {"token_uri", TokenUri()},
                         {"universe_domain", "googleapis.com"}})
      .dump(2);
}

std::string GcpKmsStandIn::Uri(std::string_view key, std::string credentials) const {
  if (credentials.empty()) credentials = "credentialsPath=" + credentials_.string();
  return fmt::format("kms://gcp?projectID={}&location={}&keyRing={}&keyName={}&{}&endpoint={}",
                     kProject, kLocation, kKeyRing, key, credentials, endpoint());
}

nlohmann::json GcpKmsStandIn::Control(const nlohmann::json& settings) const {
  return Send(endpoint() + "/control", "POST", settings.dump());
}

nlohmann::json GcpKmsStandIn::Stats() const { return Send(endpoint() + "/stats", "GET", ""); }

int GcpKmsStandIn::Count(const char* what) const {
  const nlohmann::json stats = Stats();
  if (!stats.is_object()) return -1;
  const auto it = stats.find(what);
  return it != stats.end() && it->is_number_integer() ? it->get<int>() : -1;
}

}  // namespace keywarden::testing
