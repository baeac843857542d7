// The network agent. See include/keywarden/net/agent.h.
#include "keywarden/net/agent.h"

#include <algorithm>
#include <condition_variable>
#include <set>
#include <thread>
#include <utility>

#include "keywarden/status.h"

namespace keywarden::net {
namespace {

using Clock = std::chrono::steady_clock;

std::set<Cidr> AsSet(const std::vector<Cidr>& cidrs) { return {cidrs.begin(), cidrs.end()}; }

// SameCidrs compares allowed IPs as sets; the common case (one address each) without building
// sets.
bool SameCidrs(const std::vector<Cidr>& a, const std::vector<Cidr>& b) {
  if (a.size() == 1 && b.size() == 1) return a[0] == b[0];
  return AsSet(a) == AsSet(b);
}

template <typename T>
bool KeyLess(const T* a, const T* b) {
  return a->public_key < b->public_key;
}

}  // namespace

std::vector<PeerUpdate> PlanPeers(const Device& device, const std::vector<DesiredPeer>& desired,
                                  uint16_t keepalive_seconds, bool kick_created) {
  // Both sides sorted by key, then binary searches: O((n + m) log n). A scan of the other side
  // per peer was quadratic: ~400 ms for 10,000 peers, now ~6 ms (docs/performance.md, "Network
  // agent").
  // The updates come in the same order as before: removals in the device's order, then the
  // desired peers in their order.
  std::vector<const DesiredPeer*> wanted;
  wanted.reserve(desired.size());
  for (const DesiredPeer& d : desired) wanted.push_back(&d);
  std::sort(wanted.begin(), wanted.end(), KeyLess<DesiredPeer>);
  std::vector<const PeerInfo*> present;
  present.reserve(device.peers.size());
  for (const PeerInfo& p : device.peers) present.push_back(&p);
  std::sort(present.begin(), present.end(), KeyLess<PeerInfo>);

  std::vector<PeerUpdate> updates;
  for (const PeerInfo& current : device.peers) {
    const auto it = std::lower_bound(
        wanted.begin(), wanted.end(), current.public_key,
        [](const DesiredPeer* d, const PublicKey& key) { return d->public_key < key; });
    if (it == wanted.end() || (*it)->public_key != current.public_key) {
      PeerUpdate removal;
      removal.public_key = current.public_key;
      removal.remove = true;
      updates.push_back(std::move(removal));
    }
  }
  for (const DesiredPeer& peer : desired) {
    const auto it = std::lower_bound(
        present.begin(), present.end(), peer.public_key,
        [](const PeerInfo* p, const PublicKey& key) { return p->public_key < key; });
    const PeerInfo* current =
        it != present.end() && (*it)->public_key == peer.public_key ? *it : nullptr;
    const bool same = current != nullptr && current->endpoint == peer.endpoint &&
                      SameCidrs(current->allowed_ips, peer.allowed_ips) &&
                      current->persistent_keepalive_interval == keepalive_seconds;
    if (same) continue;
    PeerUpdate update;
    update.public_key = peer.public_key;
    update.endpoint = peer.endpoint;
    update.replace_allowed_ips = true;
    update.allowed_ips = peer.allowed_ips;
    update.persistent_keepalive_interval =
        current == nullptr && keepalive_seconds == 0 && kick_created ? kHandshakeKickSeconds
                                                                     : keepalive_seconds;
    updates.push_back(std::move(update));
  }
  return updates;
}

std::vector<PeerUpdate> KickFollowUp(const std::vector<PeerUpdate>& planned,
                                     uint16_t keepalive_seconds) {
  std::vector<PeerUpdate> off;
  if (keepalive_seconds != 0) return off;
  for (const PeerUpdate& update : planned) {
    if (update.remove || update.persistent_keepalive_interval != kHandshakeKickSeconds) continue;
    PeerUpdate back;
    back.public_key = update.public_key;
    back.update_only = true;
    back.persistent_keepalive_interval = 0;
    off.push_back(std::move(back));
  }
  return off;
}

absl::StatusOr<std::unique_ptr<Agent>> Agent::New(AgentOptions options, RegistryStore& store,
                                                  EntryVerifier& verifier, NodeSigner& signer,
                                                  UapiClient uapi) {
  if (!ValidNodeName(options.node)) {
    return InvalidArgumentError(
        "node name \"{}\" is not a DNS label (1-63 of a-z 0-9 -, starting and ending with a "
        "letter or digit)",
        Printable(options.node, 80));
  }
  if (options.allowed_ips.empty()) {
    return InvalidArgumentError("the node needs at least one allowed IP (its tunnel address)");
  }
  if (options.endpoint.port == 0) return InvalidArgumentError("the endpoint needs a port");
  if (options.resync_every.count() <= 0) {
    return InvalidArgumentError("resync_every must be positive");
  }
  if (!options.log) options.log = [](std::string_view, std::string_view) {};
  return std::unique_ptr<Agent>(
      new Agent(std::move(options), store, verifier, signer, std::move(uapi)));
}

Agent::Agent(AgentOptions options, RegistryStore& store, EntryVerifier& verifier,
             NodeSigner& signer, UapiClient uapi)
    : options_(std::move(options)),
      store_(store),
      verifier_(verifier),
      signer_(signer),
      uapi_(std::move(uapi)) {}

Agent::~Agent() = default;

ReplaceableNodeSigner::ReplaceableNodeSigner(std::unique_ptr<NodeSigner> signer)
    : signer_(std::move(signer)) {}

void ReplaceableNodeSigner::Replace(std::unique_ptr<NodeSigner> signer) {
  std::unique_ptr<NodeSigner> previous;
  std::lock_guard<std::mutex> lock(mu_);
  previous = std::exchange(signer_, std::move(signer));
}

Ed25519PublicKey ReplaceableNodeSigner::public_key() const {
  std::lock_guard<std::mutex> lock(mu_);
  return signer_->public_key();
}

absl::StatusOr<std::string> ReplaceableNodeSigner::Record(const NodeEntry& entry) {
  std::lock_guard<std::mutex> lock(mu_);
  return signer_->Record(entry);
}

AgentStats Agent::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

absl::StatusOr<PublicKey> Agent::SetKey(uint64_t epoch, bool set_listen_port) {
  ASSIGN_OR_RETURN(KeyPair pair, GenerateKeyPair());
  DeviceUpdate update;
  update.private_key = pair.private_key().Clone();
  // Only at start: wireguard-go rebinds its UDP socket on every listen_port line, even for the
  // port it already has, and packets arriving meanwhile get ICMP port unreachable (seen in the
  // underlay capture of a rotation under a TCP stream).
  if (set_listen_port) update.listen_port = options_.listen_port;
  RETURN_IF_ERROR(uapi_.Set(update));
  // update (with its SecretBytes) is wiped when it goes out of scope.
  std::lock_guard<std::mutex> lock(mu_);
  public_key_ = pair.public_key();
  stats_.epoch = epoch;
  return pair.public_key();
}

absl::Status Agent::Publish(uint64_t epoch, const PublicKey& key) {
  NodeEntry entry;
  entry.node = options_.node;
  entry.public_key = key;
  entry.endpoint = options_.endpoint;
  entry.allowed_ips = options_.allowed_ips;
  entry.epoch = epoch;
  entry.issued_at = std::chrono::system_clock::now();
  ASSIGN_OR_RETURN(std::string record, signer_.Record(entry));
  return store_.Put(options_.node, record);
}

absl::Status Agent::Rotate() {
  std::lock_guard<std::mutex> rotating(rotate_mu_);
  uint64_t epoch = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    epoch = stats_.epoch + 1;
  }
  ASSIGN_OR_RETURN(const PublicKey key, SetKey(epoch, /*set_listen_port=*/false));
  RETURN_IF_ERROR(Publish(epoch, key));
  options_.log("info", fmt::format("rotated the WireGuard key of {}: epoch {}, public key {}",
                                   options_.node, epoch, PublicKeyToBase64(key)));
  return absl::OkStatus();
}

