#include "cli/net_commands.h"

#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "cli/commands.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/net/agent.h"
#include "keywarden/net/registry.h"
#include "keywarden/net/wireguard.h"
#include "keywarden/node/node.h"
#include "keywarden/service/join.h"
#include "keywarden/service/log.h"
#include "keywarden/status.h"

namespace keywarden::cli {
namespace {

using std::chrono::milliseconds;
using SystemTime = std::chrono::system_clock::time_point;

milliseconds Millis(double seconds) { return milliseconds(static_cast<int64_t>(seconds * 1000)); }

// CheckNodeFlag refuses a --node value that is not a registry name (net::ValidNodeName).
absl::Status CheckNodeFlag(std::string_view node) {
  if (net::ValidNodeName(node)) return absl::OkStatus();
  return InvalidArgumentError(
      "--node \"{}\" is not a node name: 1-63 characters of a-z, 0-9 and '-', starting and "
      "ending with a letter or digit",
      Printable(node));
}

// ParseAllowedIps splits CIDR[,CIDR...]; each prefix must be canonical (net::Cidr::Parse, whose
// message names the canonical network when host bits are set).
absl::StatusOr<std::vector<net::Cidr>> ParseAllowedIps(std::string_view text) {
  std::vector<net::Cidr> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string_view item = text.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (item.empty()) {
      return InvalidArgumentError(
          "--allowed-ips \"{}\" has an empty item: write CIDR[,CIDR...] such as "
          "10.78.0.2/32,fd78::2/128",
          Printable(text));
    }
    auto cidr = net::Cidr::Parse(item);
    if (!cidr.ok()) {
      return InvalidArgumentError("--allowed-ips \"{}\": {}", Printable(item),
                                  StatusMessage(cidr.status()));
    }
    out.push_back(*cidr);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (out.size() > net::kMaxAllowedIps) {
    return InvalidArgumentError("--allowed-ips names {} prefixes; at most {}", out.size(),
                                net::kMaxAllowedIps);
  }
  return out;
}

std::string Utc(SystemTime time) {
  const std::time_t t = std::chrono::system_clock::to_time_t(time);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return text;
}

// SignalStop blocks SIGINT and SIGTERM in every thread started after it and sets stop() when
// one arrives. Wait sleeps until a signal, Wake, or a timeout. Construct before starting threads.
class SignalStop {
 public:
  SignalStop() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this] {
      int signal_number = 0;
      sigwait(&set_, &signal_number);
      std::lock_guard<std::mutex> lock(mu_);
      if (!quitting_) signal_ = signal_number;
      stop_ = true;
      cv_.notify_all();
    });
  }
  ~SignalStop() {
    bool wake = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      quitting_ = true;
      wake = signal_ == 0;
    }
    // Wake the waiter if no signal came, then restore the mask.
    if (wake) pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
    pthread_sigmask(SIG_UNBLOCK, &set_, nullptr);
  }

  const std::atomic<bool>& stop() const { return stop_; }
  // signal returns the signal that arrived, or 0.
  int signal() const {
    std::lock_guard<std::mutex> lock(mu_);
    return signal_;
  }
  // Stop stops without a signal (the agent ended on its own).
  void Stop() {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  // Wait returns when stopped or after `timeout`; returns stop().
  bool Wait(milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [this] { return stop_.load(); });
    return stop_.load();
  }

 private:
  sigset_t set_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> stop_{false};
  int signal_ = 0;         // guarded by mu_
  bool quitting_ = false;  // guarded by mu_
  std::thread thread_;
};

void QuietTss() {
  // tpm2-tss logs to stderr by default; our errors say what failed.
  setenv("TSS2_LOG", "all+NONE", /*overwrite=*/0);
}

// IssuedCredential is a credential from the join service with the signer for it.
struct IssuedCredential {
  std::unique_ptr<net::NodeSigner> signer;
  net::NodeCredential credential;
  net::Ed25519PublicKey authority_key{};
};

