// Integration tests of `keywarden serve` on its embedded SQLite store: the real binary, real
// gRPC, real TLS. The etcd tests are in service_etcd_test.cc.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/master_secret.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"

namespace keywarden::testing {
namespace {

using namespace std::chrono_literals;

// Cluster is a state directory made by `keywarden init`.
class ClusterDir {
 public:
  ClusterDir() {
    const RunResult r =
        keywarden::testing::Run({KEYWARDEN_BINARY, "init", "--dir", dir().string()});
    EXPECT_TRUE(r.ok()) << r;
  }
  std::filesystem::path dir() const { return temp_ / "state"; }
  std::filesystem::path secret() const { return dir() / "mastersecret.json"; }
  std::filesystem::path log(const std::string& name) const { return temp_ / (name + ".log"); }
  const TempDir& temp() const { return temp_; }

  // Derive returns `keywarden derive dek` for the cluster's master secret, as raw bytes.
  std::string Derive(const std::string& id, size_t length = 32) const {
    return DeriveDekWithCli(secret(), id, length);
  }

 private:
  TempDir temp_{"kw-service"};
};

// NoSecretsIn checks that `text` holds none of the cluster's key material in hex or base64.
void ExpectNoSecretsIn(const std::string& text, const ClusterDir& cluster,
                       const std::vector<std::string>& keys) {
  auto secret = keys::ReadMasterSecretFile(cluster.secret());
  ASSERT_TRUE(secret.ok());
  const auto token = InsecureSecretAccess::Get();
  const std::string key_hex = crypto::HexEncode(secret->key.Reveal(token));
  const SecretBytes b64 = crypto::Base64EncodeSecret(secret->key);
  const std::string key_b64(b64.Reveal(token).begin(), b64.Reveal(token).end());
  EXPECT_EQ(text.find(key_hex.substr(0, 16)), std::string::npos);
  EXPECT_EQ(text.find(key_b64.substr(0, 16)), std::string::npos);
  for (const auto& k : keys) {
    if (k.size() < 8) continue;  // a short key's hex occurs anywhere by chance
    EXPECT_EQ(text.find(HexOf(k).substr(0, 16)), std::string::npos);
  }
}

TEST(ServiceTest, ServesDeriveDekKeysAndKeepsThemAcrossRestarts) {
  ClusterDir cluster;
  const std::vector<std::pair<std::string, size_t>> cases = {
      {"my-volume", 32},
      {"0b1c2d3e-aaaa-4000-8000-00000000abcd", 32},
      {"Disk", 64},
      {"disk", 1},
      {"measurementSecret", 32},
      {"x", 8160}};
  std::vector<std::string> expected;
  for (const auto& [id, n] : cases) expected.push_back(cluster.Derive(id, n));
  std::vector<std::string> served;
  {
    ServiceProcess server({"--dir", cluster.dir().string()}, cluster.log("a"));
    ASSERT_TRUE(server.Start()) << server.stderr_text();
    KmsClient client(server.endpoint());
    for (size_t i = 0; i < cases.size(); ++i) {
      CallResult r = client.GetDataKey(cases[i].first, static_cast<uint32_t>(cases[i].second));
      ASSERT_TRUE(r.ok()) << r.message;
      EXPECT_EQ(r.key, expected[i]) << cases[i].first;
      served.push_back(r.key);
    }
    EXPECT_EQ(server.Stop(), 0) << server.stderr_text();
    ExpectNoSecretsIn(server.stderr_text(), cluster, served);
  }
  // The store now holds the KEK: a restart without the master secret serves the same keys.
  std::filesystem::rename(cluster.secret(), cluster.temp() / "offline-mastersecret.json");
  ServiceProcess again({"--dir", cluster.dir().string()}, cluster.log("b"));
  ASSERT_TRUE(again.Start()) << again.stderr_text();
  KmsClient client(again.endpoint());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(client.GetDataKey(cases[i].first, static_cast<uint32_t>(cases[i].second)).key,
              expected[i]);
  }
}

TEST(ServiceTest, DekGetPrintsTheSameKeyAsDerive) {
  ClusterDir cluster;
  ServiceProcess server({"--dir", cluster.dir().string()}, cluster.log("s"));
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  const RunResult r = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "dek", "get", "--endpoint", server.endpoint(), "--id", "vol-1"});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_EQ(r.stdout_text, HexOf(cluster.Derive("vol-1")) + "\n");
  const RunResult bad = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "dek", "get", "--endpoint", server.endpoint(), "--id", ""});
  EXPECT_EQ(bad.exit_code, 1) << bad;
  EXPECT_NE(bad.stderr_text.find("data_key_id is empty"), std::string::npos) << bad;
  const RunResult down = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "dek", "get", "--endpoint", "127.0.0.1:1", "--id", "x", "--timeout", "2"});
  EXPECT_EQ(down.exit_code, 1) << down;
  EXPECT_TRUE(down.stdout_text.empty());
}

