// The network agent end to end: three nodes in network namespaces (tests/netns.h) with real
// wireguard-go, each with its own agent (in this process, one thread each) on a shared registry
// (SQLite, then etcd). Checked: tunnel traffic between all nodes configured only from the
// registry; key rotation during a continuous ping (losses printed as "[rotation] ..."); a node that
// leaves disappears from the others' interfaces; a forged entry is never applied; an etcd member
// killed under the agents changes nothing.
//
// Credentials are issued here with a test authority (what the key service's authority does for
// an attested node).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/net/agent.h"
#include "keywarden/net/registry.h"
#include "keywarden/status.h"
#include "tests/etcd_cluster.h"
#include "tests/netns.h"
#include "tests/subprocess.h"

namespace keywarden::testing {
namespace {

using namespace std::chrono_literals;
using ::testing::HasSubstr;

constexpr uint16_t kPort = 51820;

// Cluster is one test's authority, cluster id and registry URI.
struct Cluster {
  std::unique_ptr<net::Authority> authority;
  std::string cluster_id;
  std::string registry_uri;

  explicit Cluster(std::string uri) : registry_uri(std::move(uri)) {
    authority = net::NewAuthorityFromSeed(crypto::RandomSecret(32).value()).value();
    const SecretBytes id = crypto::RandomSecret(32).value();
    cluster_id = crypto::HexEncode(id.Reveal(InsecureSecretAccess::Get()));
  }

  // Credential issues a credential for `node` with the fingerprint of a made-up EK.
  std::unique_ptr<net::NodeSigner> Signer(const std::string& node, net::Authority& by) const {
    net::NodeSigningKey key = net::GenerateNodeSigningKey().value();
    net::NodeCredential credential;
    credential.node = node;
    credential.signing_key = key.public_key();
    credential.cluster_id = cluster_id;
    credential.ek_fingerprint = std::string(64, 'a' + static_cast<char>(node.size() % 6));
    credential.not_after = std::chrono::system_clock::now() + 1h;
    const std::vector<uint8_t> bytes = by.Issue(credential).value();
    return net::NewNodeSigner(bytes, std::move(key)).value();
  }
};

// AgentNode is one node's agent, running on its own thread.
class AgentNode {
 public:
  AgentNode(const Cluster& cluster, const NetnsNode& node, std::string name,
            std::chrono::milliseconds rotate_every = 0ms)
      : name_(std::move(name)) {
    store_ = net::OpenRegistryStore(cluster.registry_uri).value();
    signer_ = cluster.Signer(name_, *cluster.authority);
    verifier_ = net::NewEntryVerifier(cluster.authority->public_key(), cluster.cluster_id).value();
    net::AgentOptions options;
    options.node = name_;
    options.endpoint =
        net::Endpoint::Parse(node.underlay_address + ":" + std::to_string(kPort)).value();
    options.allowed_ips = {net::Cidr::Parse(node.tunnel_address + "/32").value()};
    options.listen_port = kPort;
    options.rotate_every = rotate_every;
    options.resync_every = 30s;
    options.log = [this](std::string_view level, std::string_view message) {
      std::lock_guard<std::mutex> lock(mu_);
      log_ += std::string(level) + ": " + std::string(message) + "\n";
    };
    auto uapi = net::UapiClient::ForInterface(node.interface).value();
    agent_ =
        net::Agent::New(std::move(options), *store_, *verifier_, *signer_, std::move(uapi)).value();
    thread_ = std::thread([this] { result_ = agent_->Run(stop_); });
  }
  ~AgentNode() { (void)Stop(); }

  absl::Status Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  net::Agent& agent() { return *agent_; }
  std::string log() {
    std::lock_guard<std::mutex> lock(mu_);
    return log_;
  }

