// Integration tests of `keywarden serve` on etcd: replicas sharing one KEK, leader failover,
// replica crashes, racing first starts, and a store that goes away. Real etcd, real processes.
#include <gtest/gtest.h>

#include "keywarden/crypto/encoding.h"
#include "tests/etcd_cluster.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"

namespace keywarden::testing {
namespace {

using namespace std::chrono_literals;

std::string EtcdUri(const EtcdCluster& cluster) {
  std::string uri = "etcd://";
  for (const auto& e : cluster.endpoints()) uri += (uri.size() > 7 ? "," : "") + e;
  return uri;
}

class Cluster {
 public:
  explicit Cluster(const TempDir& temp, const std::string& name) : dir_(temp / name) {
    const RunResult r = keywarden::testing::Run({KEYWARDEN_BINARY, "init", "--dir", dir_.string()});
    EXPECT_TRUE(r.ok()) << r;
  }
  const std::filesystem::path& dir() const { return dir_; }
  std::string Derive(const std::string& id, size_t length = 32) const {
    return DeriveDekWithCli(dir_ / "mastersecret.json", id, length);
  }
  std::map<std::string, std::string> Expected(int n) const {
    std::map<std::string, std::string> keys;
    for (int i = 0; i < n; ++i) {
      const std::string id = "vol-" + std::to_string(i);
      keys[id] = Derive(id);
    }
    return keys;
  }

