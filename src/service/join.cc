#include "keywarden/service/join.h"

#include <fmt/format.h>

#include <algorithm>
#include <utility>

#include "attest.pb.h"
#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/crypto/x509.h"
#include "keywarden/status.h"

namespace keywarden::service {
namespace {

std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// DocumentFingerprint is the EK fingerprint a document claims (hex SHA-256 of its EK
// TPM2B_PUBLIC), or "unknown" when it does not parse. For audit records of refusals only: a
// refused document proves nothing, so the fingerprint is what the peer claimed.
std::string DocumentFingerprint(std::string_view document) {
  attest::AttestationDocument doc;
  if (!doc.ParseFromArray(document.data(), static_cast<int>(document.size())) ||
      doc.ek_public().empty()) {
    return "unknown";
  }
  return crypto::HexEncode(crypto::Sha256({Span(doc.ek_public())}));
}

// DocumentPcr15 returns the PCR 15 value of a document a TpmValidator accepted (the quote
// covers it). INVALID_ARGUMENT when the document does not parse or has no PCR 15.
absl::StatusOr<attest::PcrValue> DocumentPcr15(std::string_view document) {
  attest::AttestationDocument doc;
  if (!doc.ParseFromArray(document.data(), static_cast<int>(document.size())) ||
      doc.pcrs_size() != static_cast<int>(attest::kQuotedPcrCount) ||
      doc.pcrs(15).size() != attest::kPcrSize) {
    return InvalidArgumentError("the accepted document has no PCR 15 value");
  }
  attest::PcrValue out{};
  std::copy(doc.pcrs(15).begin(), doc.pcrs(15).end(), out.begin());
  return out;
}

// EkSpkiFingerprint returns the lower-case hex SHA-256 of the DER SubjectPublicKeyInfo of the
// EK of a document a TpmValidator accepted, as network node credentials carry it
// (docs/formats/network-registry.md). The SPKI is the EK certificate's, taken from a fresh
// verification against the service's CA store (the validator keeps no result), and its key must
// be the EK the document's quote and credential activation are bound to.
absl::StatusOr<std::string> EkSpkiFingerprint(const crypto::CaStore& ca_store,
                                              std::string_view document,
                                              const attest::PeerTpm& tpm) {
  attest::AttestationDocument doc;
  if (!doc.ParseFromArray(document.data(), static_cast<int>(document.size()))) {
    return PermissionDeniedError("the accepted document does not parse again");
  }
  absl::StatusOr<crypto::VerifiedCertificate> cert = ca_store.Verify(Span(doc.ek_certificate()));
  if (!cert.ok()) {
    return PermissionDeniedError("EK certificate: {}", StatusMessage(cert.status()));
  }
  if (!cert->rsa_public_key.has_value() || !(*cert->rsa_public_key == tpm.ek)) {
    return PermissionDeniedError("the EK certificate's key is not the document's EK");
  }
  return crypto::HexEncode(crypto::Sha256({std::span<const uint8_t>(cert->spki_der)}));
}

// What the last validation on this thread refused. aTLS runs a connection's handshake,
// including the validator, and then its on_handshake_failure callback on one worker thread, so
// the callback can attach the refused document's EK fingerprint to the audit record.
struct LastRefusal {
  bool set = false;
  std::string fingerprint;
  std::string reason;
};
thread_local LastRefusal last_refusal;

// AuditingValidator is the TpmValidator, remembering refusals for the audit record that the
// handshake-failure callback writes (it alone knows the peer address).
class AuditingValidator final : public crypto::AttestationValidator {
 public:
  explicit AuditingValidator(std::shared_ptr<attest::TpmValidator> inner)
      : inner_(std::move(inner)) {}

  absl::StatusOr<crypto::AttestationResult> Validate(
      std::string_view document, std::span<const uint8_t> nonce,
      std::span<const uint8_t> tls_key_hash) override {
    last_refusal = LastRefusal{};
    absl::StatusOr<crypto::AttestationResult> result =
        inner_->Validate(document, nonce, tls_key_hash);
    if (!result.ok()) {
      last_refusal =
          LastRefusal{true, DocumentFingerprint(document), StatusMessage(result.status())};
    }
    return result;
  }