TEST(ServiceTest, BadRequestsAreInvalidArgumentAndTheServerKeepsServing) {
  ClusterDir cluster;
  ServiceProcess server({"--dir", cluster.dir().string()}, cluster.log("s"));
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  KmsClient client(server.endpoint());
  const std::string good = cluster.Derive("ok");
  struct Case {
    const char* name;
    CallResult result;
  };
  std::vector<Case> cases = {
      {"empty id", client.GetDataKey("", 32)},
      {"length 0", client.GetDataKey("a", 0)},
      {"length too large", client.GetDataKey("a", 8161)},
      {"length huge", client.GetDataKey("a", 0xffffffffu)},
      {"1 MiB id", client.GetDataKey(std::string(1 << 20, 'i'), 32)},
      {"garbage bytes", client.Raw("\xff\xff\xff\xff\x0f garbage")},
      {"truncated field", client.Raw(std::string("\x0a\x10short", 7))},
      {"wrong wire type", client.Raw(std::string("\x0d\x01\x02\x03\x04", 5))},
      {"invalid utf-8 id", client.Raw(std::string("\x0a\x02\xc3\x28\x10\x20", 6))},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(c.result.code, grpc::StatusCode::INVALID_ARGUMENT)
        << c.name << ": " << c.result.message;
    EXPECT_TRUE(c.result.key.empty()) << c.name;
    CallResult after = client.GetDataKey("ok", 32);
    ASSERT_TRUE(after.ok()) << "after " << c.name << ": " << after.message;
    EXPECT_EQ(after.key, good);
  }
  // A well-formed raw request works through the same path.
  std::string raw = "\x0a\x02ok\x10\x20";
  CallResult r = client.Raw(raw);
  ASSERT_TRUE(r.ok()) << r.message;
  EXPECT_EQ(r.key, std::string("\x0a\x20", 2) + good);
}