// Published says whether the registry holds `node`'s entry at `epoch`.
bool Published(net::RegistryStore& store, const std::string& node, uint64_t epoch) {
  auto snapshot = store.List();
  if (!snapshot.ok()) return false;
  for (const auto& [name, record] : snapshot->records) {
    if (name != node) continue;
    auto parsed = net::ParseRecord(record);
    return parsed.ok() && parsed->entry.epoch == epoch;
  }
  return false;
}

}  // namespace

struct NetCommands::Flags {
  CLI::App* net = nullptr;
  CLI::App* agent = nullptr;
  CLI::App* status = nullptr;
  CLI::App* remove = nullptr;

  // Shared.
  std::string store;
  std::string interface;
  std::string socket_dir = std::string(net::kDefaultUapiSocketDir);

  // net agent
  std::string node;
  uint16_t listen_port = 0;
  std::string endpoint;
  std::string allowed_ips;
  std::string join_endpoint;
  std::string tpm;
  std::string rotate_every;
  uint16_t keepalive = 0;
  bool leave_on_exit = false;
  double timeout_s = 30;

  // net status
  bool json = false;

  int RunAgent();
  int RunStatus();
  int RunRemove();
  absl::StatusOr<IssuedCredential> Credential() const;
};

NetCommands::NetCommands(CLI::App& app) : flags_(std::make_unique<Flags>()) {
  Flags& f = *flags_;
  f.net = app.add_subcommand(
      "net",
      "Network encryption between nodes: WireGuard peers configured from the cluster's signed "
      "network registry (docs/network.md).");
  f.net->require_subcommand(0, 1);

  auto add_interface = [&f](CLI::App* cmd) {
    cmd->add_option("--interface", f.interface,
                    "the node's WireGuard interface (wireguard-go), e.g. kw0")
        ->required();
    cmd->add_option("--socket-dir", f.socket_dir,
                    "where wireguard-go keeps the interface's UAPI socket IF.sock")
        ->capture_default_str();
  };

  auto add_store = [&f](CLI::App* cmd) {
    return cmd->add_option("--store", f.store,
                           "the cluster store holding the registry: sqlite://PATH or "
                           "etcd://HOST:PORT[,HOST:PORT...][?ca=FILE&cert=FILE&key=FILE&prefix=P]");
  };

  f.agent = f.net->add_subcommand(
      "agent",
      "Run this node's network agent until SIGTERM or SIGINT: get a network credential from the "
      "join service (the node must have joined: PCR 15 measured), set a fresh WireGuard key on "
      "the interface, publish this node's signed entry in the registry, and keep the "
      "interface's peers equal to the other nodes' verified entries. Renews the credential at "
      "2/3 of its lifetime. Prints \"net agent ready: ...\" once the entry is published; logs "
      "one line per decision on stderr.");
  add_store(f.agent)->required();
  f.agent
      ->add_option("--node", f.node,
                   "this node's name in the registry: 1-63 characters of a-z, 0-9 and '-' (a "
                   "DNS label); the credential is issued for it")
      ->required();
  add_interface(f.agent);
  f.agent->add_option("--listen-port", f.listen_port, "UDP port the interface listens on")
      ->required()
      ->check(CLI::Range(1, 65535));
  f.agent
      ->add_option("--endpoint", f.endpoint,
                   "where the other nodes reach this one: IP:PORT or [IPv6]:PORT (an address "
                   "literal, normally with --listen-port's port)")
      ->required();
  f.agent
      ->add_option("--allowed-ips", f.allowed_ips,
                   "the tunnel prefixes routed to this node, CIDR[,CIDR...] in canonical form "
                   "(host bits zero), e.g. 10.78.0.2/32,fd78::2/128")
      ->required();
  f.agent
      ->add_option("--join-endpoint", f.join_endpoint,
                   "the join service that issues network credentials, HOST:PORT (port 9090)")
      ->required();
  f.agent
      ->add_option("--tpm", f.tpm,
                   "the node's TPM, which attests for the credential: a TCTI such as "
                   "device:/dev/tpmrm0 or swtpm:port=2321")
      ->required();
  f.agent->add_option("--rotate-every", f.rotate_every,
                      "replace the node's WireGuard key this often: a whole number and a unit, "
                      "s, m, h or d (90s, 10m, 1h, 1d); default: no scheduled rotation");
  f.agent
      ->add_option("--keepalive", f.keepalive,
                   "persistent keepalive in seconds set on every peer (0: off; use 25 behind NAT)")
      ->capture_default_str();
  f.agent->add_flag("--leave-on-exit", f.leave_on_exit,
                    "on SIGTERM or SIGINT delete this node's entry from the registry, so the "
                    "other nodes remove it (a node shutting down for good); without it the entry "
                    "stays until its credential expires");
  f.agent
      ->add_option("--timeout", f.timeout_s,
                   "seconds to wait for the join service on each credential request")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();

  f.status = f.net->add_subcommand(
      "status",
      "Show the interface's peers, one row each: public key, endpoint, allowed IPs, age of the "
      "last handshake, bytes received and sent. With --store, each peer is matched by public "
      "key with the registry's entries (node name and key epoch, or \"not in registry\"). "
      "The entries are parsed but NOT verified (that needs the cluster's authority key, which "
      "only agents get). Never prints private keys.");
  add_interface(f.status);
  add_store(f.status);  // optional here
  f.status->add_flag("--json", f.json, "print JSON");

  f.remove = f.net->add_subcommand(
      "remove",
      "Delete a node's entry from the registry, so that every agent removes its peer at once: "
      "for a node that is gone for good and did not leave (crashed, deleted) - otherwise its "
      "peers keep it until its credential expires (`keywarden serve "
      "--net-credential-lifetime`). A running agent of that node would publish again; stop it "
      "first. Needs write access to the store, nothing else.");
  add_store(f.remove)->required();
  f.remove->add_option("--node", f.node, "the node's name in the registry")->required();
}

