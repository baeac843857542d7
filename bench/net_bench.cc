// keywarden_net_bench: how fast the network agent (issue 7, src/net/agent.cc) moves a key change
// to the other nodes, and what a reconcile costs with many registry entries. scripts/bench-net
// builds and runs it; docs/performance.md, "Network agent", has the figures.
//
// Part 1, propagation: three network namespaces with wireguard-go (tests/netns.h), one agent per
// node (in this process, one thread each, as tests/net_agent_test.cc runs them) on a SQLite
// registry and then on a 3-member etcd (tests/etcd_cluster.h). Node 1's key is rotated
// --rotations times; for each rotation the clock starts when Agent::Rotate() returns and stops
//   - key:  when both other interfaces (UapiClient::Get, polled every ~1 ms) list the new key;
//   - ping: when an ICMP echo from node 0 to node 1 through the tunnel (a raw socket in node 0's
//           namespace, one probe per ~1 ms) is answered again.
//
// Part 2, reconcile at scale: --sizes entries (distinct names, WireGuard keys and 10.x.y.z/32
// allowed IPs, each with its own authority-issued credential, as real nodes have) are written
// straight to the store with RegistryStore::Put; then one agent starts on a fresh wireguard-go
// interface and the bench measures
//   (a) first full reconcile: agent start until the interface holds every peer (Start's List,
//       key and publish, then List + verify of every record + Get + PlanPeers + one UAPI set);
//   (b) incremental: one entry re-published (new key, epoch + 1): from the start of the Put
//       until the agent applied it;
//   (c) resync with nothing changed: List + verify everything + Get + PlanPeers, no set.
// The agent is given a store and a verifier that time List and Verify (decorators; the agent
// sees only the interfaces), so each phase is split into its parts; AgentStats::last_reconcile
// is the agent's own figure for Get + PlanPeers (+ Set). Separately: Verify per record (fresh
// verifier: TOFU insert; again: TOFU hit) and PlanPeers alone.
//
// Needs root, wireguard-go, ip, and etcd for the etcd runs (skipped when missing). Everything
// it starts is stopped by PID and every namespace deleted when it ends, also on failure
// (Fail below unwinds through the harness destructors).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/net/agent.h"
#include "keywarden/net/registry.h"
#include "keywarden/net/wireguard.h"
#include "keywarden/status.h"
#include "tests/etcd_cluster.h"
#include "tests/netns.h"
#include "tests/subprocess.h"

namespace keywarden::bench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::NetnsCluster;

// Fail ends the run. The bench throws (project code does not) so that unwinding runs the
// harness destructors, which kill wireguard-go and etcd by PID and delete the namespaces; an
// exit() would leave them behind.
struct Fail : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename T>
T Must(absl::StatusOr<T> value, std::string_view what) {
  if (!value.ok()) {
    throw Fail(fmt::format("{}: {}", what, StatusMessage(value.status())));
  }
  return *std::move(value);
}
void Must(const absl::Status& status, std::string_view what) {
  if (!status.ok()) throw Fail(fmt::format("{}: {}", what, StatusMessage(status)));
}
void Must(const ::testing::AssertionResult& result, std::string_view what) {
  if (!result) throw Fail(fmt::format("{}: {}", what, result.message()));
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// Summary of a sample: median, p90 (nearest rank), max, in ms.
std::string Summary(std::vector<double> ms) {
  if (ms.empty()) return "no samples";
  std::sort(ms.begin(), ms.end());
  const auto rank = [&](double q) {
    size_t i = static_cast<size_t>(q * static_cast<double>(ms.size()) + 0.999999);
    return ms[std::clamp<size_t>(i, 1, ms.size()) - 1];
  };
  return fmt::format("median {:7.1f} ms  p90 {:7.1f} ms  max {:7.1f} ms  (n={})", rank(0.5),
                     rank(0.9), ms.back(), ms.size());
}

// RssMiB returns VmRSS of `pid` ("self" by default) in MiB, or -1.
double RssMiB(const std::string& pid = "self") {
  std::ifstream in("/proc/" + pid + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  }
  return -1;
}

// WireGuardPid finds the wireguard-go process serving `interface` (its last argument).
std::string WireGuardPid(const std::string& interface) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.empty() || name[0] < '0' || name[0] > '9') continue;
    std::ifstream in(entry.path() / "cmdline");
    std::string cmdline((std::istreambuf_iterator<char>(in)), {});
    if (cmdline.find("wireguard-go") != std::string::npos &&
        cmdline.find(interface) != std::string::npos) {
      return name;
    }
  }
  return "";
}