 private:
  std::filesystem::path dir_;
};

// Expect checks that a replica returns exactly the expected keys.
void ExpectKeys(const std::string& endpoint, const std::map<std::string, std::string>& expected) {
  KmsClient client(endpoint);
  for (const auto& [id, key] : expected) {
    CallResult r = client.GetDataKey(id, static_cast<uint32_t>(key.size()));
    ASSERT_TRUE(r.ok()) << endpoint << " " << id << ": " << r.message;
    EXPECT_EQ(r.key, key) << endpoint << " " << id;
  }
}

TEST(ServiceEtcdTest, ReplicasShareOneKekAndSurviveLeaderAndReplicaKills) {
  TempDir temp("kw-etcd-svc");
  EtcdCluster etcd({.members = 3});
  ASSERT_TRUE(etcd.Start());
  Cluster cluster(temp, "state");
  const auto expected = cluster.Expected(8);

  // Replica A initializes the store from the master secret; replica B has no secret at all.
  ServiceProcess a({"--dir", cluster.dir().string(), "--store", EtcdUri(etcd)}, temp / "a.log");
  ASSERT_TRUE(a.Start()) << a.stderr_text();
  std::filesystem::create_directories(temp / "empty");
  ServiceProcess b({"--dir", (temp / "empty").string(), "--store", EtcdUri(etcd)}, temp / "b.log");
  ASSERT_TRUE(b.Start()) << b.stderr_text();
  ExpectKeys(a.endpoint(), expected);
  ExpectKeys(b.endpoint(), expected);

  // Kill -9 the etcd leader under steady load on both replicas.
  {
    LoadLoop load({a.endpoint(), b.endpoint()}, expected, 2);
    std::this_thread::sleep_for(1s);
    const int leader = etcd.LeaderIndex();
    ASSERT_GE(leader, 0);
    const uint64_t ok_before = load.ok();
    ASSERT_TRUE(etcd.KillMember(static_cast<size_t>(leader)));
    std::this_thread::sleep_for(8s);  // election plus more than one store check interval
    const uint64_t ok_after_window = load.ok();
    load.Stop();
    RecordProperty("leader_kill_failed_calls", static_cast<int>(load.failed()));
    RecordProperty("leader_kill_ok_calls", static_cast<int>(load.ok()));
    std::printf("[ leader kill ] %llu calls ok, %llu failed, %llu wrong key\n",
                static_cast<unsigned long long>(load.ok()),
                static_cast<unsigned long long>(load.failed()),
                static_cast<unsigned long long>(load.wrong()));
    EXPECT_EQ(load.wrong(), 0u);
    EXPECT_GT(ok_after_window, ok_before);  // it kept answering through the window
    ExpectKeys(a.endpoint(), expected);
    ExpectKeys(b.endpoint(), expected);
    ASSERT_TRUE(etcd.RestartMember(static_cast<size_t>(leader)));
    ASSERT_TRUE(etcd.WaitHealthy());
  }

  // Kill -9 replica B mid-load, restart it: same keys.
  {
    LoadLoop load({a.endpoint(), b.endpoint()}, expected, 2);
    std::this_thread::sleep_for(500ms);
    b.Kill();
    std::this_thread::sleep_for(500ms);
    load.Stop();
    EXPECT_EQ(load.wrong(), 0u);
  }
  ServiceProcess b2({"--dir", (temp / "empty").string(), "--store", EtcdUri(etcd)},
                    temp / "b2.log");
  ASSERT_TRUE(b2.Start()) << b2.stderr_text();
  ExpectKeys(b2.endpoint(), expected);
  ExpectKeys(a.endpoint(), expected);
  const std::string logs = a.stderr_text() + b.stderr_text() + b2.stderr_text();
  for (const auto& [id, key] : expected) {
    EXPECT_EQ(logs.find(HexOf(key).substr(0, 16)), std::string::npos)
        << "key of " << id << " logged";
  }
}

TEST(ServiceEtcdTest, RacingFirstStartsOnEmptyEtcdEndWithOneKek) {
  TempDir temp("kw-etcd-race");
  EtcdCluster etcd({.members = 1});
  ASSERT_TRUE(etcd.Start());
  Cluster same(temp, "same");
  const auto expected = same.Expected(3);

  // Same master secret, started at the same moment: both serve, the record was written once.
  {
    ServiceProcess a({"--dir", same.dir().string(), "--store", EtcdUri(etcd)}, temp / "a.log");
    ServiceProcess b({"--dir", same.dir().string(), "--store", EtcdUri(etcd)}, temp / "b.log");
    ASSERT_TRUE(a.Spawn() && b.Spawn());
    ASSERT_TRUE(a.WaitListening()) << a.stderr_text();
    ASSERT_TRUE(b.WaitListening()) << b.stderr_text();
    ExpectKeys(a.endpoint(), expected);
    ExpectKeys(b.endpoint(), expected);
    const RunResult get = etcd.Etcdctl({"get", "/keywarden/v1/kek", "-w", "json"});
    ASSERT_TRUE(get.ok()) << get;
    EXPECT_NE(get.stdout_text.find("\"version\":1"), std::string::npos) << get.stdout_text;
  }

  // Different master secrets racing on another empty prefix: exactly one cluster wins; the
  // loser refuses to serve; the winner's keys are the only keys served.
  Cluster x(temp, "x"), y(temp, "y");
  const std::string uri = EtcdUri(etcd) + "?prefix=/race2/";
  ServiceProcess px({"--dir", x.dir().string(), "--store", uri}, temp / "x.log");
  ServiceProcess py({"--dir", y.dir().string(), "--store", uri}, temp / "y.log");
  ASSERT_TRUE(px.Spawn() && py.Spawn());
  const bool x_up = px.WaitListening();
  const bool y_up = py.WaitListening();
  ASSERT_NE(x_up, y_up) << px.stderr_text() << py.stderr_text();
  ServiceProcess& winner = x_up ? px : py;
  ServiceProcess& loser = x_up ? py : px;
  const Cluster& winning = x_up ? x : y;
  EXPECT_EQ(loser.exit_code(), 1);
  EXPECT_NE(loser.stderr_text().find("another cluster"), std::string::npos) << loser.stderr_text();
  ExpectKeys(winner.endpoint(), winning.Expected(3));
}

TEST(ServiceEtcdTest, LosingTheStoreGivesUnavailableNeverAnotherKey) {
  TempDir temp("kw-etcd-down");
  EtcdCluster etcd({.members = 1});
  ASSERT_TRUE(etcd.Start());
  Cluster cluster(temp, "state");
  const auto expected = cluster.Expected(2);
  ServiceProcess server(
      {"--dir", cluster.dir().string(), "--store", EtcdUri(etcd), "--store-timeout", "1"},
      temp / "s.log");
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  ExpectKeys(server.endpoint(), expected);
  KmsClient client(server.endpoint());
  EXPECT_EQ(client.HealthStatus("kms.API"), 1);

  ASSERT_TRUE(etcd.KillMember(0));
  // Within the stale window plus a check, every call is UNAVAILABLE (bounded wait, no timing
  // assertion).
  CallResult r;
  for (int i = 0; i < 200; ++i) {
    r = client.GetDataKey("vol-0", 32);
    if (r.code == grpc::StatusCode::UNAVAILABLE) break;
    ASSERT_TRUE(r.ok()) << r.message;
    EXPECT_EQ(r.key, expected.at("vol-0"));
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(r.code, grpc::StatusCode::UNAVAILABLE) << r.message;
  int health = -1;
  for (int i = 0; i < 100 && health != 2; ++i) {
    health = client.HealthStatus("kms.API");
    if (health != 2) std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(health, 2);  // NOT_SERVING
  EXPECT_TRUE(server.running());

  ASSERT_TRUE(etcd.RestartMember(0));
  ASSERT_TRUE(etcd.WaitHealthy());
  for (int i = 0; i < 200; ++i) {
    r = client.GetDataKey("vol-0", 32);
    if (r.ok()) break;
    std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(r.ok()) << r.message;
  EXPECT_EQ(r.key, expected.at("vol-0"));
  for (int i = 0; i < 100 && health != 1; ++i) {
    health = client.HealthStatus("kms.API");
    if (health != 1) std::this_thread::sleep_for(100ms);
  }
  EXPECT_EQ(health, 1);
  EXPECT_EQ(server.Stop(), 0);
}

TEST(ServiceEtcdTest, ServesOverEtcdWithClientTls) {
  TempDir temp("kw-etcd-tls");
  EtcdCluster etcd({.members = 1, .tls = true});
  ASSERT_TRUE(etcd.Start());
  Cluster cluster(temp, "state");
  const auto expected = cluster.Expected(2);
  const EtcdTlsFiles& tls = etcd.tls_files();
  const std::string base = "etcd://" + etcd.endpoint(0);
  const std::string good = base + "?ca=" + tls.ca_cert.string() +
                           "&cert=" + tls.client_cert.string() + "&key=" + tls.client_key.string();
  ServiceProcess server({"--dir", cluster.dir().string(), "--store", good}, temp / "s.log");
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  ExpectKeys(server.endpoint(), expected);

  // Without a client certificate, or trusting another CA, the store is unreachable: a clear
  // error at start, exit status 1.
  for (const std::string& bad : {base + "?ca=" + tls.ca_cert.string(),
                                 base + "?ca=" + tls.other_ca_cert.string() + "&cert=" +
                                     tls.client_cert.string() + "&key=" + tls.client_key.string(),
                                 base}) {
    const RunResult r = keywarden::testing::Run(
        {KEYWARDEN_BINARY, "serve", "--dir", cluster.dir().string(), "--store", bad,
         "--store-timeout", "2", "--listen", "127.0.0.1:0"});
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_NE(r.stderr_text.find("cannot open cluster store"), std::string::npos) << r;
  }
}

}  // namespace
}  // namespace keywarden::testing
