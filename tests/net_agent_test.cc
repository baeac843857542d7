// The network agent end to end: three nodes in network namespaces (tests/netns.h) with real
// wireguard-go, each with its own agent (in this process, one thread each) on a shared registry
// (SQLite, then etcd). Checked: tunnel traffic between all nodes configured only from the
// registry; key rotation during a continuous ping (losses printed as "[rotation] ..."); a node that
// leaves disappears from the others' interfaces; a forged entry is never applied; an etcd member
// killed under the agents changes nothing; a TCP transfer across two rotations arrives whole
// (retransmissions and the longest stall printed as "[tcp rotation] ..."), and a capture on the
// underlay bridge shows only WireGuard UDP, never the plaintext.
//
// Credentials are issued here with a test authority (what the key service's authority does for
// an attested node).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <sstream>
#include <thread>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/net/agent.h"
#include "keywarden/net/registry.h"
#include "keywarden/status.h"
#include "tests/etcd_cluster.h"
#include "tests/netns.h"
#include "tests/pcap.h"
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

bool Ping(const NetnsCluster& lan, size_t from, size_t to) {
  return lan.Exec(from, {"ping", "-c", "1", "-W", "1", lan.node(to).tunnel_address}).ok();
}

BackgroundOptions PingerOptions() {
  BackgroundOptions options;
  options.capture_stdout = true;
  return options;
}

// StartMesh starts an agent named node-I for every node of `lan` on `cluster`'s registry, then
// waits until each interface has all the other nodes as peers and every node pings every other
// through the tunnel.
::testing::AssertionResult StartMesh(const NetnsCluster& lan, const Cluster& cluster,
                                     std::vector<std::unique_ptr<AgentNode>>& agents) {
  for (size_t i = 0; i < lan.size(); ++i) {
    agents.push_back(std::make_unique<AgentNode>(cluster, lan.node(i), fmt::format("node-{}", i)));
  }
  for (size_t i = 0; i < lan.size(); ++i) {
    if (!WaitFor([&] { return PeerCount(lan.node(i)) == lan.size() - 1; })) {
      return ::testing::AssertionFailure() << "node " << i << " lacks peers:\n" << agents[i]->log();
    }
  }
  for (size_t i = 0; i < lan.size(); ++i) {
    for (size_t j = 0; j < lan.size(); ++j) {
      if (i != j && !WaitFor([&] { return Ping(lan, i, j); }, 10s)) {
        return ::testing::AssertionFailure() << "no ping " << i << "->" << j;
      }
    }
  }
  return ::testing::AssertionSuccess();
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
  // Every node gets the two others as peers, and traffic flows both ways between all.
  ASSERT_TRUE(StartMesh(lan, cluster, agents));
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

// TcpRetransmits returns the TCP RetransSegs counter of node i's namespace (/proc/net/snmp).
int64_t TcpRetransmits(const NetnsCluster& lan, size_t i) {
  const RunResult snmp = lan.Exec(i, {"cat", "/proc/net/snmp"});
  std::istringstream lines(snmp.stdout_text);
  std::string header, values, line;
  while (std::getline(lines, line)) {
    if (line.rfind("Tcp: ", 0) != 0) continue;
    if (header.empty()) {
      header = line;
    } else {
      values = line;
      break;
    }
  }
  std::istringstream names(header), numbers(values);
  std::string name, number;
  while (names >> name && numbers >> number) {
    if (name == "RetransSegs") return std::stoll(number);
  }
  ADD_FAILURE() << "no Tcp RetransSegs in /proc/net/snmp:\n" << snmp.stdout_text;
  return -1;
}

// A TCP receiver and a paced sender (python3, in the nodes' namespaces). The payload is
// "KEYWARDEN-PLAIN!" repeated, so that a capture can look for it; both sides print the byte
// count and SHA-256, the sender also the longest time one 64 KiB write waited.
constexpr char kReceiver[] = R"(import hashlib, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5001)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print("received", n, h.hexdigest(), flush=True))";
constexpr char kSender[] = R"(import hashlib, socket, sys, time
chunk = b"KEYWARDEN-PLAIN!" * 4096; count = int(sys.argv[2]); pause = float(sys.argv[3])
s = socket.create_connection((sys.argv[1], 5001), timeout=60); h = hashlib.sha256(); stall = 0.0
for i in range(count):
    t = time.monotonic(); s.sendall(chunk); stall = max(stall, time.monotonic() - t)
    h.update(chunk); time.sleep(pause)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print("sent", count * len(chunk), h.hexdigest(), "stall_ms", round(stall * 1000), flush=True))";

