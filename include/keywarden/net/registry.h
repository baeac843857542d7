// The cluster's network registry (DESIGN.md §7, issue 7): every node publishes one signed entry
// {node, WireGuard public key, endpoint, allowed IPs, key epoch} to the cluster store (etcd for
// many machines, SQLite for one), and every node's agent configures its WireGuard peers from the
// entries it can verify. docs/network.md.
//
// Trust: the cluster's network authority (an Ed25519 key derived from the cluster KEK, held by
// the key service) issues a node credential — {node name, the node's Ed25519 signing key,
// clusterID, EK fingerprint, not-after} — only to a node that attested (the join service's
// IssueNetCredential, over aTLS with a TPM quote). A node signs its entry with its signing key
// and stores the credential beside it. An agent applies an entry only if the credential verifies
// under the authority key, is for this cluster and for the entry's name, has not expired, and the
// entry's signature verifies under the credential's signing key; anything else is ignored and
// logged. A name is bound to the first EK fingerprint an agent saw for it (trust on first use):
// a validly signed entry for a known name from another EK is ignored and logged.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/net/wireguard.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::net {

// ---- Entries ----------------------------------------------------------------------------------

// ValidNodeName: 1 to 63 characters of [a-z0-9-], starting and ending with a letter or digit
// (a DNS label, as Kubernetes node names are).
bool ValidNodeName(std::string_view name);

// NodeEntry is what a node publishes about itself.
struct NodeEntry {
  std::string node;
  PublicKey public_key{};
  Endpoint endpoint;
  std::vector<Cidr> allowed_ips;
  // epoch increases by one with every rotation of the node's WireGuard key; an agent never
  // applies an entry whose epoch is lower than one it applied for that node.
  uint64_t epoch = 0;
  std::chrono::system_clock::time_point issued_at;

  friend bool operator==(const NodeEntry&, const NodeEntry&) = default;
};

// Ed25519PublicKey is a node's or the authority's signing public key (RFC 8032, 32 bytes).
using Ed25519PublicKey = std::array<uint8_t, 32>;

// NodeCredential is what the authority certifies about a node.
struct NodeCredential {
  std::string node;
  Ed25519PublicKey signing_key{};
  std::string cluster_id;      // lower-case hex of the 32-byte clusterID
  std::string ek_fingerprint;  // lower-case hex SHA-256 of the node's EK public key (DER SPKI)
  std::chrono::system_clock::time_point not_after;
};

// Authority signs node credentials. The key service derives it from the cluster KEK
// (HKDF-SHA256, info "keywarden-net-authority-v1"; docs/formats/network-registry.md).
class Authority {
 public:
  virtual ~Authority() = default;
  virtual Ed25519PublicKey public_key() const = 0;
  // Issue returns the signed credential's bytes (the form stored beside entries).
  virtual absl::StatusOr<std::vector<uint8_t>> Issue(const NodeCredential& credential) = 0;
};

// NodeSigner is a node's signing key (generated in memory by the agent at start, never written
// anywhere) with the credential the authority issued for it.
class NodeSigner {
 public:
  virtual ~NodeSigner() = default;
  virtual Ed25519PublicKey public_key() const = 0;
  // Record returns the bytes to store for `entry`: the entry, its signature and the credential.
  // FAILED_PRECONDITION when the entry's node is not the credential's.
  virtual absl::StatusOr<std::string> Record(const NodeEntry& entry) = 0;
};

// VerifiedEntry is an entry whose record verified.
struct VerifiedEntry {
  NodeEntry entry;
  std::string ek_fingerprint;
  std::chrono::system_clock::time_point credential_not_after;
};

// EntryVerifier checks records against the authority key and the cluster. Thread-safe.
class EntryVerifier {
 public:
  virtual ~EntryVerifier() = default;
  // Verify checks a record stored under `node`: PERMISSION_DENIED naming what failed (bad
  // authority signature, another cluster, another node's credential, expired, bad entry
  // signature, a name bound to another EK); DATA_LOSS for a malformed record. Never quotes key
  // bytes.
  virtual absl::StatusOr<VerifiedEntry> Verify(std::string_view node, std::string_view record) = 0;
};

// ---- Store ------------------------------------------------------------------------------------

// RegistryEvent is one change to the registry.
struct RegistryEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  std::string node;
  std::string record;  // empty for kDelete
  int64_t revision = 0;
};

// RegistrySnapshot is the whole registry at one revision.
struct RegistrySnapshot {
  std::vector<std::pair<std::string, std::string>> records;  // (node, record), by node
  int64_t revision = 0;
};

// RegistryStore keeps one record per node name. Implementations are thread-safe.
// Errors: UNAVAILABLE when the store cannot be reached.
class RegistryStore {
 public:
  virtual ~RegistryStore() = default;
  virtual absl::Status Put(std::string_view node, std::string_view record) = 0;
  virtual absl::Status Delete(std::string_view node) = 0;
  virtual absl::StatusOr<RegistrySnapshot> List() = 0;
  // Watch calls `on_event` for every change after `after_revision`, in order, until `stop` is
  // set (checked at least every 200 ms) or `on_event` returns false; then OK. UNAVAILABLE when
  // the store is lost (the caller lists again and resumes); OUT_OF_RANGE when `after_revision`
  // was compacted away (the caller lists again).
  virtual absl::Status Watch(int64_t after_revision,
                             const std::function<bool(const RegistryEvent&)>& on_event,
                             const std::atomic<bool>& stop) = 0;
  virtual std::string Describe() const = 0;
};

}  // namespace keywarden::net
