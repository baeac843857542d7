// The network agent (issue 7, DESIGN.md §7): on every node it owns the node's WireGuard key,
// publishes the node's signed registry entry and keeps the interface's peers equal to the
// verified entries of the other nodes. docs/network.md.
//
//   - The Curve25519 key pair is generated in memory at start and at every rotation; the private
//     key goes only to the interface (UapiClient::Set) and is wiped here afterwards.
//   - Entries that do not verify (EntryVerifier) are ignored and logged, once per record.
//   - Rotation: a new key pair is generated, set on the interface, and published with epoch + 1.
//     Peers replace the node's old public key by the new one as soon as they see the entry; the
//     old key is retired at once (wireguard-go keeps receiving on the session of the old key, and
//     queues replies until the peers know the new key — docs/network.md, "Rotation").
//   - A node that leaves deletes its entry (Leave); peers remove it when they see the deletion.
//     Entries whose credential has expired are removed as well.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/net/registry.h"
#include "keywarden/net/wireguard.h"

namespace keywarden::net {

// DesiredPeer is one other node as the registry describes it.
struct DesiredPeer {
  std::string node;
  PublicKey public_key{};
  Endpoint endpoint;
  std::vector<Cidr> allowed_ips;
  uint64_t epoch = 0;
};

// PlanPeers returns the peer updates that turn the interface's peers (`device`) into `desired`:
// a removal for every peer whose key is not desired, and an add-or-update (endpoint, allowed IPs
// replaced, keepalive) for every desired peer that is missing or differs. Allowed IPs are
// compared as sets. An empty result means the interface is up to date. Pure; for tests.
//
// A peer that is created (a node that joined, or a new key after a rotation) gets a persistent
// keepalive even when `keepalive_seconds` is 0 (then kHandshakeKickSeconds): wireguard-go sends
// a keepalive as soon as keepalive is switched on, and with it a handshake initiation. Without
// it a node that just rotated waits out WireGuard's 5 s REKEY_TIMEOUT after its first
// initiation (made before its peers knew the new key) while the peers, having nothing to send,
// stay silent; a TCP stream through it stalled ~15 s in the rotation test. KickFollowUp gives
// the update that switches such keepalives off again. `kick_created` false leaves the kick out
// (an agent's first reconcile: its own key is new to everyone, so the peers kick it when they
// learn the key, and kicking thousands of peers at start would only start a handshake storm).
inline constexpr uint16_t kHandshakeKickSeconds = 1;
std::vector<PeerUpdate> PlanPeers(const Device& device, const std::vector<DesiredPeer>& desired,
                                  uint16_t keepalive_seconds, bool kick_created = true);
// KickFollowUp returns, for every peer PlanPeers created with the kick keepalive (only when
// `keepalive_seconds` is 0), an update_only update that sets its keepalive back to 0.
std::vector<PeerUpdate> KickFollowUp(const std::vector<PeerUpdate>& planned,
                                     uint16_t keepalive_seconds);

// AgentOptions configure one agent.
struct AgentOptions {
  std::string node;
  Endpoint endpoint;              // where the other nodes reach this one (its listen port)
  std::vector<Cidr> allowed_ips;  // the tunnel addresses routed to this node
  uint16_t listen_port = 0;
  // rotate_every: the node's WireGuard key is replaced this often; zero turns rotation off.
  std::chrono::milliseconds rotate_every{0};
  // keepalive_seconds: persistent keepalive set on every peer (0: off).
  uint16_t keepalive_seconds = 0;
  // resync_every: the whole registry is listed again this often, whatever the watch said.
  std::chrono::milliseconds resync_every{std::chrono::minutes(1)};
  // log receives one line per decision (applied peers, ignored entries with the reason, store
  // trouble). Never key bytes. Called from the agent's threads.
  std::function<void(std::string_view level, std::string_view message)> log;
};

// AgentStats are counters for status output and tests.
struct AgentStats {
  uint64_t epoch = 0;            // this node's current key epoch
  uint64_t reconciles = 0;       // UAPI sets that changed something
  uint64_t ignored_records = 0;  // records refused by the verifier
  size_t peers = 0;              // peers on the interface after the last reconcile
  std::chrono::steady_clock::duration last_reconcile{};  // time the last reconcile took
};

// ReplaceableNodeSigner is a NodeSigner whose underlying signer can be swapped while an Agent
// uses it: the agent renews its credential before it expires (`keywarden net agent`), replaces
// the signer and then republishes (Agent::Rotate), so the stored record carries the new
// credential. Thread-safe: Record, public_key and Replace serialise on a mutex, so a record is
// always made by one signer, old or new. Owns the signer it holds.
class ReplaceableNodeSigner final : public NodeSigner {
 public:
  // `signer` must not be null.
  explicit ReplaceableNodeSigner(std::unique_ptr<NodeSigner> signer);
  // Replace swaps in `signer` (not null) and destroys the previous one.
  void Replace(std::unique_ptr<NodeSigner> signer);
  Ed25519PublicKey public_key() const override;
  absl::StatusOr<std::string> Record(const NodeEntry& entry) override;