NetCommands::~NetCommands() = default;

const CLI::App* NetCommands::parsed_group() const {
  return flags_->net->parsed() ? flags_->net : nullptr;
}

std::optional<int> NetCommands::Run() {
  Flags& f = *flags_;
  if (f.agent->parsed()) return f.RunAgent();
  if (f.status->parsed()) return f.RunStatus();
  if (f.remove->parsed()) return f.RunRemove();
  return std::nullopt;
}

absl::StatusOr<IssuedCredential> NetCommands::Flags::Credential() const {
  auto issuer = node::OpenTpm(tpm);
  if (!issuer.ok()) {
    return MakeStatus(issuer.status().code(), "cannot open the TPM {}: {}", Printable(tpm),
                      StatusMessage(issuer.status()));
  }
  // A node that never joined is refused here, before the join service is asked.
  ASSIGN_OR_RETURN(const attest::PcrBank pcrs, (*issuer)->ReadPcrs());
  if (std::all_of(pcrs[15].begin(), pcrs[15].end(), [](uint8_t b) { return b == 0; })) {
    return FailedPreconditionError(
        "this node has not joined the cluster: its PCR 15 is zero; run `keywarden node join` "
        "first. Nothing was published");
  }
  ASSIGN_OR_RETURN(net::NodeSigningKey key, net::GenerateNodeSigningKey());
  auto response = service::RequestNetCredential(*issuer, join_endpoint, node, key.public_key(),
                                                Millis(timeout_s));
  issuer->reset();  // release the TPM (a TPM serves one client at a time)
  if (!response.ok()) {
    const absl::Status& refused = response.status();
    if (absl::IsFailedPrecondition(refused)) {
      return FailedPreconditionError(
          "this node has not joined the cluster ({}); run `keywarden node join` first. Nothing "
          "was published",
          StatusMessage(refused));
    }
    if (absl::IsPermissionDenied(refused)) {
      return PermissionDeniedError(
          "the join service at {} refused a network credential for {} ({}); the service's "
          "audit log names the check that failed. Nothing was published",
          join_endpoint, node, StatusMessage(refused));
    }
    return MakeStatus(refused.code(),
                      "cannot get a network credential from the join service at {}: {}. Nothing "
                      "was published",
                      join_endpoint, StatusMessage(refused));
  }
  IssuedCredential out;
  ASSIGN_OR_RETURN(out.credential, net::ParseCredential(response->credential));
  ASSIGN_OR_RETURN(out.signer, net::NewNodeSigner(response->credential, std::move(key)));
  out.authority_key = response->authority_key;
  return out;
}