 private:
  std::shared_ptr<attest::TpmValidator> inner_;
};

}  // namespace

attest::Measurements PrepareJoinMeasurements(const attest::Measurements& measurements) {
  attest::Measurements out;
  for (const auto& [index, measurement] : measurements) {
    if (index < 15) out.emplace(index, measurement);
  }
  return out;
}

struct JoinService::Impl {
  const KeyService* keys = nullptr;
  AuditLog* audit = nullptr;
  // For IssueNetCredential: the EK CA bundle (to read a verified EK's SPKI), the network
  // authority (derived from the KEK once, at start), PCR 15 of a node that measured this
  // cluster, and the credential lifetime.
  std::shared_ptr<const crypto::CaStore> ek_ca_store;
  std::unique_ptr<net::Authority> authority;
  attest::PcrValue member_pcr15{};
  std::chrono::seconds net_credential_lifetime{0};
  std::unique_ptr<crypto::AtlsServer> server;

  // Audit appends a record; a record that cannot be made durable refuses the release.
  absl::Status Audit(std::string_view event, std::string node, std::string key_id, bool allowed,
                     std::string reason, std::string_view peer) const {
    AuditRecord record;
    record.event = std::string(event);
    record.node = std::move(node);
    record.key_id = std::move(key_id);
    record.allowed = allowed;
    record.reason = std::move(reason);
    record.peer = std::string(peer);
    return audit->Append(record);
  }

  void OnHandshakeFailure(std::string_view peer_address, const absl::Status& status) const {
    std::string node = "unknown";
    const std::string message = StatusMessage(status);
    if (last_refusal.set && message.find(last_refusal.reason) != std::string::npos) {
      node = last_refusal.fingerprint;
    }
    last_refusal = LastRefusal{};
    // Nothing is released on this path, so a failed append only loses the record; it is
    // reported on stderr by the caller's logs (AuditLog errors are rare: a full disk).
    (void)Audit(kAuditEventAttest, std::move(node), "", false, "handshake: " + message,
                peer_address);
  }

