// The `keywarden net agent` and `keywarden net status` commands as users run them
// (docs/network.md, "Commands"):
//   - bad flags are refused with messages that name the value (no TPM, no root needed);
//   - an unreachable join service and a node that never joined (PCR 15 zero) are refused and
//     nothing is published (swtpm and `keywarden serve`; the interface is a stand-in socket that
//     is never used);
//   - end to end: `keywarden init` + `serve` with the join service, two swtpm nodes that
//     `node join` (FUSE state disks) and then run `net agent` each. The agents run in the root
//     namespace (UAPI sockets are files, the join service and the store are on loopback) while
//     their wireguard-go interfaces live in the node namespaces (tests/netns.h); traffic flows
//     between the tunnel addresses, `net status` names the other node, and an agent stopped
//     with --leave-on-exit disappears from the other node. Needs root, /dev/fuse and
//     wireguard-go; skips otherwise.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "keywarden/net/registry.h"
#include "keywarden/net/wireguard.h"
#include "tests/file_io.h"
#include "tests/netns.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"
#include "tests/swtpm.h"

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using ::testing::HasSubstr;
using ::testing::Not;

RunResult Kw(std::vector<std::string> args) {
  args.insert(args.begin(), KEYWARDEN_BINARY);
  return keywarden::testing::Run(std::move(args));
}

bool HaveSwtpm() { return NetnsCluster::HaveProgram("swtpm"); }

// StandInSocket binds a unix socket at `path`: an "interface" that UapiClient::ForInterface
// finds. Nothing answers on it; the tests that use it fail before the agent talks to it.
class StandInSocket {
 public:
  explicit StandInSocket(const fs::path& path) {
    fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, path.c_str(), sizeof(address.sun_path) - 1);
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0) << path;
  }
  ~StandInSocket() { close(fd_); }

 private:
  int fd_ = -1;
};

// AgentArgs are the flags of `net agent` for one node; tests override single flags.
std::vector<std::string> AgentArgs(const std::string& store, const std::string& node,
                                   const std::string& interface, const std::string& socket_dir,
                                   const std::string& join_endpoint, const std::string& tpm,
                                   const std::string& endpoint = "10.77.0.1:51820",
                                   const std::string& allowed_ips = "10.78.0.1/32") {
  return {"net",         "agent",   "--store",       store,       "--node",          node,
          "--interface", interface, "--socket-dir",  socket_dir,  "--listen-port",   "51820",
          "--endpoint",  endpoint,  "--allowed-ips", allowed_ips, "--join-endpoint", join_endpoint,
          "--tpm",       tpm,       "--timeout",     "20"};
}

// With replaces the value of `flag` in `args`.
std::vector<std::string> With(std::vector<std::string> args, const std::string& flag,
                              const std::string& value) {
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == flag) args[i + 1] = value;
  }
  return args;
}

size_t RegistrySize(const std::string& uri) {
  auto store = net::OpenRegistryStore(uri);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return 0;
  auto snapshot = (*store)->List();
  EXPECT_TRUE(snapshot.ok()) << snapshot.status();
  return snapshot.ok() ? snapshot->records.size() : 0;
}

