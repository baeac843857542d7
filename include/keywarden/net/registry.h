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
#include "keywarden/crypto/ed25519.h"
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

// ---- Factories --------------------------------------------------------------------------------

// kAuthorityInfo is the HKDF info label of the authority's Ed25519 seed
// (docs/formats/network-registry.md, "Labels").
inline constexpr std::string_view kAuthorityInfo = "keywarden-net-authority-v1";

// NewAuthority derives the cluster's network authority from the 32-byte cluster KEK:
// seed = HKDF-Expand(KEK, "keywarden-net-authority-v1", 32) (RFC 5869 §2.3; the KEK is the PRK,
// as for DEKs, DESIGN.md §2), then the Ed25519 key of that seed. Every key service replica of a
// cluster derives the same authority. INVALID_ARGUMENT for a KEK of another size. The returned
// Authority is thread-safe.
absl::StatusOr<std::unique_ptr<Authority>> NewAuthority(const SecretBytes& kek);
// NewAuthorityFromSeed uses a given 32-byte Ed25519 seed (tests, tools).
absl::StatusOr<std::unique_ptr<Authority>> NewAuthorityFromSeed(const SecretBytes& seed);

// NodeSigningKey is a node's Ed25519 signing key. The agent generates it in memory at start
// (GenerateNodeSigningKey), asks the join service for a credential for its public_key(), and
// hands both to NewNodeSigner. It is never written anywhere.
using NodeSigningKey = crypto::Ed25519KeyPair;
// GenerateNodeSigningKey returns a fresh key from the CSPRNG; fails closed (UNAVAILABLE).
absl::StatusOr<NodeSigningKey> GenerateNodeSigningKey();

// NewNodeSigner pairs `credential` (the bytes Authority::Issue returned) with the signing key it
// certifies. DATA_LOSS when the credential is malformed; FAILED_PRECONDITION when it certifies
// another key. The authority's signature is not checked here (verifiers check it). Thread-safe.
absl::StatusOr<std::unique_ptr<NodeSigner>> NewNodeSigner(std::span<const uint8_t> credential,
                                                          NodeSigningKey signing_key);

// VerifierClock returns the current time; credentials expire against it.
using VerifierClock = std::function<std::chrono::system_clock::time_point()>;

// NewEntryVerifier checks records against `authority` and `cluster_id` (64 lower-case hex
// digits; INVALID_ARGUMENT otherwise). `clock` defaults to the system clock. The TOFU map (node
// name -> EK fingerprint) lives in the verifier's memory: a new verifier (an agent restart)
// starts empty.
absl::StatusOr<std::unique_ptr<EntryVerifier>> NewEntryVerifier(const Ed25519PublicKey& authority,
                                                                std::string_view cluster_id,
                                                                VerifierClock clock = {});

// ---- The record format, for tests, tools and fuzzing ------------------------------------------
// docs/formats/network-registry.md describes every byte.

// Limits of the format.
inline constexpr size_t kMaxAllowedIps = 64;
inline constexpr size_t kMaxRecordSize = 4096;

// ParsedRecord is a record taken apart without any signature or policy check.
struct ParsedRecord {
  NodeCredential credential;
  std::vector<uint8_t> credential_bytes;  // the credential as Issue returned it
  NodeEntry entry;
  std::array<uint8_t, crypto::kEd25519SignatureSize> entry_signature{};
};

// ParseCredential / ParseRecord check structure only: magic, version, sizes, counts, names,
// canonical addresses, times in range, no trailing bytes. DATA_LOSS naming the first problem
// (never quoting key bytes). They do not verify signatures: use EntryVerifier.
absl::StatusOr<NodeCredential> ParseCredential(std::span<const uint8_t> credential);
absl::StatusOr<ParsedRecord> ParseRecord(std::string_view record);
// SerializeRecord is ParseRecord's inverse: SerializeRecord(*ParseRecord(r)) == r for every
// record ParseRecord accepts (the format is canonical). INVALID_ARGUMENT for a record that
// could not be parsed back.
absl::StatusOr<std::string> SerializeRecord(const ParsedRecord& record);

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

// OpenRegistryStore opens the registry in the cluster store a URI names (the forms of
// keywarden/store/kek_store.h):
//   sqlite://PATH   a table in the SQLite file (created if absent; WAL, safe to share between
//                   processes); Watch polls a revision counter every 100 ms.
//   etcd://HOST:PORT[,HOST:PORT...][?ca=&cert=&key=&prefix=/keywarden/]
//                   keys PREFIX + "net/nodes/" + NAME; Watch is etcd's Watch stream.
// `timeout` bounds each operation (connect included). INVALID_ARGUMENT for a malformed URI;
// FAILED_PRECONDITION when a SQLite file cannot be opened; UNAVAILABLE when no etcd member
// answers. Put and Delete refuse names that are not ValidNodeName (INVALID_ARGUMENT) and records
// longer than kMaxRecordSize. List and Watch skip keys that are not valid names.
absl::StatusOr<std::unique_ptr<RegistryStore>> OpenRegistryStore(
    std::string_view uri, std::chrono::milliseconds timeout = std::chrono::seconds(2));

}  // namespace keywarden::net