  absl::StatusOr<std::string> Handle(std::string_view method, std::string_view request,
                                     const crypto::PeerInfo& peer) const {
    last_refusal = LastRefusal{};
    if (method == kIssueNetCredentialMethod) return HandleNetCredential(request, peer);
    const bool rejoin = method == kIssueRejoinTicketMethod;
    if (!rejoin && method != kIssueJoinTicketMethod) {
      return MakeStatus(absl::StatusCode::kUnimplemented, "unknown method \"{}\"",
                        Printable(method));
    }
    const std::string_view event = rejoin ? kAuditEventRejoin : kAuditEventJoin;
    const std::string_view purpose = rejoin ? attest::kPurposeRejoin : attest::kPurposeJoin;

    // Refuse: audit first, then answer. The audit must be durable before any answer.
    auto refuse = [&](std::string node, std::string key_id, absl::Status status) -> absl::Status {
      RETURN_IF_ERROR(Audit(event, std::move(node), std::move(key_id), false, StatusMessage(status),
                            peer.address));
      return status;
    };

    if (!peer.attested || peer.document.empty()) {
      return refuse("unknown", "",
                    PermissionDeniedError("the client is not attested (join mode requires a "
                                          "TPM attestation document)"));
    }
    absl::StatusOr<attest::PeerTpm> tpm = attest::PeerTpmFromDocument(peer.document);
    if (!tpm.ok()) {
      return refuse(DocumentFingerprint(peer.document), "",
                    PermissionDeniedError("the accepted document does not parse again"));
    }
    const std::string& node = tpm->ek_fingerprint;
    // Security: PCR 15 must be 0 for join and rejoin (it is 0 after every boot; a node measures
    // its clusterID only after it has its ticket). The handshake also lets this cluster's
    // member value through, for IssueNetCredential; it is refused here, before any key is
    // derived. Any other non-zero value was refused in the handshake.
    absl::StatusOr<attest::PcrValue> pcr15 = DocumentPcr15(peer.document);
    if (!pcr15.ok()) {
      return refuse(node, "", PermissionDeniedError("{}", StatusMessage(pcr15.status())));
    }
    if (*pcr15 != attest::PcrValue{}) {
      return refuse(node, "",
                    PermissionDeniedError(
                        "PCR 15 is {}: this node has already measured this cluster's clusterID "
                        "since its TPM was reset; join and rejoin need PCR 15 = 0 (reboot first)",
                        crypto::HexEncode(*pcr15)));
    }

    attest::JoinTicketRequest parsed;
    if (!parsed.ParseFromArray(request.data(), static_cast<int>(request.size()))) {
      return refuse(node, "",
                    InvalidArgumentError("request is not a valid keywarden.attest."
                                         "JoinTicketRequest"));
    }
    absl::StatusOr<std::string> uuid = keys::NormalizeUuid(parsed.disk_uuid());
    if (!uuid.ok()) {
      return refuse(
          node, Printable(parsed.disk_uuid()),
          InvalidArgumentError("disk_uuid \"{}\" is not a UUID", Printable(parsed.disk_uuid())));
    }

    absl::StatusOr<SecretBytes> disk_key = keys->GetDataKey(*uuid, attest::kNodeSecretSize);
    if (!disk_key.ok()) return refuse(node, *uuid, disk_key.status());
    absl::StatusOr<SecretBytes> measurement_secret =
        keys->GetDataKey(kMeasurementSecretId, attest::kNodeSecretSize);
    if (!measurement_secret.ok()) return refuse(node, *uuid, measurement_secret.status());
    attest::NodeSecrets secrets{std::move(*disk_key), std::move(*measurement_secret)};
    absl::StatusOr<SecretBytes> plaintext = attest::EncodeNodeSecrets(secrets);
    if (!plaintext.ok()) return refuse(node, *uuid, plaintext.status());

    const std::vector<uint8_t>& salt = keys->measurement_salt();
    attest::JoinTicketResponse response;
    const absl::Status sealed = attest::SealForTpm(
        *tpm, purpose, attest::ReleaseContext(*uuid, salt), *plaintext, response.mutable_sealed());
    if (!sealed.ok()) return refuse(node, *uuid, sealed);
    response.set_measurement_salt(std::string(salt.begin(), salt.end()));

    RETURN_IF_ERROR(Audit(event, node, *uuid, true,
                          "attestation verified; state-disk key and measurementSecret sealed to "
                          "the node's TPM",
                          peer.address));
    return response.SerializeAsString();
  }