TEST(NetCli, BadFlagsAreRefusedWithMessagesThatNameTheValue) {
  TempDir temp;
  const std::string store = "sqlite://" + (temp / "registry.db").string();
  const std::vector<std::string> args =
      AgentArgs(store, "node-1", "kwmissing0", temp.path().string(), "127.0.0.1:1", "swtpm:port=1");

  // A prefix with host bits set: the message names it and the canonical network.
  RunResult r = Kw(With(args, "--allowed-ips", "10.78.0.1/32,10.78.0.5/24"));
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("--allowed-ips \"10.78.0.5/24\""));
  EXPECT_THAT(r.stderr_text, HasSubstr("10.78.0.0/24"));
  r = Kw(With(args, "--allowed-ips", "10.78.0.1/32,"));
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("empty item"));
  r = Kw(With(args, "--allowed-ips", "10.78.0.1"));
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("\"10.78.0.1\""));

  // Durations: a whole number and one unit, nothing else.
  for (const char* bad : {"10x", "1h30m", "0s", "90", "1.5h", "01h", "1H"}) {
    std::vector<std::string> with = args;
    with.insert(with.end(), {"--rotate-every", bad});
    r = Kw(with);
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_THAT(r.stderr_text, HasSubstr("is not a duration")) << bad;
  }

  for (const char* good : {"90s", "10m", "1h", "1d"}) {
    std::vector<std::string> with = args;
    with.insert(with.end(), {"--rotate-every", good});
    r = Kw(with);  // accepted; refused later for the missing interface
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_THAT(r.stderr_text, Not(HasSubstr("is not a duration"))) << good;
    EXPECT_THAT(r.stderr_text, HasSubstr("kwmissing0.sock")) << good;
  }

  // The join service's credential lifetime takes the same durations; refused before serving.
  r = Kw({"serve", "--dir", (temp / "none").string(), "--net-credential-lifetime", "1h30m"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("--net-credential-lifetime \"1h30m\" is not a duration"));
  EXPECT_THAT(r.stdout_text, Not(HasSubstr("listening")));

  r = Kw(With(args, "--node", "Node_1"));
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("\"Node_1\" is not a node name"));
  r = Kw(With(args, "--endpoint", "10.77.0.1"));
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("--endpoint \"10.77.0.1\""));
  r = Kw(With(args, "--listen-port", "0"));
  EXPECT_EQ(r.exit_code, 2) << r;

  // No such interface: the message names the socket path that is missing; nothing published.
  const std::string socket_path = (temp / "kwmissing0.sock").string();
  r = Kw(args);
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr(socket_path));
  r = Kw({"net", "status", "--interface", "kwmissing0", "--socket-dir", temp.path().string()});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr(socket_path));
  EXPECT_FALSE(fs::exists(temp / "registry.db") && RegistrySize(store) != 0);

  // The help explains every flag.
  r = Kw({"net", "agent", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r;
  for (const char* flag : {"--store", "--node", "--interface", "--listen-port", "--endpoint",
                           "--allowed-ips", "--join-endpoint", "--tpm", "--rotate-every",
                           "--keepalive", "--socket-dir", "--leave-on-exit"}) {
    EXPECT_THAT(r.stdout_text, HasSubstr(flag));
  }
  r = Kw({"net", "status", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("NOT verified"));
}

TEST(NetCli, RemoveDeletesOneEntryAndRefusesWhatItCannotFind) {
  TempDir temp;
  const std::string store = "sqlite://" + (temp / "registry.db").string();
  {
    auto registry = net::OpenRegistryStore(store);
    ASSERT_TRUE(registry.ok()) << registry.status();
    // The store keeps records opaque; remove neither parses nor verifies them.
    ASSERT_TRUE((*registry)->Put("node-a", "record a").ok());
    ASSERT_TRUE((*registry)->Put("node-b", "record b").ok());
  }
  RunResult r = Kw({"net", "remove", "--store", store, "--node", "node-a"});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("removed the registry entry of node node-a"));
  EXPECT_EQ(RegistrySize(store), 1u);
  r = Kw({"net", "remove", "--store", store, "--node", "node-a"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("has no entry for node node-a"));
  r = Kw({"net", "remove", "--store", store, "--node", "Node_B"});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("\"Node_B\" is not a node name"));
  r = Kw({"net", "remove", "--store", "sqlite://" + (temp / "missing" / "r.db").string(), "--node",
          "node-b"});
  EXPECT_EQ(r.exit_code, 1) << r;
  r = Kw({"net", "remove", "--store", store});
  EXPECT_EQ(r.exit_code, 2) << r;  // --node is required
  EXPECT_EQ(RegistrySize(store), 1u) << "a refused remove changed the registry";
  r = Kw({"net", "remove", "--help"});
  EXPECT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("--net-credential-lifetime"));
}