absl::Status Agent::Leave() {
  RETURN_IF_ERROR(store_.Delete(options_.node));
  options_.log("info", fmt::format("removed the registry entry of {}", options_.node));
  return absl::OkStatus();
}

void Agent::Apply(const std::string& node, const std::string& record) {
  if (node == options_.node) return;
  std::lock_guard<std::mutex> lock(mu_);
  if (record.empty()) {
    if (peers_.erase(node) > 0) options_.log("info", fmt::format("node {} left", node));
    refused_records_.erase(node);
    accepted_records_.erase(node);
    return;
  }
  // A record identical to one already judged is not verified again (a resync of 10,000 entries
  // was 85 % signature checks, docs/performance.md); credential expiry is checked at every
  // reconcile.
  if (const auto it = accepted_records_.find(node);
      it != accepted_records_.end() && it->second == record) {
    return;
  }
  if (const auto it = refused_records_.find(node);
      it != refused_records_.end() && it->second == record) {
    return;
  }
  absl::StatusOr<VerifiedEntry> verified = verifier_.Verify(node, record);
  if (!verified.ok()) {
    ++stats_.ignored_records;
    // Once per distinct record: a forged entry that stays in the store is not logged forever.
    auto [it, fresh] = refused_records_.try_emplace(node, record);
    if (fresh || it->second != record) {
      it->second = record;
      options_.log("warning", fmt::format("ignoring the registry entry of {}: {}", node,
                                          StatusMessage(verified.status())));
    }
    return;
  }
  refused_records_.erase(node);
  const auto current = peers_.find(node);
  if (current != peers_.end() && verified->entry.epoch < current->second.entry.epoch) {
    ++stats_.ignored_records;
    refused_records_.insert_or_assign(node, record);
    options_.log("warning",
                 fmt::format("ignoring an older entry of {} (epoch {} after epoch {}): a replay?",
                             node, verified->entry.epoch, current->second.entry.epoch));
    return;
  }
  if (current == peers_.end() || current->second.entry != verified->entry) {
    options_.log("info", fmt::format("node {}: epoch {}, endpoint {}", node, verified->entry.epoch,
                                     verified->entry.endpoint.ToString()));
  }
  peers_.insert_or_assign(node, *std::move(verified));
  accepted_records_.insert_or_assign(node, record);
}