  // HandleNetCredential serves IssueNetCredential: the handshake checked the document as for a
  // rejoin except PCR 15, which must be this cluster's member value here.
  absl::StatusOr<std::string> HandleNetCredential(std::string_view request,
                                                  const crypto::PeerInfo& peer) const {
    // Refuse: audit first, then answer. `name` is the requested registry name (key_id).
    auto refuse = [&](std::string node, std::string name, absl::Status status) -> absl::Status {
      RETURN_IF_ERROR(Audit(kAuditEventNetCredential, std::move(node), std::move(name), false,
                            StatusMessage(status), peer.address));
      return status;
    };
    if (!peer.attested || peer.document.empty()) {
      return refuse("unknown", "",
                    PermissionDeniedError("the client is not attested (join mode requires a "
                                          "TPM attestation document)"));
    }
    absl::StatusOr<attest::PeerTpm> tpm = attest::PeerTpmFromDocument(peer.document);
    if (!tpm.ok()) {
      return refuse(DocumentFingerprint(peer.document), "",
                    PermissionDeniedError("the accepted document does not parse again"));
    }
    const std::string& node = tpm->ek_fingerprint;
    // Security: only a node that joined this cluster (and measured its clusterID) gets a
    // credential: PCR 15 must be ExpectedPcr15(clusterID), which the quote covers.
    absl::StatusOr<attest::PcrValue> pcr15 = DocumentPcr15(peer.document);
    if (!pcr15.ok()) {
      return refuse(node, "", PermissionDeniedError("{}", StatusMessage(pcr15.status())));
    }
    if (*pcr15 != member_pcr15) {
      if (*pcr15 == attest::PcrValue{}) {
        return refuse(node, "",
                      PermissionDeniedError("PCR 15 is zero: the node has not joined this "
                                            "cluster (a network credential needs PCR 15 = "
                                            "ExpectedPcr15(clusterID))"));
      }
      return refuse(node, "",
                    PermissionDeniedError("PCR 15 is {}: not this cluster's measured clusterID",
                                          crypto::HexEncode(*pcr15)));
    }

    attest::NetCredentialRequest parsed;
    if (!parsed.ParseFromArray(request.data(), static_cast<int>(request.size()))) {
      return refuse(node, "",
                    InvalidArgumentError("request is not a valid keywarden.attest."
                                         "NetCredentialRequest"));
    }
    const std::string& name = parsed.node();
    if (!net::ValidNodeName(name)) {
      const std::string shown = Printable(name.substr(0, 80));
      return refuse(node, shown,
                    InvalidArgumentError("node name \"{}\" is not a valid registry name (1 to 63 "
                                         "of [a-z0-9-], a letter or digit at both ends)",
                                         shown));
    }
    if (parsed.signing_key().size() != net::Ed25519PublicKey{}.size()) {
      return refuse(
          node, name,
          InvalidArgumentError("signing_key is {} bytes; an Ed25519 public key is {}",
                               parsed.signing_key().size(), net::Ed25519PublicKey{}.size()));
    }
    net::NodeCredential credential;
    credential.node = name;
    std::copy(parsed.signing_key().begin(), parsed.signing_key().end(),
              credential.signing_key.begin());
    if (credential.signing_key == net::Ed25519PublicKey{}) {
      return refuse(node, name, InvalidArgumentError("signing_key is all zero"));
    }
    // The authority is derived from the KEK: stop issuing when the key service stops serving.
    if (absl::Status serving = keys->CheckServing(); !serving.ok()) {
      return refuse(node, name, serving);
    }
    absl::StatusOr<std::string> ek_fingerprint =
        EkSpkiFingerprint(*ek_ca_store, peer.document, *tpm);
    if (!ek_fingerprint.ok()) return refuse(node, name, ek_fingerprint.status());
    credential.cluster_id = crypto::HexEncode(keys->cluster_id());
    credential.ek_fingerprint = *ek_fingerprint;
    credential.not_after = std::chrono::system_clock::now() + net_credential_lifetime;
    absl::StatusOr<std::vector<uint8_t>> issued = authority->Issue(credential);
    if (!issued.ok()) return refuse(node, name, issued.status());

    attest::NetCredentialResponse response;
    response.set_credential(std::string(issued->begin(), issued->end()));
    const net::Ed25519PublicKey authority_key = authority->public_key();
    response.set_authority_key(std::string(authority_key.begin(), authority_key.end()));
    RETURN_IF_ERROR(Audit(
        kAuditEventNetCredential, node, name, true,
        fmt::format("attestation verified, PCR 15 = this cluster's; credential issued for node "
                    "{}, EK SPKI SHA-256 {}, not after {} (Unix seconds)",
                    name, credential.ek_fingerprint,
                    std::chrono::duration_cast<std::chrono::seconds>(
                        credential.not_after.time_since_epoch())
                        .count()),
        peer.address));
    return response.SerializeAsString();
  }
};

JoinService::JoinService(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

JoinService::~JoinService() { Shutdown(); }

absl::StatusOr<std::unique_ptr<JoinService>> JoinService::Start(JoinServiceOptions options,
                                                                const KeyService* keys,
                                                                AuditLog* audit) {
  if (keys == nullptr || audit == nullptr) {
    return InvalidArgumentError("the join service needs a key service and an audit log");
  }
  if (options.ek_ca_bundle_pem.empty()) {
    return InvalidArgumentError("the join service needs an EK CA bundle");
  }
  attest::Measurements measurements = PrepareJoinMeasurements(options.measurements);
  if (measurements.empty()) {
    return InvalidArgumentError(
        "the base measurements name none of PCRs 0-14: the join service would accept any "
        "node");
  }
  if (options.net_credential_lifetime <= std::chrono::seconds::zero() ||
      options.net_credential_lifetime > kMaxNetCredentialLifetime) {
    return InvalidArgumentError("the network credential lifetime of {} s is not in [1, {}] s",
                                options.net_credential_lifetime.count(),
                                kMaxNetCredentialLifetime.count());
  }
  absl::StatusOr<std::shared_ptr<const crypto::CaStore>> store =
      crypto::CaStore::FromPem(options.ek_ca_bundle_pem);
  if (!store.ok()) {
    return InvalidArgumentError("the EK CA bundle is unusable: {}", StatusMessage(store.status()));
  }
  auto impl = std::make_unique<Impl>();
  impl->keys = keys;
  impl->audit = audit;
  impl->ek_ca_store = std::move(*store);
  impl->net_credential_lifetime = options.net_credential_lifetime;
  {
    // The seed lives only until the Authority holds its key.
    ASSIGN_OR_RETURN(const SecretBytes seed, keys->NetAuthoritySeed());
    ASSIGN_OR_RETURN(impl->authority, net::NewAuthorityFromSeed(seed));
  }
  impl->member_pcr15 = keys::ExpectedPcr15(keys->cluster_id());

  // Security: the handshake accepts PCR 15 = 0 (join, rejoin: it is 0 after every boot; a node
  // measures its clusterID only after it has its ticket) and PCR 15 = ExpectedPcr15(this
  // cluster's clusterID) (IssueNetCredential: a member). The handler applies the method's rule:
  // the method is not known inside the handshake. Any other value is refused there.
  attest::Pcr15Rule pcr15;
  pcr15.allow_zero = true;
  pcr15.allowed_values.insert(impl->member_pcr15);
  crypto::AtlsServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.client_validator =
      std::make_shared<AuditingValidator>(std::make_shared<attest::TpmValidator>(
          std::move(options.ek_ca_bundle_pem), std::move(measurements), std::move(pcr15)));
  server_options.worker_threads = options.worker_threads;
  server_options.max_connections = options.max_connections;
  server_options.handshake_timeout = options.handshake_timeout;
  server_options.idle_timeout = options.idle_timeout;
  Impl* raw = impl.get();
  server_options.on_handshake_failure = [raw](std::string_view peer, const absl::Status& status) {
    raw->OnHandshakeFailure(peer, status);
  };
  ASSIGN_OR_RETURN(
      impl->server,
      crypto::AtlsServer::Start(std::move(server_options),
                                [raw](std::string_view method, std::string_view request,
                                      const crypto::PeerInfo& peer) -> absl::StatusOr<std::string> {
                                  return raw->Handle(method, request, peer);
                                }));
  return std::unique_ptr<JoinService>(new JoinService(std::move(impl)));
}

uint16_t JoinService::port() const { return impl_->server->port(); }

std::string JoinService::endpoint() const { return impl_->server->endpoint(); }

void JoinService::Shutdown() {
  if (impl_ && impl_->server) impl_->server->Shutdown();
}

absl::StatusOr<JoinTicket> RequestJoinTicket(std::shared_ptr<attest::TpmIssuer> issuer,
                                             std::string_view endpoint, std::string_view disk_uuid,
                                             bool rejoin, std::chrono::milliseconds timeout) {
  if (issuer == nullptr) return InvalidArgumentError("RequestJoinTicket needs a TPM issuer");
  ASSIGN_OR_RETURN(std::string uuid, keys::NormalizeUuid(disk_uuid));
  crypto::AtlsClientOptions options;
  options.issuer = issuer;
  // Join mode: the service does not attest. What it sends back is sealed to this TPM.
  options.accept_unattested_server = true;
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsClient> client,
                   crypto::AtlsClient::New(std::move(options)));
  attest::JoinTicketRequest request;
  request.set_disk_uuid(uuid);
  ASSIGN_OR_RETURN(
      std::string reply,
      client->Call(endpoint, rejoin ? kIssueRejoinTicketMethod : kIssueJoinTicketMethod,
                   request.SerializeAsString(), timeout));
  attest::JoinTicketResponse response;
  if (!response.ParseFromString(reply)) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "the join service's reply is not a JoinTicketResponse");
  }
  if (response.measurement_salt().size() != store::kMeasurementSaltSize) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "the join service sent a measurement salt of {} bytes, not {}",
                      response.measurement_salt().size(), store::kMeasurementSaltSize);
  }
  JoinTicket ticket;
  ticket.disk_uuid = uuid;
  ticket.measurement_salt.assign(response.measurement_salt().begin(),
                                 response.measurement_salt().end());
  ASSIGN_OR_RETURN(SecretBytes plaintext,
                   attest::OpenSealed(*issuer, response.sealed(),
                                      rejoin ? attest::kPurposeRejoin : attest::kPurposeJoin,
                                      attest::ReleaseContext(uuid, ticket.measurement_salt)));
  ASSIGN_OR_RETURN(ticket.secrets, attest::DecodeNodeSecrets(plaintext));
  ASSIGN_OR_RETURN(ticket.cluster_id, keys::DeriveClusterId(ticket.secrets.measurement_secret,
                                                            ticket.measurement_salt));
  return ticket;
}

