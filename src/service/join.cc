#include "keywarden/service/join.h"

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
  if (auto store = crypto::CaStore::FromPem(options.ek_ca_bundle_pem); !store.ok()) {
    return InvalidArgumentError("the EK CA bundle is unusable: {}", StatusMessage(store.status()));
  }
  auto impl = std::make_unique<Impl>();
  impl->keys = keys;
  impl->audit = audit;

  // Security: PCR 15 must be 0 for join and rejoin alike (it is 0 after every boot; a node
  // measures its clusterID only after it has its ticket).
  attest::Pcr15Rule pcr15;
  pcr15.allow_zero = true;
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

}  // namespace keywarden::service