// ---- Test authority and nodes -----------------------------------------------------------------

// Cluster is the registry's authority and cluster id (what the key service holds).
struct Cluster {
  std::unique_ptr<net::Authority> authority;
  std::string cluster_id;

  Cluster() {
    authority =
        Must(net::NewAuthorityFromSeed(Must(crypto::RandomSecret(32), "seed")), "authority");
    const SecretBytes id = Must(crypto::RandomSecret(32), "cluster id");
    cluster_id = crypto::HexEncode(id.Reveal(InsecureSecretAccess::Get()));
  }

  std::unique_ptr<net::NodeSigner> Signer(const std::string& node, size_t ek) const {
    net::NodeSigningKey key = Must(net::GenerateNodeSigningKey(), "signing key");
    net::NodeCredential credential;
    credential.node = node;
    credential.signing_key = key.public_key();
    credential.cluster_id = cluster_id;
    credential.ek_fingerprint = fmt::format("{:064x}", ek);
    credential.not_after = std::chrono::system_clock::now() + 24h;
    const std::vector<uint8_t> bytes = Must(authority->Issue(credential), "issue");
    return Must(net::NewNodeSigner(bytes, std::move(key)), "signer");
  }
  std::unique_ptr<net::EntryVerifier> Verifier() const {
    return Must(net::NewEntryVerifier(authority->public_key(), cluster_id), "verifier");
  }
};

// TimedStore forwards to a store and records when each List started and how long it took.
class TimedStore : public net::RegistryStore {
 public:
  explicit TimedStore(net::RegistryStore& inner) : inner_(inner) {}
  absl::Status Put(std::string_view node, std::string_view record) override {
    return inner_.Put(node, record);
  }
  absl::Status Delete(std::string_view node) override { return inner_.Delete(node); }
  absl::StatusOr<net::RegistrySnapshot> List() override {
    const auto started = Clock::now();
    auto snapshot = inner_.List();
    std::lock_guard<std::mutex> lock(mu_);
    lists_.push_back({started, Clock::now() - started});
    return snapshot;
  }
  absl::Status Watch(int64_t after_revision,
                     const std::function<bool(const net::RegistryEvent&)>& on_event,
                     const std::atomic<bool>& stop) override {
    return inner_.Watch(after_revision, on_event, stop);
  }
  std::string Describe() const override { return inner_.Describe(); }

  struct ListCall {
    Clock::time_point started;
    Clock::duration took;
  };
  std::vector<ListCall> lists() {
    std::lock_guard<std::mutex> lock(mu_);
    return lists_;
  }

 private:
  net::RegistryStore& inner_;
  std::mutex mu_;
  std::vector<ListCall> lists_;
};

// TimedVerifier forwards to a verifier and sums the time spent in Verify.
class TimedVerifier : public net::EntryVerifier {
 public:
  explicit TimedVerifier(std::unique_ptr<net::EntryVerifier> inner) : inner_(std::move(inner)) {}
  absl::StatusOr<net::VerifiedEntry> Verify(std::string_view node,
                                            std::string_view record) override {
    const auto started = Clock::now();
    auto verified = inner_->Verify(node, record);
    const auto ended = Clock::now();
    calls_ += 1;
    nanos_ += std::chrono::duration_cast<std::chrono::nanoseconds>(ended - started).count();
    last_end_ = ended.time_since_epoch().count();
    return verified;
  }
  uint64_t calls() const { return calls_; }
  double total_ms() const { return static_cast<double>(nanos_.load()) / 1e6; }
  Clock::time_point last_end() const {
    return Clock::time_point(Clock::duration(last_end_.load()));
  }