absl::StatusOr<NetCredential> RequestNetCredential(std::shared_ptr<attest::TpmIssuer> issuer,
                                                   std::string_view endpoint, std::string_view node,
                                                   const net::Ed25519PublicKey& signing_key,
                                                   std::chrono::milliseconds timeout) {
  if (issuer == nullptr) return InvalidArgumentError("RequestNetCredential needs a TPM issuer");
  if (!net::ValidNodeName(node)) {
    return InvalidArgumentError("node name \"{}\" is not a valid registry name",
                                Printable(node.substr(0, 80)));
  }
  crypto::AtlsClientOptions options;
  options.issuer = issuer;
  // Join mode: the service does not attest (see the Security note in join.h).
  options.accept_unattested_server = true;
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsClient> client,
                   crypto::AtlsClient::New(std::move(options)));
  attest::NetCredentialRequest request;
  request.set_node(std::string(node));
  request.set_signing_key(std::string(signing_key.begin(), signing_key.end()));
  ASSIGN_OR_RETURN(std::string reply, client->Call(endpoint, kIssueNetCredentialMethod,
                                                   request.SerializeAsString(), timeout));
  attest::NetCredentialResponse response;
  if (!response.ParseFromString(reply)) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "the join service's reply is not a NetCredentialResponse");
  }
  NetCredential out;
  if (response.authority_key().size() != out.authority_key.size()) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "the join service sent an authority key of {} bytes, not {}",
                      response.authority_key().size(), out.authority_key.size());
  }
  std::copy(response.authority_key().begin(), response.authority_key().end(),
            out.authority_key.begin());
  out.credential.assign(response.credential().begin(), response.credential().end());
  ASSIGN_OR_RETURN(const net::NodeCredential credential, net::ParseCredential(out.credential));
  if (credential.node != node) {
    return PermissionDeniedError("the join service issued a credential for node {}, not {}",
                                 credential.node, node);
  }
  if (credential.signing_key != signing_key) {
    return PermissionDeniedError("the join service's credential certifies another signing key");
  }
  if (credential.not_after <= std::chrono::system_clock::now()) {
    return PermissionDeniedError("the join service's credential has already expired");
  }
  // Security: the credential must be for the cluster this node joined, i.e. the clusterID it
  // measured into PCR 15 (read now: PCR 15 only changes by extension until the TPM resets).
  ASSIGN_OR_RETURN(const std::vector<uint8_t> cluster_id, crypto::HexDecode(credential.cluster_id));
  ASSIGN_OR_RETURN(const attest::PcrBank pcrs, issuer->ReadPcrs());
  if (keys::ExpectedPcr15(cluster_id) != pcrs[15]) {
    return PermissionDeniedError(
        "the credential is for cluster {}, which is not the clusterID this node measured into "
        "PCR 15",
        credential.cluster_id);
  }
  return out;
}

}  // namespace keywarden::service