TEST(ServiceTest, HealthMetricsAndJsonLogs) {
  ClusterDir cluster;
  // Let the kernel choose a free port for the metrics endpoint, then release it.
  int metrics_port = 0;
  {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
    metrics_port = ntohs(addr.sin_port);
    close(fd);
  }
  ServiceProcess server({"--dir", cluster.dir().string(), "--log-format", "json", "--metrics",
                         "127.0.0.1:" + std::to_string(metrics_port)},
                        cluster.log("s"));
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  KmsClient client(server.endpoint());
  EXPECT_EQ(client.HealthStatus(), 1);
  EXPECT_EQ(client.HealthStatus("kms.API"), 1);
  ASSERT_TRUE(client.GetDataKey("a", 32).ok());
  ASSERT_TRUE(client.GetDataKey("b", 32).ok());
  EXPECT_FALSE(client.GetDataKey("", 32).ok());

  httplib::Client http("127.0.0.1", metrics_port);
  auto res = http.Get("/metrics");
  ASSERT_TRUE(res) << "metrics endpoint unreachable";
  EXPECT_EQ(res->status, 200);
  EXPECT_NE(res->body.find("keywarden_requests_total{method=\"GetDataKey\",code=\"OK\"} 2"),
            std::string::npos)
      << res->body;
  EXPECT_NE(res->body.find("code=\"INVALID_ARGUMENT\"} 1"), std::string::npos);
  EXPECT_NE(res->body.find("keywarden_request_duration_seconds_count{method=\"GetDataKey\"} 3"),
            std::string::npos);
  EXPECT_NE(res->body.find("keywarden_store_up 1"), std::string::npos);

  // Neither port can be shared by a second server (no SO_REUSEPORT).
  ClusterDir other;
  const RunResult second = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", other.dir().string(), "--listen", "127.0.0.1:0",
       "--metrics", "127.0.0.1:" + std::to_string(metrics_port)});
  EXPECT_EQ(second.exit_code, 1) << second;
  EXPECT_NE(second.stderr_text.find("cannot listen for metrics"), std::string::npos) << second;

  EXPECT_EQ(server.Stop(), 0);
  std::istringstream lines(server.stderr_text());
  std::string line;
  int parsed = 0;
  bool saw_serving = false, saw_stopped = false;
  while (std::getline(lines, line)) {
    auto doc = nlohmann::json::parse(line, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << "not JSON: " << line;
    ASSERT_TRUE(doc.contains("time") && doc.contains("level") && doc.contains("msg")) << line;
    saw_serving = saw_serving || doc["msg"] == "serving kms.API";
    saw_stopped = saw_stopped || doc["msg"] == "stopped";
    ++parsed;
  }
  EXPECT_GE(parsed, 3);
  EXPECT_TRUE(saw_serving);
  EXPECT_TRUE(saw_stopped);
}

TEST(ServiceTest, StartupErrorsAreClearAndExitNonZero) {
  TempDir temp("kw-service-errors");
  // No state directory at all.
  const RunResult none = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", (temp / "missing").string(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(none.exit_code, 1) << none;
  EXPECT_NE(none.stderr_text.find("keywarden init"), std::string::npos) << none;

  // An empty store and no master secret.
  std::filesystem::create_directories(temp / "empty");
  const RunResult empty = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", (temp / "empty").string(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(empty.exit_code, 1) << empty;
  EXPECT_NE(empty.stderr_text.find("holds no KEK"), std::string::npos) << empty;

  // The master secret of another cluster against an initialized store.
  ClusterDir a, b;
  {
    ServiceProcess server({"--dir", a.dir().string()}, a.log("s"));
    ASSERT_TRUE(server.Start());
    EXPECT_EQ(server.Stop(), 0);
  }
  const RunResult other = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", b.dir().string(), "--store",
       "sqlite://" + (a.dir() / "keywarden.db").string(), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(other.exit_code, 1) << other;
  EXPECT_NE(other.stderr_text.find("another cluster"), std::string::npos) << other;

  // A listen port that is taken.
  ServiceProcess first({"--dir", a.dir().string()}, a.log("t"));
  ASSERT_TRUE(first.Start());
  const RunResult taken = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", a.dir().string(), "--listen", first.endpoint()});
  EXPECT_EQ(taken.exit_code, 1) << taken;
  EXPECT_NE(taken.stderr_text.find("cannot listen"), std::string::npos) << taken;

  // An etcd store where nothing listens: a clear error within the store timeout.
  const RunResult unreachable = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", a.dir().string(), "--store", "etcd://127.0.0.1:1",
       "--store-timeout", "1", "--listen", "127.0.0.1:0"});
  EXPECT_EQ(unreachable.exit_code, 1) << unreachable;
  EXPECT_NE(unreachable.stderr_text.find("cannot open cluster store"), std::string::npos)
      << unreachable;
  EXPECT_NE(unreachable.stderr_text.find("127.0.0.1:1"), std::string::npos) << unreachable;
}