 private:
  std::unique_ptr<net::EntryVerifier> inner_;
  std::atomic<uint64_t> calls_{0};
  std::atomic<int64_t> nanos_{0};
  std::atomic<Clock::rep> last_end_{0};
};

// RunningAgent is one agent on its own thread.
class RunningAgent {
 public:
  RunningAgent(net::AgentOptions options, net::RegistryStore& store, net::EntryVerifier& verifier,
               net::NodeSigner& signer, const std::string& interface) {
    options.log = [this](std::string_view level, std::string_view message) {
      if (level == "info") return;
      std::lock_guard<std::mutex> lock(mu_);
      if (warnings_.size() < 20) warnings_.push_back(fmt::format("{}: {}", level, message));
    };
    agent_ = Must(net::Agent::New(std::move(options), store, verifier, signer,
                                  Must(net::UapiClient::ForInterface(interface), "uapi")),
                  "agent");
    thread_ = std::thread([this] { result_ = agent_->Run(stop_); });
  }
  ~RunningAgent() { Stop(); }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (!result_.ok()) std::fprintf(stderr, "agent ended: %s\n", StatusMessage(result_).c_str());
  }
  net::Agent& agent() { return *agent_; }
  std::string warnings() {
    std::lock_guard<std::mutex> lock(mu_);
    std::string all;
    for (const auto& w : warnings_) all += "  " + w + "\n";
    return all;
  }

 private:
  std::unique_ptr<net::Agent> agent_;
  std::atomic<bool> stop_{false};
  absl::Status result_;
  std::thread thread_;
  std::mutex mu_;
  std::vector<std::string> warnings_;
};

template <typename F>
bool WaitFor(F done, std::chrono::milliseconds timeout, std::chrono::microseconds every = 1ms) {
  const auto deadline = Clock::now() + timeout;
  while (!done()) {
    if (Clock::now() > deadline) return false;
    std::this_thread::sleep_for(every);
  }
  return true;
}

// ---- ICMP through the tunnel ------------------------------------------------------------------

// IcmpProber sends ICMP echo requests from inside a namespace (a raw socket created by a thread
// that entered it; the socket stays in that namespace) and reads the replies.
class IcmpProber {
 public:
  IcmpProber(const std::string& netns, const std::string& target) {
    std::thread([&] {
      const int ns = open(("/var/run/netns/" + netns).c_str(), O_RDONLY | O_CLOEXEC);
      if (ns < 0) return;
      if (setns(ns, CLONE_NEWNET) == 0) {
        fd_ = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_ICMP);
      }
      close(ns);
    }).join();
    if (fd_ < 0) throw Fail("cannot open a raw ICMP socket in " + netns);
    target_.sin_family = AF_INET;
    if (inet_pton(AF_INET, target.c_str(), &target_.sin_addr) != 1) throw Fail("bad " + target);
  }
  ~IcmpProber() { close(fd_); }

  // NewRound starts a new echo identifier: only replies to this round's probes count.
  void NewRound() {
    id_ = static_cast<uint16_t>(id_ + 1);
    seq_ = 0;
  }
  void Send() {
    uint8_t packet[16] = {};
    packet[0] = ICMP_ECHO;
    packet[4] = static_cast<uint8_t>(id_ >> 8);
    packet[5] = static_cast<uint8_t>(id_);
    packet[6] = static_cast<uint8_t>(seq_ >> 8);
    packet[7] = static_cast<uint8_t>(seq_);
    ++seq_;
    uint32_t sum = 0;
    for (size_t i = 0; i < sizeof(packet); i += 2) sum += (packet[i] << 8) | packet[i + 1];
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    const uint16_t checksum = static_cast<uint16_t>(~sum);
    packet[2] = static_cast<uint8_t>(checksum >> 8);
    packet[3] = static_cast<uint8_t>(checksum);
    (void)sendto(fd_, packet, sizeof(packet), 0, reinterpret_cast<const sockaddr*>(&target_),
                 sizeof(target_));
  }
  // Answered drains the socket and says whether a reply of this round arrived.
  bool Answered() {
    uint8_t buffer[1500];
    bool answered = false;
    for (;;) {
      const ssize_t n = recv(fd_, buffer, sizeof(buffer), 0);
      if (n <= 0) break;
      const size_t ihl = static_cast<size_t>(buffer[0] & 0x0f) * 4;
      if (static_cast<size_t>(n) < ihl + 8) continue;
      const uint8_t* icmp = buffer + ihl;
      const uint16_t id = static_cast<uint16_t>((icmp[4] << 8) | icmp[5]);
      if (icmp[0] == ICMP_ECHOREPLY && id == id_) answered = true;
    }
    return answered;
  }
  // PingUntilAnswered probes every ~1 ms until a reply of a new round comes.
  bool PingUntilAnswered(std::chrono::milliseconds timeout) {
    NewRound();
    return WaitFor(
        [&] {
          Send();
          return Answered();
        },
        timeout);
  }

 private:
  int fd_ = -1;
  sockaddr_in target_{};
  uint16_t id_ = static_cast<uint16_t>(getpid() * 7);
  uint16_t seq_ = 0;
};