 private:
  std::string name_;
  std::unique_ptr<net::RegistryStore> store_;
  std::unique_ptr<net::NodeSigner> signer_;
  std::unique_ptr<net::EntryVerifier> verifier_;
  std::unique_ptr<net::Agent> agent_;
  std::atomic<bool> stop_{false};
  absl::Status result_;
  std::thread thread_;
  std::mutex mu_;
  std::string log_;
};

// WaitFor polls `done` every 20 ms until it holds or `timeout` passes.
template <typename F>
bool WaitFor(F done, std::chrono::milliseconds timeout = 20s) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

size_t PeerCount(const NetnsNode& node) {
  auto uapi = net::UapiClient::ForInterface(node.interface);
  if (!uapi.ok()) return 0;
  auto device = uapi->Get();
  return device.ok() ? device->peers.size() : 0;
}

bool Ping(const NetnsCluster& lan, size_t from, size_t to) {
  return lan.Exec(from, {"ping", "-c", "1", "-W", "1", lan.node(to).tunnel_address}).ok();
}

BackgroundOptions PingerOptions() {
  BackgroundOptions options;
  options.capture_stdout = true;
  return options;
}

class NetAgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (auto reason = NetnsCluster::SkipReason()) GTEST_SKIP() << *reason;
    if (!NetnsCluster::HaveProgram("ping")) GTEST_SKIP() << "ping is not installed";
  }
};

TEST_F(NetAgentTest, ThreeNodesFromTheRegistryRotationLeaveAndAForgery) {
  NetnsCluster lan({.nodes = 3});
  ASSERT_TRUE(lan.Start());
  Cluster cluster("sqlite://" + (lan.scratch() / "registry.db").string());
  std::vector<std::unique_ptr<AgentNode>> agents;
  for (size_t i = 0; i < 3; ++i) {
    agents.push_back(std::make_unique<AgentNode>(cluster, lan.node(i), fmt::format("node-{}", i)));
  }
  // Every node gets the two others as peers, and traffic flows both ways between all.
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_TRUE(WaitFor([&] { return PeerCount(lan.node(i)) == 2; })) << "node " << i << ":\n"
                                                                      << agents[i]->log();
  }
  for (size_t i = 0; i < 3; ++i) {
    for (size_t j = 0; j < 3; ++j) {
      if (i == j) continue;
      EXPECT_TRUE(WaitFor([&] { return Ping(lan, i, j); }, 10s)) << i << "->" << j;
    }
  }
  const uint64_t epoch_before = agents[1]->agent().stats().epoch;

  // Rotation during a continuous ping (10 ms interval) from node 0 to node 1.
  Background pinger;
  ASSERT_TRUE(pinger.Start({"ip", "netns", "exec", lan.node(0).netns, "ping", "-i", "0.01", "-c",
                            "400", "-W", "1", lan.node(1).tunnel_address},
                           PingerOptions()));
  std::this_thread::sleep_for(1s);
  ASSERT_TRUE(agents[1]->agent().Rotate().ok());
  EXPECT_EQ(agents[1]->agent().stats().epoch, epoch_before + 1);
  EXPECT_EQ(pinger.Wait(60s), 0) << pinger.Stdout();
  (void)pinger.WaitLine("rtt", 1s);
  const std::string summary = pinger.Stdout();
  const size_t at = summary.find(" packets transmitted");
  ASSERT_NE(at, std::string::npos) << summary;
  std::printf("[rotation] %s\n", summary
                                     .substr(summary.rfind('\n', at) + 1,
                                             summary.find('\n', at) - summary.rfind('\n', at) - 1)
                                     .c_str());
  // Losses are reported, not asserted: how many replies a rotation costs depends on how fast the
  // peers learn the new key (wireguard-go queues up to 128 packets per peer meanwhile).
  EXPECT_THAT(summary, HasSubstr(" received"));
  // The others switched to node 1's new key; traffic flows.
  EXPECT_TRUE(WaitFor([&] { return Ping(lan, 2, 1) && Ping(lan, 1, 0); }, 10s));

  // A forged entry for node 2 (signed by an authority that is not the cluster's) is never
  // applied, and it is logged.
  auto other_authority = net::NewAuthorityFromSeed(crypto::RandomSecret(32).value()).value();
  auto forger = cluster.Signer("node-2", *other_authority);
  net::NodeEntry forged;
  forged.node = "node-2";
  forged.public_key = net::GenerateKeyPair().value().public_key();
  forged.endpoint = net::Endpoint::Parse("10.77.0.99:51820").value();
  forged.allowed_ips = {net::Cidr::Parse(lan.node(2).tunnel_address + "/32").value()};
  forged.epoch = 1000;
  forged.issued_at = std::chrono::system_clock::now();
  auto store = net::OpenRegistryStore(cluster.registry_uri).value();
  std::string genuine;
  const net::RegistrySnapshot snapshot = store->List().value();
  for (const auto& [node, record] : snapshot.records) {
    if (node == "node-2") genuine = record;
  }
  ASSERT_TRUE(store->Put("node-2", forger->Record(forged).value()).ok());
  ASSERT_TRUE(WaitFor([&] {
    return agents[0]->log().find("ignoring the registry entry of node-2") != std::string::npos;
  })) << agents[0]->log();
  EXPECT_TRUE(Ping(lan, 0, 2)) << "the forged entry replaced node 2's peer";
  {
    auto device = net::UapiClient::ForInterface(lan.node(0).interface).value().Get().value();
    EXPECT_EQ(device.FindPeer(forged.public_key), nullptr);
  }
  ASSERT_TRUE(store->Put("node-2", genuine).ok());

  // Node 2 leaves: its peer disappears from the others.
  const auto left = std::chrono::steady_clock::now();
  ASSERT_TRUE(agents[2]->agent().Leave().ok());
  ASSERT_TRUE(agents[2]->Stop().ok());
  EXPECT_TRUE(WaitFor([&] { return PeerCount(lan.node(0)) == 1 && PeerCount(lan.node(1)) == 1; }))
      << agents[0]->log();
  std::printf("[leave] peer removed from both others after %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - left)
                                         .count()));
  EXPECT_FALSE(Ping(lan, 0, 2));
  EXPECT_TRUE(Ping(lan, 0, 1));
  for (size_t i = 0; i < 2; ++i) EXPECT_TRUE(agents[i]->Stop().ok()) << agents[i]->log();
}