// MakeCerts writes a CA, a server certificate for 127.0.0.1 and a client certificate.
void MakeCerts(const TempDir& dir) {
  auto openssl = [](std::vector<std::string> args) {
    args.insert(args.begin(), "openssl");
    const RunResult r = keywarden::testing::Run(args);
    ASSERT_TRUE(r.ok()) << r;
  };
  const auto p = [&dir](const char* name) { return (dir / name).string(); };
  dir.WriteFile("server.ext", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
  dir.WriteFile("client.ext", "extendedKeyUsage=clientAuth\n");
  for (const char* ca : {"ca", "other-ca"}) {
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", p(ca) + ".key", "-out", p(ca) + ".crt", "-days", "2", "-subj",
             std::string("/CN=") + ca});
  }
  for (const auto& [name, ca] : {std::pair{"server", "ca"}, std::pair{"client", "ca"},
                                 std::pair{"other-client", "other-ca"}}) {
    const std::string ext = std::string(name) == "server" ? p("server.ext") : p("client.ext");
    openssl({"req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
             p(name) + ".key", "-out", p(name) + ".csr", "-subj", std::string("/CN=") + name});
    openssl({"x509", "-req", "-in", p(name) + ".csr", "-CA", p(ca) + ".crt", "-CAkey",
             p(ca) + ".key", "-CAcreateserial", "-out", p(name) + ".crt", "-days", "2", "-extfile",
             ext});
  }
}

TEST(ServiceTest, TlsAndMutualTls) {
  ClusterDir cluster;
  TempDir certs("kw-certs");
  MakeCerts(certs);
  if (::testing::Test::HasFatalFailure()) return;
  const auto p = [&certs](const char* name) { return (certs / name).string(); };
  const std::string expected = HexOf(cluster.Derive("tls-vol")) + "\n";
  auto get = [&](const std::string& endpoint, std::vector<std::string> flags) {
    std::vector<std::string> argv = {KEYWARDEN_BINARY, "dek",       "get",
                                     "--endpoint",     endpoint,    "--id",
                                     "tls-vol",        "--timeout", "5"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return keywarden::testing::Run(argv);
  };
  {
    ServiceProcess server({"--dir", cluster.dir().string(), "--tls-cert", p("server.crt"),
                           "--tls-key", p("server.key")},
                          cluster.log("tls"));
    ASSERT_TRUE(server.Start()) << server.stderr_text();
    const RunResult ok = get(server.endpoint(), {"--tls-ca", p("ca.crt")});
    EXPECT_TRUE(ok.ok()) << ok;
    EXPECT_EQ(ok.stdout_text, expected);
    EXPECT_EQ(get(server.endpoint(), {}).exit_code, 1);  // plaintext client
    EXPECT_EQ(get(server.endpoint(), {"--tls-ca", p("other-ca.crt")}).exit_code, 1);
  }
  ServiceProcess server({"--dir", cluster.dir().string(), "--tls-cert", p("server.crt"),
                         "--tls-key", p("server.key"), "--tls-client-ca", p("ca.crt")},
                        cluster.log("mtls"));
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  const RunResult ok = get(server.endpoint(), {"--tls-ca", p("ca.crt"), "--tls-cert",
                                               p("client.crt"), "--tls-key", p("client.key")});
  EXPECT_TRUE(ok.ok()) << ok;
  EXPECT_EQ(ok.stdout_text, expected);
  EXPECT_EQ(get(server.endpoint(), {"--tls-ca", p("ca.crt")}).exit_code, 1);  // no client cert
  EXPECT_EQ(get(server.endpoint(), {"--tls-ca", p("ca.crt"), "--tls-cert", p("other-client.crt"),
                                    "--tls-key", p("other-client.key")})
                .exit_code,
            1);
}

TEST(ServiceTest, SigtermDrainsAndExitsZero) {
  ClusterDir cluster;
  ServiceProcess server({"--dir", cluster.dir().string()}, cluster.log("s"));
  ASSERT_TRUE(server.Start());
  const std::string key = cluster.Derive("k");
  LoadLoop load({server.endpoint()}, {{"k", key}}, 2);
  std::this_thread::sleep_for(300ms);
  EXPECT_EQ(server.Stop(), 0) << server.stderr_text();
  load.Stop();
  EXPECT_GT(load.ok(), 0u);
  EXPECT_EQ(load.wrong(), 0u);
  const std::string log = server.stderr_text();
  EXPECT_NE(log.find("draining signal=SIGTERM"), std::string::npos) << log;
  EXPECT_NE(log.find("stopped"), std::string::npos) << log;
}

}  // namespace
}  // namespace keywarden::testing