// ---- Part 1: propagation ----------------------------------------------------------------------

constexpr uint16_t kPort = 51820;

net::AgentOptions NodeOptions(const testing::NetnsNode& node, const std::string& name,
                              uint16_t port) {
  net::AgentOptions options;
  options.node = name;
  options.endpoint =
      Must(net::Endpoint::Parse(node.underlay_address + ":" + std::to_string(port)), "endpoint");
  options.allowed_ips = {Must(net::Cidr::Parse(node.tunnel_address + "/32"), "cidr")};
  options.listen_port = port;
  options.resync_every = 60s;
  return options;
}

void Propagation(const std::string& label, const std::string& uri, NetnsCluster& lan,
                 int rotations) {
  std::printf("\n== propagation, %s (%s), %d rotations of node-1 ==\n", label.c_str(), uri.c_str(),
              rotations);
  Cluster cluster;
  struct Node {
    std::unique_ptr<net::RegistryStore> store;
    std::unique_ptr<net::NodeSigner> signer;
    std::unique_ptr<net::EntryVerifier> verifier;
    std::unique_ptr<RunningAgent> agent;
  };
  std::vector<Node> nodes(3);
  for (size_t i = 0; i < 3; ++i) {
    nodes[i].store = Must(net::OpenRegistryStore(uri), "open store");
    nodes[i].signer = cluster.Signer(fmt::format("node-{}", i), i + 1);
    nodes[i].verifier = cluster.Verifier();
    nodes[i].agent = std::make_unique<RunningAgent>(
        NodeOptions(lan.node(i), fmt::format("node-{}", i), kPort), *nodes[i].store,
        *nodes[i].verifier, *nodes[i].signer, lan.node(i).interface);
  }
  std::vector<net::UapiClient> uapi;
  for (size_t i = 0; i < 3; ++i) {
    uapi.push_back(Must(net::UapiClient::ForInterface(lan.node(i).interface), "uapi"));
  }
  for (size_t i = 0; i < 3; ++i) {
    if (!WaitFor([&] { return nodes[i].agent->agent().stats().peers == 2; }, 30s)) {
      throw Fail(fmt::format("node {} never got its peers:\n{}", i, nodes[i].agent->warnings()));
    }
  }
  IcmpProber prober(lan.node(0).netns, lan.node(1).tunnel_address);
  if (!prober.PingUntilAnswered(10s)) throw Fail("no ping from node 0 to node 1");

  std::vector<double> key_ms, ping_ms, first_ms;
  for (int r = 0; r < rotations; ++r) {
    std::this_thread::sleep_for(300ms);  // steady state between rotations
    if (!prober.PingUntilAnswered(10s)) throw Fail("no ping before a rotation");
    Must(nodes[1].agent->agent().Rotate(), "rotate");
    const auto rotated = Clock::now();
    prober.NewRound();
    const net::PublicKey key = *Must(uapi[1].Get(), "get node 1").public_key;
    std::optional<Clock::time_point> seen[3], answered;
    const bool done = WaitFor(
        [&] {
          prober.Send();
          for (size_t i : {size_t{0}, size_t{2}}) {
            if (seen[i]) continue;
            const net::Device device = Must(uapi[i].Get(), "get");
            if (device.FindPeer(key) != nullptr) seen[i] = Clock::now();
          }
          if (!answered && prober.Answered()) answered = Clock::now();
          return seen[0] && seen[2] && answered;
        },
        15s);
    if (!done) throw Fail(fmt::format("rotation {} did not propagate within 15 s", r));
    key_ms.push_back(Ms(std::max(*seen[0], *seen[2]) - rotated));
    first_ms.push_back(Ms(std::min(*seen[0], *seen[2]) - rotated));
    ping_ms.push_back(Ms(*answered - rotated));
  }
  std::printf("  new key on the first other node : %s\n", Summary(first_ms).c_str());
  std::printf("  new key on both other nodes     : %s\n", Summary(key_ms).c_str());
  std::printf("  ping 0->1 answered again        : %s\n", Summary(ping_ms).c_str());
  for (auto& node : nodes) node.agent->Stop();
}