 private:
  mutable std::mutex mu_;
  std::unique_ptr<NodeSigner> signer_;  // guarded by mu_
};

class Agent {
 public:
  // New checks the options (node name, allowed IPs, endpoint) and keeps the parts; nothing is
  // changed before Run.
  static absl::StatusOr<std::unique_ptr<Agent>> New(AgentOptions options, RegistryStore& store,
                                                    EntryVerifier& verifier, NodeSigner& signer,
                                                    UapiClient uapi);
  ~Agent();

  // Run configures the interface (a fresh key pair, the listen port), publishes this node's
  // entry (epoch one above what the registry held for the node), applies the registry, and then
  // follows it (watch, periodic resync, rotation) until `stop` is set. A store that cannot be
  // reached is retried with backoff; the interface keeps its last configuration meanwhile.
  // Returns an error only for what retrying cannot fix (the interface is gone, the credential
  // refused by our own verifier).
  absl::Status Run(const std::atomic<bool>& stop);

  // Rotate replaces the node's key now (what the schedule does). Thread-safe; Run must be
  // running.
  absl::Status Rotate();
  // Leave deletes this node's entry from the registry (before a node shuts down for good).
  absl::Status Leave();

  AgentStats stats() const;

 private:
  Agent(AgentOptions options, RegistryStore& store, EntryVerifier& verifier, NodeSigner& signer,
        UapiClient uapi);
  absl::Status Publish(uint64_t epoch, const PublicKey& key);
  // SetKey puts a fresh key pair on the interface (and the listen port, at start only) and
  // returns its public key.
  absl::StatusOr<PublicKey> SetKey(uint64_t epoch, bool set_listen_port);
  // Apply records one record (or a deletion when record is empty) in the peer table.
  void Apply(const std::string& node, const std::string& record);
  absl::Status Reconcile();
  // Resync lists the registry, applies it and reconciles; returns the listing's revision.
  absl::StatusOr<int64_t> Resync();
  // Start sets a fresh key and publishes the first entry.
  absl::Status Start();
  // NextExpiry is when the earliest peer credential runs out (steady clock), or max().
  std::chrono::steady_clock::time_point NextExpiry() const;

  const AgentOptions options_;  // options_.log is const-callable
  RegistryStore& store_;
  EntryVerifier& verifier_;
  NodeSigner& signer_;
  const UapiClient uapi_;

  mutable std::mutex mu_;
  std::map<std::string, VerifiedEntry> peers_;           // by node; guarded by mu_
  std::map<std::string, std::string> refused_records_;   // last refused record per node
  std::map<std::string, std::string> accepted_records_;  // record of each entry in peers_
  PublicKey public_key_{};                               // this node's current key
  // Earliest not-after among configured peers (set by Reconcile); guarded by mu_.
  std::chrono::system_clock::time_point next_expiry_ = std::chrono::system_clock::time_point::max();
  bool reconciled_once_ = false;  // guarded by mu_; no handshake kick before the first reconcile
  AgentStats stats_;
  std::mutex rotate_mu_;  // one key change at a time
};

}  // namespace keywarden::net