absl::Status Agent::Reconcile() {
  const auto started = Clock::now();
  std::vector<DesiredPeer> desired;
  bool kick = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    kick = reconciled_once_;
    const auto now = std::chrono::system_clock::now();
    std::set<Cidr> claimed(options_.allowed_ips.begin(), options_.allowed_ips.end());
    // An expired credential ends a peer: a node that stopped without leaving (crash, power
    // loss) is dropped when its credential runs out. Run() wakes up for the earliest expiry.
    next_expiry_ = std::chrono::system_clock::time_point::max();
    for (auto it = peers_.begin(); it != peers_.end();) {
      if (it->second.credential_not_after > now) {
        next_expiry_ = std::min(next_expiry_, it->second.credential_not_after);
        ++it;
        continue;
      }
      options_.log("warning",
                   fmt::format("node {}: its network credential expired; removed", it->first));
      accepted_records_.erase(it->first);
      it = peers_.erase(it);
    }
    for (const auto& [node, verified] : peers_) {
      if (verified.entry.public_key == public_key_) continue;
      // An allowed IP can route to one peer only: a node claiming one already taken (by this
      // node, or a node earlier in name order) is left out, and logged.
      const bool conflict =
          std::any_of(verified.entry.allowed_ips.begin(), verified.entry.allowed_ips.end(),
                      [&](const Cidr& cidr) { return claimed.count(cidr) > 0; });
      if (conflict) {
        options_.log("warning", fmt::format("node {} claims an allowed IP another node has; not "
                                            "configured",
                                            node));
        continue;
      }
      claimed.insert(verified.entry.allowed_ips.begin(), verified.entry.allowed_ips.end());
      desired.push_back(DesiredPeer{node, verified.entry.public_key, verified.entry.endpoint,
                                    verified.entry.allowed_ips, verified.entry.epoch});
    }
  }
  ASSIGN_OR_RETURN(Device device, uapi_.Get());
  std::vector<PeerUpdate> updates = PlanPeers(device, desired, options_.keepalive_seconds, kick);
  const bool changed = !updates.empty();
  if (changed) {
    std::vector<PeerUpdate> follow_up = KickFollowUp(updates, options_.keepalive_seconds);
    DeviceUpdate update;
    update.peers = std::move(updates);
    RETURN_IF_ERROR(uapi_.Set(update));
    // The kick keepalives went out with the set above; switch them off again (a failure here
    // leaves a 1 s keepalive, which the next reconcile corrects).
    if (!follow_up.empty()) {
      DeviceUpdate off;
      off.peers = std::move(follow_up);
      RETURN_IF_ERROR(uapi_.Set(off));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  stats_.reconciles += changed ? 1 : 0;
  reconciled_once_ = true;
  stats_.peers = desired.size();
  stats_.last_reconcile = Clock::now() - started;
  return absl::OkStatus();
}

Clock::time_point Agent::NextExpiry() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (next_expiry_ == std::chrono::system_clock::time_point::max()) {
    return Clock::time_point::max();
  }
  const auto left = next_expiry_ - std::chrono::system_clock::now();
  // A millisecond past not-after, so that the reconcile sees the credential as expired.
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(left) +
         std::chrono::milliseconds(1);
}

