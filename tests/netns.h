// NetnsCluster: a small LAN of network namespaces with a wireguard-go interface in each, for
// WireGuard integration tests (tests/net_wireguard_test.cc).
//
// Topology: one bridge namespace holding a Linux bridge ("br0", multicast snooping off), and N
// node namespaces, each joined to the bridge by a veth pair ("ul0" in the node, "p<i>" on the
// bridge). The underlay is 10.77.0.0/24 (node i has 10.77.0.<i+1>), with IPv6 address generation
// off on the underlay links so that a capture on it shows nothing but the test's traffic and ARP.
// Each node runs `wireguard-go` (WG_PROCESS_FOREGROUND=1, through keywarden::testing::Background,
// so it dies with the test) on an interface with tunnel addresses 10.78.0.<i+1>/24 and
// fd78::<i+1>/64, brought up, and otherwise unconfigured: no key, no peers — the test configures it
// (through keywarden::net::UapiClient). A bridge scales to any N, unlike a veth mesh (N·(N-1)/2
// links).
//
// Names are unique per process and cluster: namespaces "kwn-<pid>-<k>-n<i>" / "-br",
// interfaces "kwn<pid hex>x<k hex>n<i>" (at most 15 characters), since all UAPI sockets share
// /var/run/wireguard. Every veth is created inside its namespaces, so nothing is added to the
// root namespace. The destructor kills every process the cluster started (by PID), removes their
// UAPI sockets and deletes the namespaces — also when the test failed. A test binary that
// crashed leaves namespaces behind; the next NetnsCluster deletes those whose <pid> no longer
// runs (and their stale sockets).
//
// Typical use (the test's main thread; PR_SET_PDEATHSIG is per thread):
//
//   if (auto reason = NetnsCluster::SkipReason()) GTEST_SKIP() << *reason;
//   NetnsCluster cluster({.nodes = 3});
//   ASSERT_TRUE(cluster.Start());
//   ... net::UapiClient::ForInterface(cluster.node(0).interface) ...
//   EXPECT_TRUE(cluster.Exec(0, {"ping", "-c", "1", cluster.node(1).tunnel_address}).ok());
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

// NetnsNode names one node of a NetnsCluster.
struct NetnsNode {
  std::string netns;             // the node's network namespace
  std::string interface;         // its wireguard-go interface (UAPI: /var/run/wireguard/NAME.sock)
  std::string underlay_device;   // "ul0", the veth end in the node
  std::string underlay_address;  // "10.77.0.<i+1>" (/24)
  std::string tunnel_address;    // "10.78.0.<i+1>" (/24 on `interface`)
  std::string tunnel_address6;   // "fd78::<i+1>" (/64 on `interface`)
};

struct NetnsClusterOptions {
  // nodes is the number of node namespaces (1-200).
  size_t nodes = 2;
  // wireguard starts wireguard-go in every node; false gives bare namespaces.
  bool wireguard = true;
  // timeout bounds each wait (a UAPI socket to appear, a process to stop).
  std::chrono::milliseconds timeout = std::chrono::seconds(15);
};

class NetnsCluster {
 public:
  // SkipReason says why this host cannot run a NetnsCluster (not root, `ip` or `wireguard-go`
  // missing, no /dev/net/tun), or nullopt when it can.
  static std::optional<std::string> SkipReason();
  // HaveProgram says whether `name` is an executable in PATH.
  static bool HaveProgram(std::string_view name);

  explicit NetnsCluster(NetnsClusterOptions options = {});
  // ~NetnsCluster tears everything down (see above); failures to do so fail the current test.
  ~NetnsCluster();
  NetnsCluster(const NetnsCluster&) = delete;
  NetnsCluster& operator=(const NetnsCluster&) = delete;

  // Start builds the namespaces, links and addresses and starts wireguard-go in every node,
  // waiting until each UAPI socket accepts connections. The failure names the command that
  // failed, with wireguard-go's log.
  ::testing::AssertionResult Start();

  size_t size() const { return nodes_.size(); }
  const NetnsNode& node(size_t i) const { return nodes_.at(i); }
  const std::string& bridge_netns() const { return bridge_netns_; }
  // scratch is a private directory for logs and captures, removed with the cluster.
  const std::filesystem::path& scratch() const { return scratch_.path(); }

  // Exec runs argv in node i's namespace (`ip netns exec`) and waits for it. Thread-safe.
  RunResult Exec(size_t i, std::vector<std::string> argv, const RunOptions& options = {}) const;

  // Spawn starts a long-running program in node i's namespace; the cluster owns it and kills
  // it (SIGKILL, by PID) before deleting the namespace. Returns nullptr, with the reason as a
  // test failure, when it cannot be started.
  Background* Spawn(size_t i, std::vector<std::string> argv, BackgroundOptions options = {});

  // StartWireGuard starts one more wireguard-go in node i's namespace on interface
  // InterfaceName(suffix) and waits for its UAPI socket; the cluster stops it and removes its
  // socket. `interface` receives the name.
  ::testing::AssertionResult StartWireGuard(size_t i, std::string_view suffix,
                                            std::string* interface);
  // InterfaceName returns this cluster's unique interface name ending in `suffix`.
  std::string InterfaceName(std::string_view suffix) const;

  // WireGuardLog returns node i's wireguard-go log (LOG_LEVEL=verbose).
  std::string WireGuardLog(size_t i) const;

 private:
  struct WireGuardProcess {
    size_t node = 0;
    bool extra = false;  // started by StartWireGuard
    std::string interface;
    std::filesystem::path log;
    std::unique_ptr<Background> process;
  };

  ::testing::AssertionResult Ip(std::vector<std::string> args);
  ::testing::AssertionResult LaunchWireGuard(size_t i, const std::string& interface,
                                             WireGuardProcess* out);
  void SweepStale();
  void TearDown();

  NetnsClusterOptions options_;
  std::string prefix_;        // "kwn-<pid>-<k>"
  std::string short_prefix_;  // "kwn<pid hex>x<k hex>"
  std::string bridge_netns_;
  std::vector<NetnsNode> nodes_;
  std::vector<std::string> created_netns_;  // in creation order
  std::vector<WireGuardProcess> wireguard_;
  std::vector<std::unique_ptr<Background>> spawned_;
  TempDir scratch_;
  bool torn_down_ = false;
};

// PeerCount is how many peers `node`'s interface has (a UAPI get); 0 when it cannot be read.
size_t PeerCount(const NetnsNode& node);

}  // namespace keywarden::testing