TEST_F(NetAgentTest, ATcpTransferSurvivesRotationsAndTheUnderlayCarriesOnlyWireGuard) {
  if (!NetnsCluster::HaveProgram("tcpdump") || !NetnsCluster::HaveProgram("python3")) {
    GTEST_SKIP() << "needs tcpdump and python3";
  }
  NetnsCluster lan({.nodes = 3});
  ASSERT_TRUE(lan.Start());
  Cluster cluster("sqlite://" + (lan.scratch() / "registry.db").string());
  std::vector<std::unique_ptr<AgentNode>> agents;
  ASSERT_TRUE(StartMesh(lan, cluster, agents));

  // Everything between the three nodes crosses the bridge: capture there.
  PacketCapture capture;
  ASSERT_TRUE(capture.Start(lan.bridge_netns(), "br0", lan.scratch(), "underlay"));
  const int64_t retransmits_before = TcpRetransmits(lan, 0);
  Background receiver, sender;
  ASSERT_TRUE(receiver.Start({"ip", "netns", "exec", lan.node(1).netns, "python3", "-c", kReceiver,
                              lan.node(1).tunnel_address},
                             PingerOptions()));
  ASSERT_TRUE(receiver.WaitLine("listening", 10s).has_value()) << receiver.Log();
  // 640 writes of 64 KiB (40 MiB) over about 5 s, so that both rotations fall inside it.
  ASSERT_TRUE(sender.Start({"ip", "netns", "exec", lan.node(0).netns, "python3", "-c", kSender,
                            lan.node(1).tunnel_address, "640", "0.007"},
                           PingerOptions()));
  // Meanwhile node 2 pings node 0 with the plaintext pattern as payload.
  const RunResult ping =
      lan.Exec(2, {"ping", "-n", "-c", "5", "-i", "0.2", "-W", "2", "-p",
                   "4b455957415244454e2d504c41494e21", lan.node(0).tunnel_address});
  EXPECT_TRUE(ping.ok()) << ping;
  const uint64_t epoch1 = agents[1]->agent().stats().epoch;
  const uint64_t epoch0 = agents[0]->agent().stats().epoch;
  ASSERT_TRUE(agents[1]->agent().Rotate().ok());  // the receiver's key
  std::this_thread::sleep_for(1500ms);
  ASSERT_TRUE(agents[0]->agent().Rotate().ok());  // the sender's key
  EXPECT_EQ(agents[1]->agent().stats().epoch, epoch1 + 1);
  EXPECT_EQ(agents[0]->agent().stats().epoch, epoch0 + 1);
  EXPECT_TRUE(sender.Running()) << "the transfer ended before the second rotation";

  EXPECT_EQ(sender.Wait(120s), 0) << sender.Stdout() << sender.Log();
  EXPECT_EQ(receiver.Wait(30s), 0) << receiver.Stdout() << receiver.Log();
  const auto sent = sender.WaitLine("sent ", 1s);
  const auto received = receiver.WaitLine("received ", 1s);
  ASSERT_TRUE(sent.has_value() && received.has_value()) << sender.Stdout() << receiver.Stdout();
  // "BYTES SHA256 stall_ms N" and "BYTES SHA256": the same bytes arrived.
  EXPECT_EQ(sent->substr(0, received->size()), *received);
  EXPECT_THAT(*received, ::testing::StartsWith(std::to_string(640 * 65536) + " "));
  const int64_t retransmits = TcpRetransmits(lan, 0) - retransmits_before;
  std::printf(
      "[tcp rotation] 40 MiB node-0 -> node-1 across a rotation of each end: "
      "%lld TCP segments retransmitted, longest 64 KiB write %s\n",
      static_cast<long long>(retransmits), sent->substr(sent->find("stall_ms ") + 9).c_str());
  RecordProperty("tcp_rotation_retransmits", static_cast<int>(retransmits));

  const std::vector<Frame> frames = capture.Stop();
  const Census census = Classify(
      frames, {'K', 'E', 'Y', 'W', 'A', 'R', 'D', 'E', 'N', '-', 'P', 'L', 'A', 'I', 'N', '!'},
      kPort);
  EXPECT_GT(census.wireguard_udp, 1000) << frames.size() << " frames";
  EXPECT_THAT(census.other, ::testing::IsEmpty());
  EXPECT_FALSE(census.pattern_seen) << "plaintext crossed the underlay";
  std::printf("[underlay] %zu frames on br0: %d WireGuard UDP, %d ARP, %zu other\n", frames.size(),
              census.wireguard_udp, census.arp, census.other.size());
  for (auto& agent : agents) EXPECT_TRUE(agent->Stop().ok()) << agent->log();
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