absl::StatusOr<int64_t> Agent::Resync() {
  ASSIGN_OR_RETURN(RegistrySnapshot snapshot, store_.List());
  std::set<std::string> present;
  for (const auto& [node, record] : snapshot.records) {
    present.insert(node);
    Apply(node, record);
  }
  std::vector<std::string> gone;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [node, entry] : peers_) {
      if (present.count(node) == 0) gone.push_back(node);
    }
  }
  for (const std::string& node : gone) Apply(node, "");
  RETURN_IF_ERROR(Reconcile());
  return snapshot.revision;
}

absl::Status Agent::Start() {
  // The epoch continues from the node's previous entry, so that peers, which never go back to a
  // lower epoch, take the new key; an unreadable previous entry starts from the clock.
  ASSIGN_OR_RETURN(RegistrySnapshot snapshot, store_.List());
  uint64_t epoch = 1;
  for (const auto& [node, record] : snapshot.records) {
    if (node != options_.node) continue;
    absl::StatusOr<VerifiedEntry> previous = verifier_.Verify(node, record);
    epoch = previous.ok()
                ? previous->entry.epoch + 1
                : static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count());
  }
  std::lock_guard<std::mutex> rotating(rotate_mu_);
  ASSIGN_OR_RETURN(const PublicKey key, SetKey(epoch, /*set_listen_port=*/true));
  RETURN_IF_ERROR(Publish(epoch, key));
  options_.log("info",
               fmt::format("{} published: epoch {}, public key {}, endpoint {}", options_.node,
                           epoch, PublicKeyToBase64(key), options_.endpoint.ToString()));
  return absl::OkStatus();
}