// ---- Part 2: reconcile at scale ---------------------------------------------------------------

// Entries are the records written to the store, with their signers for later changes.
struct Entries {
  std::vector<std::string> names;
  std::vector<std::unique_ptr<net::NodeSigner>> signers;
  std::vector<net::NodeEntry> entries;
  std::vector<std::string> records;
};

net::Cidr AllowedIp(size_t i) {
  // 10.80.0.0 upwards, one /32 each: clear of the harness' 10.77/10.78.
  const uint32_t n = 0x0a500000u + static_cast<uint32_t>(i) + 1;
  return net::Cidr::Host(
      net::IpAddress::V4({static_cast<uint8_t>(n >> 24), static_cast<uint8_t>(n >> 16),
                          static_cast<uint8_t>(n >> 8), static_cast<uint8_t>(n)}));
}

Entries MakeEntries(const Cluster& cluster, size_t count) {
  Entries out;
  for (size_t i = 0; i < count; ++i) {
    const std::string name = fmt::format("peer-{:05}", i);
    out.signers.push_back(cluster.Signer(name, 1000 + i));
    net::NodeEntry entry;
    entry.node = name;
    entry.public_key = Must(net::GenerateKeyPair(), "key pair").public_key();
    entry.endpoint =
        Must(net::Endpoint::Parse(fmt::format("10.77.{}.{}:51820", 1 + i / 250, 1 + i % 250)),
             "endpoint");
    entry.allowed_ips = {AllowedIp(i)};
    entry.epoch = 1;
    entry.issued_at = std::chrono::system_clock::now();
    out.records.push_back(Must(out.signers.back()->Record(entry), "record"));
    out.names.push_back(name);
    out.entries.push_back(std::move(entry));
  }
  return out;
}

// WriteEntries puts the first `count` records with `threads` writers (each its own store).
void WriteEntries(const std::string& uri, const Entries& entries, size_t count, size_t threads) {
  std::vector<std::thread> writers;
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::string error;
  for (size_t t = 0; t < threads; ++t) {
    writers.emplace_back([&] {
      auto store = net::OpenRegistryStore(uri, 30s);
      if (!store.ok()) {
        std::lock_guard<std::mutex> lock(mu);
        error = StatusMessage(store.status());
        return;
      }
      for (size_t i = next++; i < count; i = next++) {
        if (absl::Status put = (*store)->Put(entries.names[i], entries.records[i]); !put.ok()) {
          std::lock_guard<std::mutex> lock(mu);
          error = StatusMessage(put);
          return;
        }
      }
    });
  }
  for (auto& w : writers) w.join();
  if (!error.empty()) throw Fail("writing entries: " + error);
}