TEST(NetCli, AnUnreachableJoinServiceAndANodeThatNeverJoinedAreRefused) {
  if (!HaveSwtpm()) GTEST_SKIP() << "swtpm is not installed";
  TempDir temp;
  auto ca = std::make_shared<SwtpmCa>();
  SwtpmInstance tpm(ca);
  ASSERT_TRUE(tpm.Start());
  StandInSocket interface(temp / "kwstandin0.sock");
  const std::string store = "sqlite://" + (temp / "registry.db").string();

  // A join service that works, and a node whose PCR 15 is zero (it never ran `node join`):
  // refused before the service is asked.
  const fs::path cluster = temp / "cluster";
  ASSERT_TRUE(Kw({"init", "--dir", cluster.string()}).ok());
  RunResult r = Kw({"measurements", "read", "--tpm", tpm.tcti()});
  ASSERT_TRUE(r.ok()) << r;
  temp.WriteFile("measurements.json", r.stdout_text);
  ServiceProcess server({"--dir", cluster.string(), "--join-listen", "127.0.0.1:0",
                         "--measurements", (temp / "measurements.json").string(), "--ek-ca",
                         ca->ca_bundle().string(), "--audit-log", (cluster / "audit.log").string()},
                        cluster / "serve.log");
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  r = Kw(AgentArgs(store, "node-1", "kwstandin0", temp.path().string(), server.join_endpoint(),
                   tpm.tcti()));
  EXPECT_EQ(r.exit_code, 1) << r << server.stderr_text();
  EXPECT_THAT(r.stderr_text, HasSubstr("has not joined the cluster"));
  EXPECT_THAT(r.stderr_text, HasSubstr("keywarden node join"));
  EXPECT_EQ(RegistrySize(store), 0u);

  // A node that measured a cluster (PCR 15 set) and a join service that cannot be reached.
  const RunResult ext = tpm.Tpm2Tool({"tpm2_pcrextend", "15:sha256=" + std::string(64, 'e')});
  ASSERT_TRUE(ext.ok()) << ext;
  r = Kw(AgentArgs(store, "node-1", "kwstandin0", temp.path().string(), "127.0.0.1:1", tpm.tcti()));
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text,
              HasSubstr("cannot get a network credential from the join service at 127.0.0.1:1"));
  EXPECT_THAT(r.stderr_text, HasSubstr("Nothing was published"));
  EXPECT_EQ(RegistrySize(store), 0u);
}

// World is the end-to-end test's cluster: state directory, join service, swtpm nodes with FUSE
// state disks. It closes every volume it opened.
class World {
 public:
  World() : ca_(std::make_shared<SwtpmCa>()) {}
  ~World() {
    for (const auto& name : opened_) {
      Kw({"volume", "close", name, "--run-dir", (temp_ / "run").string()});
    }
  }
  const TempDir& temp() const { return temp_; }
  std::shared_ptr<SwtpmCa> ca() const { return ca_; }

  // Join runs `keywarden node join` with a fresh 48 MiB state disk served through FUSE.
  RunResult Join(const SwtpmInstance& tpm, const std::string& endpoint, const std::string& name) {
    temp_.WriteFile(name + ".img", "");
    fs::resize_file(temp_ / (name + ".img"), 48ull << 20);
    const fs::path mnt = temp_ / ("mnt-" + name);
    fs::create_directories(mnt);
    RunResult r = Kw({"node",
                      "join",
                      "--join-endpoint",
                      endpoint,
                      "--tpm",
                      tpm.tcti(),
                      "--state-disk",
                      (temp_ / (name + ".img")).string(),
                      "--name",
                      name,
                      "--fuse-dir",
                      mnt.string(),
                      "--run-dir",
                      (temp_ / "run").string(),
                      "--pbkdf",
                      "pbkdf2",
                      "--pbkdf-iterations",
                      "1000",
                      "--timeout",
                      "60"});
    if (r.ok()) opened_.push_back(name);
    return r;
  }

 private:
  TempDir temp_;
  std::shared_ptr<SwtpmCa> ca_;
  std::vector<std::string> opened_;
};