int NetCommands::Flags::RunAgent() {
  QuietTss();
  // Every flag is checked before anything is contacted.
  if (absl::Status named = CheckNodeFlag(node); !named.ok()) return Fail(named);
  auto own_endpoint = net::Endpoint::Parse(endpoint);
  if (!own_endpoint.ok()) {
    return Fail(InvalidArgumentError("--endpoint \"{}\": {} (write IP:PORT or [IPv6]:PORT)",
                                     Printable(endpoint), StatusMessage(own_endpoint.status())));
  }
  auto prefixes = ParseAllowedIps(allowed_ips);
  if (!prefixes.ok()) return Fail(prefixes.status());
  milliseconds rotation{0};
  if (!rotate_every.empty()) {
    auto parsed = ParseDuration("--rotate-every", rotate_every);
    if (!parsed.ok()) return Fail(parsed.status());
    rotation = *parsed;
  }
  auto uapi = net::UapiClient::ForInterface(interface, socket_dir);
  if (!uapi.ok()) {
    return Fail(uapi.status());  // names the interface and the socket path
  }
  SignalStop signals;  // before any thread starts (an etcd store starts gRPC threads)
  auto store_handle = net::OpenRegistryStore(store);
  if (!store_handle.ok()) {
    return Fail(MakeStatus(store_handle.status().code(), "registry store: {}",
                           StatusMessage(store_handle.status())));
  }

  const service::Logger log(service::LogFormat::kText);
  auto issued = Credential();
  if (!issued.ok()) return Fail(issued.status());
  if (signals.stop().load()) return kExitOk;  // stopped while waiting: publish nothing
  const net::Ed25519PublicKey authority_key = issued->authority_key;
  const std::string cluster_id = issued->credential.cluster_id;
  log.Info("network credential issued", {{"node", node},
                                         {"cluster_id", cluster_id},
                                         {"not_after", Utc(issued->credential.not_after)}});
  auto verifier = net::NewEntryVerifier(authority_key, cluster_id);
  if (!verifier.ok()) return Fail(verifier.status());
  net::ReplaceableNodeSigner signer(std::move(issued->signer));

  net::AgentOptions options;
  options.node = node;
  options.endpoint = *own_endpoint;
  options.allowed_ips = *prefixes;
  options.listen_port = listen_port;
  options.rotate_every = rotation;
  options.keepalive_seconds = keepalive;
  options.log = [&log](std::string_view level, std::string_view message) {
    if (level == "error") {
      log.Error(message);
    } else if (level == "warning") {
      log.Warn(message);
    } else {
      log.Info(message);
    }
  };
  auto running = net::Agent::New(std::move(options), **store_handle, **verifier, signer, *uapi);
  if (!running.ok()) return Fail(running.status());

  absl::Status run_result;
  std::atomic<bool> done{false};
  std::thread runner([&] {
    run_result = (*running)->Run(signals.stop());
    done = true;
    signals.Stop();  // wake the main thread
  });

  // Ready once this node's entry, at the agent's epoch, is in the registry.
  bool ready = false;
  SystemTime not_after = issued->credential.not_after;
  auto renew_at = [](SystemTime until) {
    const auto now = std::chrono::system_clock::now();
    return now + (until - now) * 2 / 3;
  };
  SystemTime next_renewal = renew_at(not_after);
  while (!signals.stop().load()) {
    if (!ready) {
      signals.Wait(milliseconds(50));
      if (done.load() || signals.stop().load()) break;
      const net::AgentStats stats = (*running)->stats();
      if (stats.epoch > 0 && Published(**store_handle, node, stats.epoch)) {
        ready = true;
        fmt::print("net agent ready: node {} epoch {} on interface {}\n", node, stats.epoch,
                   interface);
        std::fflush(stdout);
      }
      continue;
    }
    const auto now = std::chrono::system_clock::now();
    if (now < next_renewal) {
      signals.Wait(std::chrono::duration_cast<milliseconds>(next_renewal - now) + milliseconds(1));
      continue;
    }
    auto renewed = Credential();
    absl::Status problem = renewed.status();
    if (renewed.ok() &&
        (renewed->authority_key != authority_key || renewed->credential.cluster_id != cluster_id)) {
      problem = PermissionDeniedError(
          "the renewed credential names another authority or cluster; keeping the current one");
    }
    if (!problem.ok()) {
      const auto left = not_after - std::chrono::system_clock::now();
      log.Error("cannot renew the network credential; retrying",
                {{"error", StatusMessage(problem)}, {"not_after", Utc(not_after)}});
      next_renewal = std::chrono::system_clock::now() +
                     std::clamp<std::chrono::system_clock::duration>(
                         left / 4, std::chrono::seconds(5), std::chrono::minutes(5));
      continue;
    }
    not_after = renewed->credential.not_after;
    signer.Replace(std::move(renewed->signer));
    log.Info("network credential renewed", {{"node", node}, {"not_after", Utc(not_after)}});
    // Republish so that the stored record carries the new credential.
    if (absl::Status rotated = (*running)->Rotate(); !rotated.ok()) {
      log.Error("cannot republish after renewing the credential",
                {{"error", StatusMessage(rotated)}});
    }
    next_renewal = renew_at(not_after);
  }
  signals.Stop();
  runner.join();
  if (!run_result.ok()) {
    return Fail(
        MakeStatus(run_result.code(), "the network agent stopped: {}", StatusMessage(run_result)));
  }
  if (leave_on_exit && signals.signal() != 0) {
    if (absl::Status left = (*running)->Leave(); !left.ok()) {
      return Fail(MakeStatus(left.code(), "cannot delete this node's registry entry: {}",
                             StatusMessage(left)));
    }
  }
  log.Info("network agent stopped", {{"node", node}});
  return kExitOk;
}

