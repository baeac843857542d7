// The join service (issue 5): attested key release to nodes that join or rejoin the cluster.
//
// A node connects over aTLS in join mode (the node attests with its TPM, the service does not
// attest) and asks for a ticket for its state disk. The service releases, sealed to the node's
// TPM (attest/release.h), the state-disk key DEK(lower-case disk UUID) and measurementSecret,
// plus the public measurement salt — only when the node's quote verifies, binds this
// connection's fresh nonce and TLS key, its EK certificate chains to the configured CA bundle,
// its PCRs match the base measurements and its PCR 15 is 0. Every decision, including refusals
// inside the TLS handshake, goes to the audit log. Wire format: docs/formats/attestation.md
// ("Join service"); design: docs/attestation.md.
//
// It also issues network node credentials (issue 7, IssueNetCredential): to a node that attests
// exactly as for a rejoin except that its PCR 15 must hold this cluster's measured clusterID
// (the node has joined), it returns a credential of the cluster's network authority for the
// node's registry name and Ed25519 signing key (include/keywarden/net/registry.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/attest/measurements.h"
#include "keywarden/attest/release.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/net/registry.h"
#include "keywarden/service/audit.h"
#include "keywarden/service/key_service.h"

namespace keywarden::service {

// The join service's RPC methods (aTLS RPC layer, docs/formats/atls.md); the ticket methods take
// a JoinTicketRequest and answer a JoinTicketResponse, IssueNetCredential takes a
// NetCredentialRequest and answers a NetCredentialResponse (proto/attest.proto).
inline constexpr std::string_view kIssueJoinTicketMethod = "keywarden.join.v1/IssueJoinTicket";
inline constexpr std::string_view kIssueRejoinTicketMethod = "keywarden.join.v1/IssueRejoinTicket";
inline constexpr std::string_view kIssueNetCredentialMethod =
    "keywarden.join.v1/IssueNetCredential";
// kDefaultJoinPort is Constellation's join service port.
inline constexpr uint16_t kDefaultJoinPort = 9090;
// kMeasurementSecretId is the DEK id of measurementSecret (DESIGN.md §2).
inline constexpr std::string_view kMeasurementSecretId = "measurementSecret";

// Audit events the join service writes: one per ticket decision, and "attest" for refusals
// inside the aTLS handshake (the method is not known yet there).
inline constexpr std::string_view kAuditEventJoin = "join";
inline constexpr std::string_view kAuditEventRejoin = "rejoin";
inline constexpr std::string_view kAuditEventAttest = "attest";
inline constexpr std::string_view kAuditEventNetCredential = "net-credential";
// kDefaultNetCredentialLifetime is JoinServiceOptions::net_credential_lifetime's default.
inline constexpr std::chrono::seconds kDefaultNetCredentialLifetime{24 * 3600};
// kMaxNetCredentialLifetime bounds it (100 years: not_after stays far inside the credential
// format's range).
inline constexpr std::chrono::seconds kMaxNetCredentialLifetime{100LL * 365 * 24 * 3600};

// JoinServiceOptions configures a JoinService.
struct JoinServiceOptions {
  // host and port to listen on (port 0: any free port; see JoinService::port()).
  std::string host = "0.0.0.0";
  uint16_t port = kDefaultJoinPort;
  // ek_ca_bundle_pem holds the TPM manufacturers' CA certificates (PEM) that EK certificates
  // must chain to.
  std::string ek_ca_bundle_pem;
  // measurements are the base measurements. Only PCRs 0-14 are used: PCR 15 is judged by the
  // PCR 15 rule (it must be 0 for join and rejoin alike, PCR 15 being 0 after every boot; and
  // keys::ExpectedPcr15(clusterID) for IssueNetCredential), and PCRs 16-23 are not quoted. At
  // least one of PCRs 0-14 must be given.
  attest::Measurements measurements;
  // net_credential_lifetime is how long an issued network node credential is valid (its
  // not_after is the time of issue plus this); 1 s to kMaxNetCredentialLifetime.
  std::chrono::seconds net_credential_lifetime = kDefaultNetCredentialLifetime;
  // aTLS server limits (crypto::AtlsServerOptions).
  int worker_threads = 16;
  size_t max_connections = 1024;
  std::chrono::milliseconds handshake_timeout{10'000};
  std::chrono::milliseconds idle_timeout{60'000};
};

// JoinService serves IssueJoinTicket, IssueRejoinTicket and IssueNetCredential. Thread-safe.
//
// Security: the service holds no TPM and does not attest (join mode): a node cannot
// authenticate it. That is safe for the service (it releases nothing to an unverified node:
// the reply is sealed to the TPM whose EK certificate verified, with credential activation
// tying the quoting AK to that EK) but a node must treat the ticket as coming from whoever
// answered; docs/attestation.md discusses it.
class JoinService {
 public:
  // Start listens and serves. `keys` and `audit` must outlive the service. The network
  // authority is derived once, here (KeyService::NetAuthoritySeed). INVALID_ARGUMENT for an
  // empty CA bundle, no measurement of PCRs 0-14 or a non-positive credential lifetime;
  // UNAVAILABLE when the address cannot be bound or the key service is not serving.
  static absl::StatusOr<std::unique_ptr<JoinService>> Start(JoinServiceOptions options,
                                                            const KeyService* keys,
                                                            AuditLog* audit);
  // ~JoinService calls Shutdown().
  ~JoinService();
  JoinService(const JoinService&) = delete;
  JoinService& operator=(const JoinService&) = delete;

  uint16_t port() const;
  // endpoint returns "host:port".
  std::string endpoint() const;
  // Shutdown stops accepting, cuts open connections and waits for running calls. Idempotent.
  void Shutdown();

 private:
  struct Impl;
  explicit JoinService(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// JoinTicket is what a node gets from the join service.
struct JoinTicket {
  std::string disk_uuid;  // lower case
  attest::NodeSecrets secrets;
  std::vector<uint8_t> measurement_salt;
  keys::ClusterId cluster_id{};  // DeriveClusterId(measurementSecret, measurement salt)
};

// RequestJoinTicket attests with `issuer` to the join service at `endpoint` and asks for the
// ticket of `disk_uuid` (IssueRejoinTicket when `rejoin`), opening the sealed release with the
// same issuer's TPM. INVALID_ARGUMENT for a malformed UUID; the service's status when it
// refuses (PERMISSION_DENIED for attestation refusals); PERMISSION_DENIED when the release does
// not open (not sealed to this TPM, or for another purpose, disk or salt); aTLS errors
// otherwise.
absl::StatusOr<JoinTicket> RequestJoinTicket(std::shared_ptr<attest::TpmIssuer> issuer,
                                             std::string_view endpoint, std::string_view disk_uuid,
                                             bool rejoin, std::chrono::milliseconds timeout);

// NetCredential is what a node gets from IssueNetCredential: the credential bytes (as
// net::Authority::Issue returned them; give them to net::NewNodeSigner) and the cluster's
// network authority public key (for net::NewEntryVerifier).
struct NetCredential {
  std::vector<uint8_t> credential;
  net::Ed25519PublicKey authority_key{};
};

// RequestNetCredential attests with `issuer` to the join service at `endpoint` and asks for a
// network node credential for `node` and `signing_key`. The node must have joined: its PCR 15
// must hold a measured clusterID. The reply is checked before it is returned: the credential
// must parse (net::ParseCredential), be for `node` and `signing_key`, not be expired, and name
// the cluster whose clusterID this node measured (keys::ExpectedPcr15(credential cluster id) ==
// the PCR 15 read through `issuer`), so a node never accepts another cluster's credential.
// INVALID_ARGUMENT for an invalid name; FAILED_PRECONDITION when PCR 15 is 0 (the node has not
// joined); the service's status when it refuses (PERMISSION_DENIED for attestation refusals);
// PERMISSION_DENIED when the credential is for another name, key or cluster; DATA_LOSS for a
// malformed reply; aTLS errors otherwise.
//
// Security: in join mode the service is not authenticated (see JoinService): the authority key
// comes from whoever answered, and the authority's signature on the credential is not checked
// here (it would only check the answer against itself). The cluster check refuses a credential
// of another cluster; a node configured with its cluster's authority key should also compare
// authority_key with it.
absl::StatusOr<NetCredential> RequestNetCredential(std::shared_ptr<attest::TpmIssuer> issuer,
                                                   std::string_view endpoint, std::string_view node,
                                                   const net::Ed25519PublicKey& signing_key,
                                                   std::chrono::milliseconds timeout);

// PrepareJoinMeasurements returns `measurements` restricted to PCRs 0-14, as JoinService uses
// them. Exposed for tests and `keywarden serve`'s log.
attest::Measurements PrepareJoinMeasurements(const attest::Measurements& measurements);

}  // namespace keywarden::service