void VerifyCost(const Cluster& cluster, const Entries& entries, size_t count) {
  auto verifier = cluster.Verifier();
  for (int pass = 0; pass < 2; ++pass) {
    const auto started = Clock::now();
    for (size_t i = 0; i < count; ++i) {
      (void)Must(verifier->Verify(entries.names[i], entries.records[i]), "verify");
    }
    const double us = std::chrono::duration<double, std::micro>(Clock::now() - started).count();
    std::printf("  Verify, %s: %.1f us/record (%zu records, %.0f ms)\n",
                pass == 0 ? "fresh verifier (TOFU insert)" : "known names (TOFU hit)  ",
                us / static_cast<double>(count), count, us / 1000);
  }
}

// PlanCost times PlanPeers alone on an interface that already has `count` peers.
void PlanCost(const Entries& entries, size_t count) {
  net::Device device;
  std::vector<net::DesiredPeer> desired;
  for (size_t i = 0; i < count; ++i) {
    net::PeerInfo peer;
    peer.public_key = entries.entries[i].public_key;
    peer.endpoint = entries.entries[i].endpoint;
    peer.allowed_ips = entries.entries[i].allowed_ips;
    device.peers.push_back(peer);
    desired.push_back({entries.names[i], peer.public_key, *peer.endpoint, peer.allowed_ips, 1});
  }
  // wireguard-go lists peers in its own order; the registry comes by name.
  std::reverse(device.peers.begin(), device.peers.end());
  for (int changed = 0; changed < 2; ++changed) {
    if (changed) desired[count / 2].public_key[0] ^= 1;
    double best = 1e18;
    size_t updates = 0;
    for (int rep = 0; rep < 3; ++rep) {
      const auto started = Clock::now();
      updates = net::PlanPeers(device, desired, 0).size();
      best = std::min(best, Ms(Clock::now() - started));
    }
    std::printf("  PlanPeers, %5zu peers, %s: %8.2f ms (best of 3; %zu updates)\n", count,
                changed ? "one key changed" : "up to date     ", best, updates);
  }
}