TEST_F(NetAgentTest, AgentsOnEtcdKeepTheirPeersWhenAMemberIsKilledAndCatchUp) {
  if (!NetnsCluster::HaveProgram("etcd")) GTEST_SKIP() << "etcd is not installed";
  EtcdCluster etcd({.members = 3});
  ASSERT_TRUE(etcd.Start());
  NetnsCluster lan({.nodes = 3});
  ASSERT_TRUE(lan.Start());
  std::string endpoints;
  for (const std::string& e : etcd.endpoints()) endpoints += (endpoints.empty() ? "" : ",") + e;
  Cluster cluster("etcd://" + endpoints);
  std::vector<std::unique_ptr<AgentNode>> agents;
  for (size_t i = 0; i < 2; ++i) {
    agents.push_back(std::make_unique<AgentNode>(cluster, lan.node(i), fmt::format("node-{}", i)));
  }
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(WaitFor([&] { return PeerCount(lan.node(i)) == 1; })) << agents[i]->log();
  }
  EXPECT_TRUE(WaitFor([&] { return Ping(lan, 0, 1); }, 10s));

  ASSERT_TRUE(etcd.KillMember(etcd.LeaderIndex()));
  // Configuration stays; traffic flows; a node joining now is picked up by both.
  EXPECT_TRUE(Ping(lan, 0, 1));
  agents.push_back(std::make_unique<AgentNode>(cluster, lan.node(2), "node-2"));
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(WaitFor([&] { return PeerCount(lan.node(i)) == 2; }, 30s)) << "node " << i << ":\n"
                                                                           << agents[i]->log();
  }
  EXPECT_TRUE(WaitFor([&] { return Ping(lan, 2, 0) && Ping(lan, 1, 2); }, 10s));
  for (auto& agent : agents) EXPECT_TRUE(agent->Stop().ok()) << agent->log();
}

}  // namespace
}  // namespace keywarden::testing