TEST(NetCli, TwoJoinedNodesRunAgentsSeeEachOtherAndOneLeaves) {
  if (auto reason = NetnsCluster::SkipReason()) GTEST_SKIP() << *reason;
  if (access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "needs /dev/fuse";
  if (!HaveSwtpm() || !NetnsCluster::HaveProgram("ping")) GTEST_SKIP() << "needs swtpm and ping";
  NetnsCluster lan({.nodes = 2});
  ASSERT_TRUE(lan.Start());
  World world;
  std::vector<std::unique_ptr<SwtpmInstance>> tpms;
  for (int i = 0; i < 2; ++i) {
    tpms.push_back(std::make_unique<SwtpmInstance>(world.ca()));
    ASSERT_TRUE(tpms.back()->Start());
  }
  const fs::path cluster = world.temp() / "cluster";
  ASSERT_TRUE(Kw({"init", "--dir", cluster.string()}).ok());
  RunResult r = Kw({"measurements", "read", "--tpm", tpms[0]->tcti()});
  ASSERT_TRUE(r.ok()) << r;
  world.temp().WriteFile("measurements.json", r.stdout_text);
  ServiceProcess server(
      {"--dir", cluster.string(), "--join-listen", "127.0.0.1:0", "--measurements",
       (world.temp() / "measurements.json").string(), "--ek-ca", world.ca()->ca_bundle().string(),
       "--audit-log", (cluster / "audit.log").string(),
       // Short credentials, so that renewal and expiry happen inside the test.
       "--net-credential-lifetime", "9s"},
      cluster / "serve.log");
  ASSERT_TRUE(server.Start()) << server.stderr_text();
  for (int i = 0; i < 2; ++i) {
    r = world.Join(*tpms[i], server.join_endpoint(), "n" + std::to_string(i));
    ASSERT_TRUE(r.ok()) << r << server.stderr_text();
  }

  const std::string store = "sqlite://" + (world.temp() / "registry.db").string();
  std::vector<Background> agents(2);
  // Node 0 also rotates its WireGuard key every 4 s.
  auto start_agent = [&](size_t i, int attempt) {
    const NetnsNode& node = lan.node(i);
    std::vector<std::string> args =
        AgentArgs(store, "node-" + std::to_string(i), node.interface,
                  std::string(net::kDefaultUapiSocketDir), server.join_endpoint(), tpms[i]->tcti(),
                  node.underlay_address + ":51820", node.tunnel_address + "/32");
    args.insert(args.begin(), KEYWARDEN_BINARY);
    args.push_back("--leave-on-exit");
    if (i == 0) args.insert(args.end(), {"--rotate-every", "4s"});
    BackgroundOptions options;
    options.log =
        world.temp() / ("agent-" + std::to_string(i) + "." + std::to_string(attempt) + ".log");
    options.capture_stdout = true;
    if (!agents[i].Start(args, options)) return false;
    const auto ready = agents[i].WaitLine("net agent ready: ", 60s);
    EXPECT_TRUE(ready.has_value()) << agents[i].Log() << server.stderr_text();
    return ready.has_value() && ready->find("node-" + std::to_string(i)) != std::string::npos;
  };
  for (size_t i = 0; i < 2; ++i) ASSERT_TRUE(start_agent(i, 1));
  for (size_t i = 0; i < 2; ++i) {
    ASSERT_TRUE(WaitFor([&] { return PeerCount(lan.node(i)) == 1; }, 30s)) << agents[i].Log();
  }
  for (size_t i = 0; i < 2; ++i) {
    const size_t other = 1 - i;
    EXPECT_TRUE(WaitFor(
        [&] {
          return lan.Exec(i, {"ping", "-c", "1", "-W", "1", lan.node(other).tunnel_address}).ok();
        },
        20s))
        << i << "->" << other << "\n"
        << agents[i].Log();
  }

  // `net status` shows the other node by name, from the (unverified) registry.
  r = Kw({"net", "status", "--interface", lan.node(0).interface, "--store", store});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("unverified"));
  EXPECT_THAT(r.stdout_text, HasSubstr("node-1"));
  EXPECT_THAT(r.stdout_text, HasSubstr(lan.node(1).underlay_address + ":51820"));
  EXPECT_THAT(r.stdout_text, HasSubstr(lan.node(1).tunnel_address + "/32"));
  EXPECT_THAT(r.stdout_text, Not(HasSubstr("not in registry")));
  EXPECT_THAT(r.stdout_text, Not(HasSubstr("private")));
  r = Kw({"net", "status", "--interface", lan.node(0).interface, "--store", store, "--json"});
  ASSERT_TRUE(r.ok()) << r;
  const nlohmann::json status = nlohmann::json::parse(r.stdout_text);
  ASSERT_EQ(status["peers"].size(), 1u) << r.stdout_text;
  EXPECT_EQ(status["peers"][0]["node"], "node-1");
  EXPECT_EQ(status["registry_verified"], false);
  EXPECT_GT(status["peers"][0]["rx_bytes"].get<uint64_t>(), 0u);
  // Without --store: the interface only.
  r = Kw({"net", "status", "--interface", lan.node(1).interface});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr(lan.node(0).underlay_address + ":51820"));
  EXPECT_THAT(r.stdout_text, Not(HasSubstr("node-0")));

  // Credentials live 9 s and are renewed at 2/3 of that; past the first credentials' expiry
  // the nodes are still each other's peers, and node 0's epoch (renewal + --rotate-every) rose.
  const uint64_t first_epoch = status["peers"][0]["epoch"].get<uint64_t>();  // node 1's
  r = Kw({"net", "status", "--interface", lan.node(1).interface, "--store", store, "--json"});
  ASSERT_TRUE(r.ok()) << r;
  const uint64_t first_epoch0 =
      nlohmann::json::parse(r.stdout_text)["peers"][0]["epoch"].get<uint64_t>();
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_TRUE(WaitFor(
        [&] { return agents[i].Log().find("credential renewed") != std::string::npos; }, 20s))
        << agents[i].Log();
  }
  std::this_thread::sleep_for(5s);  // past the first credentials' not-after (9 s after issue)
  EXPECT_THAT(agents[0].Log(), HasSubstr("rotated the WireGuard key of node-0"));
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(PeerCount(lan.node(i)), 1u) << agents[i].Log();
    EXPECT_THAT(agents[i].Log(), Not(HasSubstr("credential expired"))) << agents[i].Log();
    EXPECT_TRUE(WaitFor(
        [&] {
          return lan.Exec(i, {"ping", "-c", "1", "-W", "1", lan.node(1 - i).tunnel_address}).ok();
        },
        10s))
        << agents[i].Log();
  }
  r = Kw({"net", "status", "--interface", lan.node(1).interface, "--store", store, "--json"});
  ASSERT_TRUE(r.ok()) << r;
  const nlohmann::json later = nlohmann::json::parse(r.stdout_text);
  ASSERT_EQ(later["peers"].size(), 1u) << r.stdout_text;
  EXPECT_EQ(later["peers"][0]["node"], "node-0");
  EXPECT_GT(later["peers"][0]["epoch"].get<uint64_t>(), first_epoch0)
      << "node 0 rotates every 4 s and renewed its credential";
  r = Kw({"net", "status", "--interface", lan.node(0).interface, "--store", store, "--json"});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_GT(nlohmann::json::parse(r.stdout_text)["peers"][0]["epoch"].get<uint64_t>(), first_epoch)
      << "node 1 renewed its credential, so it republished at a higher epoch";

  // Node 1 dies without leaving (SIGKILL): its entry stays in the registry, and node 0 drops
  // the peer when the credential runs out, at most 9 s after it was last renewed.
  const auto killed_at = std::chrono::steady_clock::now();
  agents[1].Signal(SIGKILL);
  agents[1].Wait(10s);
  EXPECT_EQ(RegistrySize(store), 2u);
  EXPECT_TRUE(WaitFor([&] { return PeerCount(lan.node(0)) == 0; }, 15s)) << agents[0].Log();
  std::cout << "[ crashed node dropped after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - killed_at)
                   .count()
            << " ms (credential lifetime 9 s) ]\n";
  EXPECT_THAT(agents[0].Log(), HasSubstr("node node-1: its network credential expired; removed"));
  // It comes back with a fresh credential and key; node 0 takes it again.
  ASSERT_TRUE(start_agent(1, 2));
  EXPECT_TRUE(WaitFor([&] { return PeerCount(lan.node(0)) == 1; }, 30s)) << agents[0].Log();
  EXPECT_TRUE(WaitFor(
      [&] {
        return lan.Exec(0, {"ping", "-c", "1", "-W", "1", lan.node(1).tunnel_address}).ok();
      },
      20s))
      << agents[0].Log();

  // Node 1 stops with --leave-on-exit: its entry is deleted and node 0 drops the peer.
  agents[1].Signal(SIGTERM);
  EXPECT_EQ(agents[1].Wait(30s), 0) << agents[1].Log();
  EXPECT_THAT(agents[1].Log(), HasSubstr("removed the registry entry of node-1"));
  EXPECT_TRUE(WaitFor([&] { return PeerCount(lan.node(0)) == 0; }, 30s)) << agents[0].Log();
  EXPECT_EQ(RegistrySize(store), 1u);
  agents[0].Signal(SIGTERM);
  EXPECT_EQ(agents[0].Wait(30s), 0) << agents[0].Log();
  EXPECT_EQ(RegistrySize(store), 0u);
}

}  // namespace
}  // namespace keywarden::testing