void Reconcile(const std::string& label, const std::string& uri, NetnsCluster& lan,
               const Cluster& cluster, const Entries& entries, size_t count, int cycles,
               uint16_t port) {
  std::printf("\n== reconcile, %s, %zu entries ==\n", label.c_str(), count);
  const auto write_started = Clock::now();
  WriteEntries(uri, entries, count, label == "etcd" ? 8 : 1);
  std::printf("  (wrote %zu entries in %.0f ms)\n", count, Ms(Clock::now() - write_started));

  std::string interface;
  Must(lan.StartWireGuard(0, fmt::format("r{}", port % 100), &interface), "wireguard-go");
  auto inner_store = Must(net::OpenRegistryStore(uri, 30s), "open store");
  auto change_store = Must(net::OpenRegistryStore(uri, 30s), "open store");
  TimedStore store(*inner_store);
  TimedVerifier verifier(cluster.Verifier());
  auto signer = cluster.Signer("bench-agent", 1);
  net::AgentOptions options = NodeOptions(lan.node(0), "bench-agent", port);
  options.resync_every = 4s;
  const net::UapiClient uapi = Must(net::UapiClient::ForInterface(interface), "uapi");

  const double rss_before = RssMiB();
  const auto started = Clock::now();
  RunningAgent agent(options, store, verifier, *signer, interface);
  if (!WaitFor([&] { return agent.agent().stats().peers == count; }, 600s)) {
    throw Fail("the agent never configured every peer:\n" + agent.warnings());
  }
  const auto full = Clock::now() - started;
  const net::AgentStats after_full = agent.agent().stats();
  const auto lists = store.lists();
  const double verify_ms = verifier.total_ms();
  const net::Device device = Must(uapi.Get(), "get");
  if (device.peers.size() != count) {
    throw Fail(fmt::format("the interface has {} peers, not {}", device.peers.size(), count));
  }
  std::printf(
      "  (a) first full reconcile: %8.1f ms  [List %.1f ms, Verify x%llu %.1f ms, "
      "Get+PlanPeers+Set %.1f ms (agent's last_reconcile)]\n",
      Ms(full), lists.size() > 1 ? Ms(lists[1].took) : -1.0,
      static_cast<unsigned long long>(verifier.calls()), verify_ms, Ms(after_full.last_reconcile));

  std::vector<double> incremental, incremental_reconcile, watch_to_verify, put_latency, resync,
      resync_list, resync_verify, resync_reconcile;
  for (int c = 0; c < cycles; ++c) {
    // (c) the next periodic resync, nothing changed.
    const size_t lists_before = store.lists().size();
    const auto reconcile_before = agent.agent().stats().last_reconcile;
    const double verify_before = verifier.total_ms();
    if (!WaitFor([&] { return store.lists().size() > lists_before; }, 30s, 200us)) {
      throw Fail("no resync");
    }
    if (!WaitFor([&] { return agent.agent().stats().last_reconcile != reconcile_before; }, 60s,
                 200us)) {
      throw Fail("resync did not finish");
    }
    const auto resync_end = Clock::now();
    const auto call = store.lists().back();
    resync.push_back(Ms(resync_end - call.started));
    resync_list.push_back(Ms(call.took));
    resync_verify.push_back(verifier.total_ms() - verify_before);
    resync_reconcile.push_back(Ms(agent.agent().stats().last_reconcile));

    // (b) one entry changes: a new key at epoch 2 + c.
    const size_t k = (static_cast<size_t>(c) * 7919 + 13) % count;
    net::NodeEntry entry = entries.entries[k];
    entry.public_key = Must(net::GenerateKeyPair(), "key pair").public_key();
    entry.epoch = 2 + static_cast<uint64_t>(c);
    entry.issued_at = std::chrono::system_clock::now();
    const std::string record = Must(entries.signers[k]->Record(entry), "record");
    const uint64_t reconciles = agent.agent().stats().reconciles;
    const auto put = Clock::now();
    Must(change_store->Put(entries.names[k], record), "put");
    put_latency.push_back(Ms(Clock::now() - put));
    if (!WaitFor([&] { return agent.agent().stats().reconciles > reconciles; }, 30s, 200us)) {
      throw Fail("the change was not applied:\n" + agent.warnings());
    }
    incremental.push_back(Ms(Clock::now() - put));
    watch_to_verify.push_back(Ms(verifier.last_end() - put));
    incremental_reconcile.push_back(Ms(agent.agent().stats().last_reconcile));
    if (Must(uapi.Get(), "get").FindPeer(entry.public_key) == nullptr) {
      throw Fail("the changed key is not on the interface");
    }
  }
  std::printf("  (b) one entry changed -> applied: %s\n", Summary(incremental).c_str());
  std::printf("      Put returned (store write)               : %s\n",
              Summary(put_latency).c_str());
  std::printf("      Put started -> entry verified (watch)    : %s\n",
              Summary(watch_to_verify).c_str());
  std::printf("      of which Get+PlanPeers+Set              : %s\n",
              Summary(incremental_reconcile).c_str());
  std::printf("  (c) resync, nothing changed: %s\n", Summary(resync).c_str());
  std::printf("      List %s\n      Verify (all) %s\n      Get+PlanPeers %s\n",
              Summary(resync_list).c_str(), Summary(resync_verify).c_str(),
              Summary(resync_reconcile).c_str());
  const std::string wg_pid = WireGuardPid(interface);
  std::printf(
      "  RSS: bench process +%.1f MiB with the agent running (%.1f -> %.1f MiB); "
      "wireguard-go %.1f MiB\n",
      RssMiB() - rss_before, rss_before, RssMiB(), wg_pid.empty() ? -1.0 : RssMiB(wg_pid));
  if (std::string w = agent.warnings(); !w.empty()) std::printf("  agent warnings:\n%s", w.c_str());
  agent.Stop();
}

struct Flags {
  int rotations = 20;
  int cycles = 5;
  std::vector<size_t> sizes = {1000, 10000};
  bool sqlite = true;
  bool etcd = true;
  bool propagation = true;
  bool reconcile = true;
};

