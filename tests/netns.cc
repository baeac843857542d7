#include "tests/netns.h"

#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <thread>
#include <utility>

#include "keywarden/net/wireguard.h"

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kNetnsPrefix = "kwn-";  // namespaces: kwn-<pid>-<k>-...
constexpr std::string_view kIfacePrefix = "kwn";   // interfaces: kwn<pid hex>x<k hex>...
constexpr size_t kMaxInterfaceName = 15;           // IFNAMSIZ - 1
constexpr size_t kMaxNodes = 50;
const fs::path kUapiDir = "/var/run/wireguard";
const fs::path kNetnsDir = "/run/netns";

std::atomic<unsigned> cluster_counter{0};

// ProcessGone says whether no process has ID `pid` (so leftovers named after it are stale).
bool ProcessGone(long pid) {
  return pid > 0 && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH;
}

// ParseNumber parses all of `text` in `base`; -1 when it is not such a number.
long ParseNumber(std::string_view text, int base) {
  if (text.empty() || text.size() > 12) return -1;
  const std::string copy(text);
  char* end = nullptr;
  errno = 0;
  const long value = std::strtol(copy.c_str(), &end, base);
  if (errno != 0 || end != copy.c_str() + copy.size() || value <= 0) return -1;
  return value;
}

bool SocketAccepts(const fs::path& path) {
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  const bool ok = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

std::optional<std::string> NetnsCluster::SkipReason() {
  if (geteuid() != 0) return "needs root (network namespaces, TUN devices)";
  for (const char* program : {"ip", "wireguard-go"}) {
    if (!HaveProgram(program)) return fmt::format("{} is not installed", program);
  }
  if (access("/dev/net/tun", R_OK | W_OK) != 0) return "no usable /dev/net/tun";
  return std::nullopt;
}

bool NetnsCluster::HaveProgram(std::string_view name) {
  const char* path = std::getenv("PATH");
  std::string_view rest(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  while (!rest.empty()) {
    const size_t colon = rest.find(':');
    const std::string dir(rest.substr(0, colon));
    rest = colon == std::string_view::npos ? "" : rest.substr(colon + 1);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + std::string(name);
    if (access(candidate.c_str(), X_OK) == 0) return true;
  }
  return false;
}

NetnsCluster::NetnsCluster(NetnsClusterOptions options) : options_(options), scratch_("kw-netns") {
  const unsigned k = cluster_counter.fetch_add(1);
  const long pid = static_cast<long>(getpid());
  prefix_ = fmt::format("{}{}-{}", kNetnsPrefix, pid, k);
  short_prefix_ = fmt::format("{}{:x}x{:x}", kIfacePrefix, pid, k);
  bridge_netns_ = prefix_ + "-br";
  for (size_t i = 0; i < options_.nodes && i < kMaxNodes; ++i) {
    NetnsNode node;
    node.netns = fmt::format("{}-n{}", prefix_, i);
    node.interface = InterfaceName(fmt::format("n{}", i));
    node.underlay_device = "ul0";
    node.underlay_address = fmt::format("10.77.0.{}", i + 1);
    node.tunnel_address = fmt::format("10.78.0.{}", i + 1);
    node.tunnel_address6 = fmt::format("fd78::{:x}", i + 1);
    nodes_.push_back(std::move(node));
  }
}

NetnsCluster::~NetnsCluster() { TearDown(); }

std::string NetnsCluster::InterfaceName(std::string_view suffix) const {
  std::string name = short_prefix_ + std::string(suffix);
  if (name.size() > kMaxInterfaceName) {
    ADD_FAILURE() << "interface name " << name << " is longer than " << kMaxInterfaceName;
  }
  return name;
}

::testing::AssertionResult NetnsCluster::Ip(std::vector<std::string> args) {
  args.insert(args.begin(), "ip");
  RunOptions run_options;
  run_options.timeout = options_.timeout;
  const RunResult result = Run(args, run_options);
  if (result.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << result;
}

RunResult NetnsCluster::Exec(size_t i, std::vector<std::string> argv,
                             const RunOptions& options) const {
  argv.insert(argv.begin(), {"ip", "netns", "exec", nodes_.at(i).netns});
  return Run(std::move(argv), options);
}

Background* NetnsCluster::Spawn(size_t i, std::vector<std::string> argv,
                                BackgroundOptions options) {
  argv.insert(argv.begin(), {"ip", "netns", "exec", nodes_.at(i).netns});
  auto process = std::make_unique<Background>();
  const ::testing::AssertionResult started = process->Start(std::move(argv), options);
  if (!started) {
    ADD_FAILURE() << "starting a program in " << nodes_.at(i).netns << ": " << started.message();
    return nullptr;
  }
  spawned_.push_back(std::move(process));
  return spawned_.back().get();
}

void NetnsCluster::SweepStale() {
  // Namespaces and sockets left by test binaries that crashed: named after a PID that no longer
  // runs. Anything else (a live PID, other names) is not ours to touch.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(kNetnsDir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(kNetnsPrefix)) continue;
    const std::string_view rest = std::string_view(name).substr(kNetnsPrefix.size());
    const long pid = ParseNumber(rest.substr(0, rest.find('-')), 10);
    if (ProcessGone(pid)) (void)Ip({"netns", "del", name});
  }
  for (const auto& entry : fs::directory_iterator(kUapiDir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!name.starts_with(kIfacePrefix) || !name.ends_with(".sock")) continue;
    const std::string_view rest = std::string_view(name).substr(kIfacePrefix.size());
    const long pid = ParseNumber(rest.substr(0, rest.find('x')), 16);
    if (ProcessGone(pid)) fs::remove(entry.path(), ec);
  }
}

::testing::AssertionResult NetnsCluster::LaunchWireGuard(size_t i, const std::string& interface,
                                                         WireGuardProcess* out) {
  out->node = i;
  out->interface = interface;
  out->log = scratch() / fmt::format("wireguard-go-{}.log", interface);
  out->process = std::make_unique<Background>();
  BackgroundOptions options;
  options.log = out->log;
  options.env_overrides = {{"WG_PROCESS_FOREGROUND", "1"}, {"LOG_LEVEL", "verbose"}};
  const ::testing::AssertionResult started = out->process->Start(
      {"ip", "netns", "exec", nodes_.at(i).netns, "wireguard-go", interface}, options);
  if (!started) return started;
  const fs::path socket = kUapiDir / (interface + ".sock");
  const auto deadline = std::chrono::steady_clock::now() + options_.timeout;
  while (!SocketAccepts(socket)) {
    std::string how;
    if (!out->process->Running(&how)) {
      return ::testing::AssertionFailure()
             << "wireguard-go " << interface << " " << how << "; log:\n"
             << out->process->Log();
    }
    if (std::chrono::steady_clock::now() > deadline) {
      return ::testing::AssertionFailure() << "no UAPI socket " << socket << " after "
                                           << options_.timeout.count() << " ms; log:\n"
                                           << out->process->Log();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult NetnsCluster::Start() {
  if (nodes_.empty() || options_.nodes > kMaxNodes) {
    return ::testing::AssertionFailure() << "NetnsCluster takes 1 to " << kMaxNodes << " nodes";
  }
  if (!created_netns_.empty()) return ::testing::AssertionFailure() << "already started";
  SweepStale();

  // The bridge.
  auto step = [&](std::vector<std::string> args) { return Ip(std::move(args)); };
  ::testing::AssertionResult ok = step({"netns", "add", bridge_netns_});
  if (!ok) return ok;
  created_netns_.push_back(bridge_netns_);
  const std::string& br = bridge_netns_;
  for (auto args : std::vector<std::vector<std::string>>{
           {"-n", br, "link", "set", "lo", "up"},
           // No multicast snooping: a snooping bridge joins the all-snoopers groups (RFC 4286)
           // and sends IGMP and MLD reports that would show up in every underlay capture.
           {"-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"},
           {"-n", br, "link", "set", "br0", "addrgenmode", "none"},
           {"-n", br, "link", "set", "br0", "up"}}) {
    if (!(ok = step(std::move(args)))) return ok;
  }

  // The nodes and their underlay links.
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const NetnsNode& node = nodes_[i];
    if (!(ok = step({"netns", "add", node.netns}))) return ok;
    created_netns_.push_back(node.netns);
    const std::string& ns = node.netns;
    const std::string port = fmt::format("p{}", i);
    for (auto args : std::vector<std::vector<std::string>>{
             {"-n", ns, "link", "set", "lo", "up"},
             {"-n", ns, "link", "add", node.underlay_device, "type", "veth", "peer", "name", port,
              "netns", br},
             {"-n", ns, "link", "set", node.underlay_device, "addrgenmode", "none"},
             {"-n", br, "link", "set", port, "addrgenmode", "none"},
             {"-n", br, "link", "set", port, "master", "br0"},
             {"-n", br, "link", "set", port, "up"},
             {"-n", ns, "addr", "add", node.underlay_address + "/24", "dev", node.underlay_device},
             {"-n", ns, "link", "set", node.underlay_device, "up"}}) {
      if (!(ok = step(std::move(args)))) return ok;
    }
  }

  if (!options_.wireguard) return ::testing::AssertionSuccess();
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const NetnsNode& node = nodes_[i];
    WireGuardProcess wg;
    ok = LaunchWireGuard(i, node.interface, &wg);
    wireguard_.push_back(std::move(wg));
    if (!ok) return ok;
    const std::string& ns = node.netns;
    for (auto args : std::vector<std::vector<std::string>>{
             {"-n", ns, "addr", "add", node.tunnel_address + "/24", "dev", node.interface},
             {"-n", ns, "addr", "add", node.tunnel_address6 + "/64", "dev", node.interface,
              "nodad"},
             {"-n", ns, "link", "set", node.interface, "up"}}) {
      if (!(ok = step(std::move(args)))) return ok;
    }
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult NetnsCluster::StartWireGuard(size_t i, std::string_view suffix,
                                                        std::string* interface) {
  WireGuardProcess wg;
  wg.extra = true;
  const std::string name = InterfaceName(suffix);
  const ::testing::AssertionResult ok = LaunchWireGuard(i, name, &wg);
  wireguard_.push_back(std::move(wg));
  if (ok && interface != nullptr) *interface = name;
  return ok;
}

std::string NetnsCluster::WireGuardLog(size_t i) const {
  for (const WireGuardProcess& wg : wireguard_) {
    if (wg.node == i && !wg.extra) return ReadFile(wg.log).value_or("");
  }
  return "";
}

void NetnsCluster::TearDown() {
  if (torn_down_) return;
  torn_down_ = true;
  // Processes first (by PID), so that nothing holds a namespace or a TUN device open.
  for (auto it = spawned_.rbegin(); it != spawned_.rend(); ++it) (*it)->Kill();
  spawned_.clear();
  std::error_code ec;
  for (WireGuardProcess& wg : wireguard_) {
    if (wg.process) wg.process->Kill();
    // SIGKILL leaves the socket file behind (wireguard-go removes it only on a clean exit).
    fs::remove(kUapiDir / (wg.interface + ".sock"), ec);
  }
  wireguard_.clear();
  // Deleting a namespace deletes its veth ends and the bridge with it.
  for (auto it = created_netns_.rbegin(); it != created_netns_.rend(); ++it) {
    const ::testing::AssertionResult deleted = Ip({"netns", "del", *it});
    if (!deleted)
      ADD_FAILURE() << "deleting network namespace " << *it << ": " << deleted.message();
    if (fs::exists(kNetnsDir / *it, ec)) ADD_FAILURE() << "network namespace " << *it << " remains";
  }
  created_netns_.clear();
}

size_t PeerCount(const NetnsNode& node) {
  auto uapi = net::UapiClient::ForInterface(node.interface);
  if (!uapi.ok()) return 0;
  auto device = uapi->Get();
  return device.ok() ? device->peers.size() : 0;
}

}  // namespace keywarden::testing