absl::Status Agent::Run(const std::atomic<bool>& stop) {
  RETURN_IF_ERROR(Start());

  // The watch runs on its own thread and only records changes; this thread applies them to the
  // interface, rotates on schedule and resyncs.
  std::mutex wake_mu;
  std::condition_variable wake;
  bool dirty = true;     // guarded by wake_mu: something to reconcile
  bool relist = true;    // guarded by wake_mu: the watch ended; list again
  int64_t revision = 0;  // guarded by wake_mu: the revision to watch from
  std::atomic<bool> watch_stop{false};
  std::thread watcher([&] {
    std::chrono::milliseconds backoff{100};
    while (!stop.load() && !watch_stop.load()) {
      int64_t from = 0;
      {
        std::unique_lock<std::mutex> lock(wake_mu);
        wake.wait(lock, [&] { return !relist || stop.load() || watch_stop.load(); });
        if (stop.load() || watch_stop.load()) break;
        from = revision;
      }
      const absl::Status watched = store_.Watch(
          from,
          [&](const RegistryEvent& event) {
            Apply(event.node, event.type == RegistryEvent::Type::kDelete ? "" : event.record);
            std::lock_guard<std::mutex> lock(wake_mu);
            revision = event.revision;
            dirty = true;
            wake.notify_all();
            return !stop.load() && !watch_stop.load();
          },
          watch_stop);
      if (stop.load() || watch_stop.load()) break;
      if (!watched.ok()) {
        options_.log("warning", fmt::format("registry watch ended: {}; listing again",
                                            StatusMessage(watched)));
        std::this_thread::sleep_for(backoff);
        backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
      } else {
        backoff = std::chrono::milliseconds(100);
      }
      std::lock_guard<std::mutex> lock(wake_mu);
      relist = true;
      wake.notify_all();
    }
  });

  absl::Status result = absl::OkStatus();
  auto next_rotation = options_.rotate_every.count() > 0 ? Clock::now() + options_.rotate_every
                                                         : Clock::time_point::max();
  auto next_resync = Clock::now();
  std::chrono::milliseconds retry{100};
  while (!stop.load()) {
    bool do_relist = false, do_reconcile = false;
    {
      std::unique_lock<std::mutex> lock(wake_mu);
      const auto expiry = NextExpiry();
      const auto until = std::min({next_rotation, next_resync, Clock::now() + retry * 2, expiry});
      wake.wait_until(lock, until, [&] { return dirty || relist; });
      do_relist = relist || Clock::now() >= next_resync;
      do_reconcile = dirty || Clock::now() >= expiry;
      dirty = false;
    }
    if (stop.load()) break;
    if (Clock::now() >= next_rotation) {
      if (absl::Status rotated = Rotate(); !rotated.ok()) {
        options_.log("error", fmt::format("key rotation failed: {}", StatusMessage(rotated)));
        if (rotated.code() == absl::StatusCode::kNotFound) {
          result = rotated;  // the interface is gone
          break;
        }
      }
      next_rotation = Clock::now() + options_.rotate_every;
    }
    if (do_relist) {
      absl::StatusOr<int64_t> listed = Resync();
      if (!listed.ok()) {
        options_.log("warning", fmt::format("cannot read the registry: {}; keeping the current "
                                            "peers",
                                            StatusMessage(listed.status())));
        if (listed.status().code() == absl::StatusCode::kNotFound) {
          result = listed.status();
          break;
        }
        std::this_thread::sleep_for(retry);
        retry = std::min(retry * 2, std::chrono::milliseconds(5000));
        continue;
      }
      retry = std::chrono::milliseconds(100);
      next_resync = Clock::now() + options_.resync_every;
      std::lock_guard<std::mutex> lock(wake_mu);
      revision = *listed;
      relist = false;
      wake.notify_all();
      continue;
    }
    if (do_reconcile) {
      if (absl::Status reconciled = Reconcile(); !reconciled.ok()) {
        options_.log("warning",
                     fmt::format("cannot configure the interface: {}", StatusMessage(reconciled)));
        if (reconciled.code() == absl::StatusCode::kNotFound) {
          result = reconciled;
          break;
        }
        std::lock_guard<std::mutex> lock(wake_mu);
        dirty = true;
      }
    }
  }
  watch_stop = true;
  {
    std::lock_guard<std::mutex> lock(wake_mu);
    wake.notify_all();
  }
  watcher.join();
  return result;
}

}  // namespace keywarden::net