Flags ParseFlags(int argc, char** argv) {
  Flags flags;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Fail(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--rotations") {
      flags.rotations = std::stoi(value());
    } else if (arg == "--cycles") {
      flags.cycles = std::stoi(value());
    } else if (arg == "--sizes") {
      flags.sizes.clear();
      std::string list = value();
      for (size_t at = 0; at <= list.size();) {
        const size_t comma = std::min(list.find(',', at), list.size());
        flags.sizes.push_back(std::stoul(list.substr(at, comma - at)));
        at = comma + 1;
      }
    } else if (arg == "--stores") {
      const std::string stores = value();
      flags.sqlite = stores.find("sqlite") != std::string::npos;
      flags.etcd = stores.find("etcd") != std::string::npos;
    } else if (arg == "--parts") {
      const std::string parts = value();
      flags.propagation = parts.find("propagation") != std::string::npos;
      flags.reconcile = parts.find("reconcile") != std::string::npos;
    } else {
      throw Fail(
          "usage: keywarden_net_bench [--rotations N] [--cycles N] [--sizes 1000,10000] "
          "[--stores sqlite,etcd] [--parts propagation,reconcile]");
    }
  }
  return flags;
}

int Main(int argc, char** argv) {
  const Flags flags = ParseFlags(argc, argv);
  if (auto reason = NetnsCluster::SkipReason()) {
    std::fprintf(stderr, "keywarden_net_bench: cannot run: %s\n", reason->c_str());
    return 1;
  }
  const bool etcd = flags.etcd && NetnsCluster::HaveProgram("etcd");
  if (flags.etcd && !etcd) std::fprintf(stderr, "etcd is not installed: etcd runs skipped\n");

  // SQLite files on tmpfs when there is one: the runs measure the agent, not the disk.
  testing::TempDir dir(std::filesystem::exists("/dev/shm") ? "/dev/shm/kw-net-bench"
                                                           : "kw-net-bench");
  std::unique_ptr<testing::EtcdCluster> etcd_cluster;
  std::string etcd_uri;
  if (etcd) {
    etcd_cluster =
        std::make_unique<testing::EtcdCluster>(testing::EtcdClusterOptions{.members = 3});
    Must(etcd_cluster->Start(), "etcd");
    for (const std::string& e : etcd_cluster->endpoints()) {
      etcd_uri += (etcd_uri.empty() ? "etcd://" : ",") + e;
    }
  }
  NetnsCluster lan({.nodes = 3});
  Must(lan.Start(), "namespaces");

  if (flags.propagation) {
    if (flags.sqlite) {
      Propagation("sqlite", "sqlite://" + (dir.path() / "propagation.db").string(), lan,
                  flags.rotations);
    }
    if (etcd) Propagation("etcd", etcd_uri + "?prefix=/kwbench-propagation/", lan, flags.rotations);
  }
  if (flags.reconcile && !flags.sizes.empty()) {
    Cluster cluster;
    const size_t most = *std::max_element(flags.sizes.begin(), flags.sizes.end());
    const auto made = Clock::now();
    const Entries entries = MakeEntries(cluster, most);
    std::printf("\n== signed %zu entries (credential + entry) in %.0f ms ==\n", most,
                Ms(Clock::now() - made));
    for (size_t count : flags.sizes) {
      VerifyCost(cluster, entries, count);
      PlanCost(entries, count);
    }
    uint16_t port = 51900;
    for (size_t count : flags.sizes) {
      if (flags.sqlite) {
        Reconcile(
            "sqlite",
            fmt::format("sqlite://{}", (dir.path() / fmt::format("reg-{}.db", count)).string()),
            lan, cluster, entries, count, flags.cycles, port++);
      }
      if (etcd) {
        Reconcile("etcd", fmt::format("{}?prefix=/kwbench-{}/", etcd_uri, count), lan, cluster,
                  entries, count, flags.cycles, port++);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace keywarden::bench

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  try {
    return keywarden::bench::Main(argc, argv);
  } catch (const keywarden::bench::Fail& failure) {
    std::fprintf(stderr, "keywarden_net_bench: %s\n", failure.what());
    return 1;
  }
}