int NetCommands::Flags::RunRemove() {
  if (absl::Status named = CheckNodeFlag(node); !named.ok()) return Fail(named);
  auto store_handle = net::OpenRegistryStore(store);
  if (!store_handle.ok()) return Fail(store_handle.status());
  auto snapshot = (*store_handle)->List();
  if (!snapshot.ok()) {
    return Fail(MakeStatus(snapshot.status().code(), "cannot read the registry {}: {}",
                           (*store_handle)->Describe(), StatusMessage(snapshot.status())));
  }
  if (std::none_of(snapshot->records.begin(), snapshot->records.end(),
                   [&](const auto& record) { return record.first == node; })) {
    return Fail(NotFoundError("the registry {} has no entry for node {}",
                              (*store_handle)->Describe(), node));
  }
  if (absl::Status deleted = (*store_handle)->Delete(node); !deleted.ok()) {
    return Fail(MakeStatus(deleted.code(), "cannot delete the entry of node {}: {}", node,
                           StatusMessage(deleted)));
  }
  fmt::print("removed the registry entry of node {}; agents drop its peer\n", node);
  return kExitOk;
}

int NetCommands::Flags::RunStatus() {
  auto uapi = net::UapiClient::ForInterface(interface, socket_dir);
  if (!uapi.ok()) {
    return Fail(uapi.status());  // names the interface and the socket path
  }
  auto device = uapi->Get();
  if (!device.ok()) {
    return Fail(MakeStatus(device.status().code(), "interface {}: {}", Printable(interface),
                           StatusMessage(device.status())));
  }
  struct Known {
    std::string node;
    uint64_t epoch = 0;
  };
  std::map<net::PublicKey, Known> registry;
  std::string registry_name;
  size_t malformed = 0;
  if (!store.empty()) {
    auto opened = net::OpenRegistryStore(store);
    if (!opened.ok()) {
      return Fail(
          MakeStatus(opened.status().code(), "registry store: {}", StatusMessage(opened.status())));
    }
    auto snapshot = (*opened)->List();
    if (!snapshot.ok()) {
      return Fail(MakeStatus(snapshot.status().code(), "registry store: {}",
                             StatusMessage(snapshot.status())));
    }
    registry_name = (*opened)->Describe();
    for (const auto& [name, record] : snapshot->records) {
      auto parsed = net::ParseRecord(record);
      if (!parsed.ok() || parsed->entry.node != name) {
        ++malformed;
        continue;
      }
      registry[parsed->entry.public_key] = Known{name, parsed->entry.epoch};
    }
  }

  const auto now = std::chrono::system_clock::now();
  auto age_seconds = [&](const net::PeerInfo& peer) -> std::optional<int64_t> {
    if (!peer.last_handshake) return std::nullopt;
    return std::max<int64_t>(
        0, std::chrono::duration_cast<std::chrono::seconds>(now - *peer.last_handshake).count());
  };
  auto ips_text = [](const net::PeerInfo& peer) {
    std::string text;
    for (const net::Cidr& cidr : peer.allowed_ips) {
      text += (text.empty() ? "" : ",") + cidr.ToString();
    }
    return text.empty() ? std::string("-") : text;
  };

  if (json) {
    nlohmann::json out;
    out["interface"] = interface;
    out["public_key"] = device->public_key
                            ? nlohmann::json(net::PublicKeyToBase64(*device->public_key))
                            : nlohmann::json(nullptr);
    out["listen_port"] = device->listen_port;
    out["registry"] = store.empty() ? nlohmann::json(nullptr) : nlohmann::json(registry_name);
    out["registry_verified"] = false;
    out["malformed_records"] = malformed;
    out["peers"] = nlohmann::json::array();
    for (const net::PeerInfo& peer : device->peers) {
      nlohmann::json row;
      row["public_key"] = net::PublicKeyToBase64(peer.public_key);
      row["endpoint"] =
          peer.endpoint ? nlohmann::json(peer.endpoint->ToString()) : nlohmann::json(nullptr);
      row["allowed_ips"] = nlohmann::json::array();
      for (const net::Cidr& cidr : peer.allowed_ips) row["allowed_ips"].push_back(cidr.ToString());
      const auto age = age_seconds(peer);
      row["last_handshake_seconds_ago"] = age ? nlohmann::json(*age) : nlohmann::json(nullptr);
      row["rx_bytes"] = peer.rx_bytes;
      row["tx_bytes"] = peer.tx_bytes;
      if (!store.empty()) {
        auto it = registry.find(peer.public_key);
        row["in_registry"] = it != registry.end();
        row["node"] =
            it != registry.end() ? nlohmann::json(it->second.node) : nlohmann::json(nullptr);
        row["epoch"] =
            it != registry.end() ? nlohmann::json(it->second.epoch) : nlohmann::json(nullptr);
      }
      out["peers"].push_back(row);
    }
    fmt::print("{}\n", out.dump(2));
    return kExitOk;
  }

  fmt::print("interface {}: public key {}, listen port {}, {} peer{}\n", interface,
             device->public_key ? net::PublicKeyToBase64(*device->public_key) : "(none)",
             device->listen_port, device->peers.size(), device->peers.size() == 1 ? "" : "s");
  if (!store.empty()) {
    fmt::print(
        "registry {} (unverified: entries are parsed, their signatures and credentials are not "
        "checked){}\n",
        registry_name,
        malformed > 0 ? fmt::format("; {} malformed record(s) skipped", malformed) : "");
  }
  fmt::print("{:<44}  {:<20}  {:<6}  {:<21}  {:<24}  {:<12}  {:>12}  {:>12}\n", "PUBLIC KEY",
             "NODE", "EPOCH", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX BYTES", "TX BYTES");
  for (const net::PeerInfo& peer : device->peers) {
    std::string node_name = "-", epoch = "-";
    if (!store.empty()) {
      auto it = registry.find(peer.public_key);
      if (it == registry.end()) {
        node_name = "not in registry";
      } else {
        node_name = it->second.node;
        epoch = std::to_string(it->second.epoch);
      }
    }
    const auto age = age_seconds(peer);
    fmt::print("{:<44}  {:<20}  {:<6}  {:<21}  {:<24}  {:<12}  {:>12}  {:>12}\n",
               net::PublicKeyToBase64(peer.public_key), node_name, epoch,
               peer.endpoint ? peer.endpoint->ToString() : "-", ips_text(peer),
               age ? fmt::format("{}s ago", *age) : "never", peer.rx_bytes, peer.tx_bytes);
  }
  return kExitOk;
}

}  // namespace keywarden::cli
