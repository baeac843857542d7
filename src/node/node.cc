#include "keywarden/node/node.h"

#include <algorithm>

#include "attest.pb.h"
#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"
#include "keywarden/volume/luks.h"

namespace keywarden::node {
namespace {

using namespace std::chrono_literals;

std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Bytes(std::span<const uint8_t> b) { return std::string(b.begin(), b.end()); }

absl::Status CheckPcr15Zero(attest::TpmIssuer& issuer) {
  ASSIGN_OR_RETURN(attest::PcrBank bank, issuer.ReadPcrs());
  if (bank[15] != attest::PcrValue{}) {
    return FailedPreconditionError(
        "PCR 15 is already set ({}): this node has measured a cluster since its TPM was last "
        "reset; it joins or recovers only once per boot (reboot it to start over)",
        crypto::HexEncode(bank[15]));
  }
  return absl::OkStatus();
}

// QuotedWithoutPcr15 keeps the base measurements a quote covers, PCRs 0-14: PCR 15 is judged by
// the PCR 15 rule (zero for recovery, the clusterID's value for verify), not by the file.
attest::Measurements QuotedWithoutPcr15(attest::Measurements measurements) {
  std::erase_if(measurements, [](const auto& entry) { return entry.first >= 15; });
  return measurements;
}

// RecoveryState is shared by the recovery server's handler calls.
struct RecoveryState {
  std::mutex mu;
  std::optional<Recovered> done;  // set by the one successful Recover
};

}  // namespace

void Stopper::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
  }
  cv_.notify_all();
}

bool Stopper::stopped() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stopped_;
}

bool Stopper::WaitFor(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [this] { return stopped_; });
  return stopped_;
}

absl::StatusOr<std::shared_ptr<attest::TpmIssuer>> OpenTpm(std::string_view tcti) {
  ASSIGN_OR_RETURN(std::unique_ptr<attest::Tpm> tpm, attest::Tpm::Open(tcti));
  ASSIGN_OR_RETURN(std::unique_ptr<attest::TpmIssuer> issuer,
                   attest::TpmIssuer::New(std::move(tpm)));
  return std::shared_ptr<attest::TpmIssuer>(std::move(issuer));
}

absl::StatusOr<std::shared_ptr<attest::TpmIssuer>> OpenFreshTpm(std::string_view tcti) {
  ASSIGN_OR_RETURN(std::shared_ptr<attest::TpmIssuer> issuer, OpenTpm(tcti));
  RETURN_IF_ERROR(CheckPcr15Zero(*issuer));
  return issuer;
}

absl::StatusOr<StateDisk> InspectStateDisk(const std::string& target) {
  ASSIGN_OR_RETURN(uint64_t size, volume::TargetSize(target));
  (void)size;
  auto device = volume::LuksDevice::Load(target);
  StateDisk disk;
  if (absl::IsNotFound(device.status())) {
    ASSIGN_OR_RETURN(disk.uuid, volume::RandomUuid());
    return disk;
  }
  if (!device.ok()) {
    return FailedPreconditionError("state disk {}: {}", target, StatusMessage(device.status()));
  }
  if ((*device)->facts().version != volume::LuksVersion::kLuks2) {
    return FailedPreconditionError("state disk {} is LUKS1; a state disk is LUKS2", target);
  }
  disk.uuid = (*device)->facts().uuid;
  disk.exists = true;
  return disk;
}

absl::StatusOr<std::vector<uint8_t>> PrepareStateDisk(const std::string& target,
                                                      const StateDisk& disk,
                                                      const SecretBytes& disk_key,
                                                      std::optional<std::span<const uint8_t>> salt,
                                                      const volume::FormatOptions& format) {
  if (!disk.exists) {
    if (!salt) return InvalidArgumentError("a first boot needs the measurement salt");
    volume::FormatRequest request;
    request.target = target;
    request.uuid = disk.uuid;
    request.options = format;
    const SecretBytes& key = disk_key;
    const std::string uuid = disk.uuid;
    auto formatted = volume::FormatVolume(
        request, [&key, &uuid](const std::string& id) -> absl::StatusOr<SecretBytes> {
          if (id != uuid) return InternalError("asked for key {}, not the state disk's", id);
          return key.Clone();
        });
    if (!formatted.ok()) return formatted.status();
    RETURN_IF_ERROR(volume::WriteNodeState(target, disk_key, *salt));
    return std::vector<uint8_t>(salt->begin(), salt->end());
  }
  ASSIGN_OR_RETURN(std::optional<std::vector<uint8_t>> stored,
                   volume::ReadNodeState(target, disk_key));
  if (stored && salt && !std::ranges::equal(*stored, *salt)) {
    return FailedPreconditionError(
        "the state disk keeps measurement salt {}, but the join service's cluster uses {}: the "
        "disk belongs to another cluster",
        crypto::HexEncode(*stored), crypto::HexEncode(*salt));
  }
  if (stored) return *stored;
  if (!salt) {
    return FailedPreconditionError(
        "the state disk keeps no measurement salt, so the clusterID cannot be computed");
  }
  RETURN_IF_ERROR(volume::WriteNodeState(target, disk_key, *salt));
  return std::vector<uint8_t>(salt->begin(), salt->end());
}

absl::Status MeasureCluster(attest::TpmIssuer& issuer, const keys::ClusterId& cluster_id) {
  RETURN_IF_ERROR(CheckPcr15Zero(issuer));
  RETURN_IF_ERROR(issuer.ExtendPcr15WithEvent(cluster_id));
  ASSIGN_OR_RETURN(attest::PcrBank bank, issuer.ReadPcrs());
  if (bank[15] != keys::ExpectedPcr15(cluster_id)) {
    return InternalError("PCR 15 is {} after measuring the clusterID, not the expected {}",
                         crypto::HexEncode(bank[15]),
                         crypto::HexEncode(keys::ExpectedPcr15(cluster_id)));
  }
  return absl::OkStatus();
}

absl::StatusOr<Recovered> RunRecoveryServer(const RecoveryServerOptions& options,
                                            const Stopper& stop) {
  if (!options.issuer) return InvalidArgumentError("the recovery server needs the node's TPM");
  ASSIGN_OR_RETURN(StateDisk disk, InspectStateDisk(options.target));
  if (!disk.exists) {
    return FailedPreconditionError(
        "{} holds no state disk: a node without one joins instead of recovering", options.target);
  }
  auto state = std::make_shared<RecoveryState>();
  Stopper done;
  const std::string target = options.target;
  const std::shared_ptr<attest::TpmIssuer> issuer = options.issuer;
  const volume::FormatOptions format = options.format;
  auto handler = [state, disk, target, issuer, format, &done](
                     std::string_view method, std::string_view request,
                     const crypto::PeerInfo&) -> absl::StatusOr<std::string> {
    if (method == kRecoveryInfoMethod) {
      attest::RecoveryInfo info;
      info.set_disk_uuid(disk.uuid);
      return info.SerializeAsString();
    }
    if (method != kRecoverMethod)
      return MakeStatus(absl::StatusCode::kUnimplemented, "no method {}", Printable(method));
    attest::RecoverRequest parsed;
    if (!parsed.ParseFromArray(request.data(), static_cast<int>(request.size()))) {
      return InvalidArgumentError("the request is not a RecoverRequest");
    }
    std::lock_guard<std::mutex> lock(state->mu);
    if (state->done) return FailedPreconditionError("this node has already been recovered");
    ASSIGN_OR_RETURN(SecretBytes plaintext,
                     attest::OpenSealed(*issuer, parsed.sealed(), attest::kPurposeRecover,
                                        attest::ReleaseContext(disk.uuid, {})));
    ASSIGN_OR_RETURN(attest::NodeSecrets secrets, attest::DecodeNodeSecrets(plaintext));
    auto salt = PrepareStateDisk(target, disk, secrets.state_disk_key, std::nullopt, format);
    if (!salt.ok()) {
      if (absl::IsPermissionDenied(salt.status())) {
        return PermissionDeniedError(
            "the key sent does not open this node's state disk (another cluster's master "
            "secret?)");
      }
      return salt.status();
    }
    ASSIGN_OR_RETURN(keys::ClusterId cluster_id,
                     keys::DeriveClusterId(secrets.measurement_secret, *salt));
    RETURN_IF_ERROR(MeasureCluster(*issuer, cluster_id));
    Recovered recovered;
    recovered.uuid = disk.uuid;
    recovered.disk_key = std::move(secrets.state_disk_key);
    recovered.cluster_id = cluster_id;
    state->done = std::move(recovered);
    done.Stop();
    attest::RecoverResponse response;
    response.set_cluster_id(Bytes(cluster_id));
    return response.SerializeAsString();
  };
  crypto::AtlsServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.issuer = options.issuer;
  server_options.worker_threads = 2;
  server_options.max_connections = 64;
  if (options.on_refused) {
    server_options.on_handshake_failure = [cb = options.on_refused](std::string_view peer,
                                                                    const absl::Status& status) {
      cb(std::string(peer), status);
    };
  }
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsServer> server,
                   crypto::AtlsServer::Start(server_options, handler));
  if (options.on_listening) options.on_listening(server->endpoint());
  while (!done.WaitFor(100ms)) {
    if (stop.stopped()) break;
  }
  // Let the last response reach the operator before cutting connections.
  if (done.stopped()) std::this_thread::sleep_for(200ms);
  server->Shutdown();
  std::lock_guard<std::mutex> lock(state->mu);
  if (!state->done)
    return MakeStatus(absl::StatusCode::kCancelled,
                      "the recovery server was stopped before a recovery");
  return std::move(*state->done);
}

absl::StatusOr<RecoverResult> RecoverNode(const RecoverOptions& options,
                                          const keys::MasterSecret& secret) {
  crypto::AtlsClientOptions client_options;
  client_options.server_validator = std::make_shared<attest::TpmValidator>(
      options.ca_bundle_pem, QuotedWithoutPcr15(options.measurements), attest::Pcr15Rule{true, {}});
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsClient> client,
                   crypto::AtlsClient::New(client_options));
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsConnection> connection,
                   client->Connect(options.endpoint, options.timeout));
  ASSIGN_OR_RETURN(attest::PeerTpm peer, attest::PeerTpmFromDocument(connection->peer().document));
  ASSIGN_OR_RETURN(std::string info_bytes,
                   connection->Call(kRecoveryInfoMethod, "", options.timeout));
  attest::RecoveryInfo info;
  if (!info.ParseFromString(info_bytes)) {
    return InvalidArgumentError("the node's answer is not a RecoveryInfo");
  }
  ASSIGN_OR_RETURN(std::string uuid, keys::NormalizeUuid(info.disk_uuid()));
  ASSIGN_OR_RETURN(std::unique_ptr<keys::Kek> kek, keys::Kek::FromMasterSecret(secret));
  attest::NodeSecrets secrets;
  ASSIGN_OR_RETURN(secrets.state_disk_key, kek->StateDiskKey(uuid));
  ASSIGN_OR_RETURN(secrets.measurement_secret, kek->MeasurementSecret());
  ASSIGN_OR_RETURN(SecretBytes plaintext, attest::EncodeNodeSecrets(secrets));
  attest::RecoverRequest request;
  RETURN_IF_ERROR(attest::SealForTpm(peer, attest::kPurposeRecover,
                                     attest::ReleaseContext(uuid, {}), plaintext,
                                     request.mutable_sealed()));
  ASSIGN_OR_RETURN(std::string reply,
                   connection->Call(kRecoverMethod, request.SerializeAsString(), options.timeout));
  attest::RecoverResponse response;
  if (!response.ParseFromString(reply) || response.cluster_id().size() != keys::kDigestSize) {
    return InvalidArgumentError("the node's answer is not a RecoverResponse");
  }
  RecoverResult result;
  result.node = peer.ek_fingerprint;
  result.uuid = uuid;
  std::copy(response.cluster_id().begin(), response.cluster_id().end(), result.cluster_id.begin());
  if (options.expected_cluster_id && result.cluster_id != *options.expected_cluster_id) {
    return FailedPreconditionError(
        "the node measured clusterID {}, not the expected {}: its state disk keeps another "
        "cluster's measurement salt",
        crypto::HexEncode(result.cluster_id), crypto::HexEncode(*options.expected_cluster_id));
  }
  return result;
}

absl::Status RunVerificationServer(const VerificationServerOptions& options, const Stopper& stop) {
  if (!options.issuer) return InvalidArgumentError("the verification server needs the TPM");
  const std::shared_ptr<attest::TpmIssuer> issuer = options.issuer;
  auto handler = [issuer](std::string_view method, std::string_view request,
                          const crypto::PeerInfo&) -> absl::StatusOr<std::string> {
    if (method != kActivateMethod)
      return MakeStatus(absl::StatusCode::kUnimplemented, "no method {}", Printable(method));
    attest::ActivateRequest parsed;
    if (!parsed.ParseFromArray(request.data(), static_cast<int>(request.size()))) {
      return InvalidArgumentError("the request is not an ActivateRequest");
    }
    ASSIGN_OR_RETURN(SecretBytes challenge,
                     attest::OpenSealed(*issuer, parsed.sealed(), attest::kPurposeVerify, ""));
    attest::ActivateResponse response;
    // The challenge is the verifier's own random value, not a key: returning it is the point.
    response.set_challenge(Bytes(challenge.Reveal(InsecureSecretAccess::Get())));
    return response.SerializeAsString();
  };
  crypto::AtlsServerOptions server_options;
  server_options.host = options.host;
  server_options.port = options.port;
  server_options.issuer = options.issuer;
  server_options.worker_threads = 2;
  server_options.max_connections = 64;
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsServer> server,
                   crypto::AtlsServer::Start(server_options, handler));
  if (options.on_listening) options.on_listening(server->endpoint());
  while (!stop.WaitFor(1000ms)) {
  }
  server->Shutdown();
  return absl::OkStatus();
}

absl::StatusOr<VerifyResult> VerifyNode(const VerifyOptions& options) {
  attest::Pcr15Rule rule;
  rule.allow_zero = false;
  rule.allowed_values.insert(keys::ExpectedPcr15(options.cluster_id));
  crypto::AtlsClientOptions client_options;
  client_options.server_validator = std::make_shared<attest::TpmValidator>(
      options.ca_bundle_pem, QuotedWithoutPcr15(options.measurements), rule);
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsClient> client,
                   crypto::AtlsClient::New(client_options));
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::AtlsConnection> connection,
                   client->Connect(options.endpoint, options.timeout));
  const std::string& document = connection->peer().document;
  ASSIGN_OR_RETURN(attest::PeerTpm peer, attest::PeerTpmFromDocument(document));
  ASSIGN_OR_RETURN(SecretBytes challenge, crypto::RandomSecret(attest::kNodeSecretSize));
  attest::ActivateRequest request;
  RETURN_IF_ERROR(
      attest::SealForTpm(peer, attest::kPurposeVerify, "", challenge, request.mutable_sealed()));
  auto reply = connection->Call(kActivateMethod, request.SerializeAsString(), options.timeout);
  if (!reply.ok()) {
    return PermissionDeniedError(
        "the node could not activate a credential for its EK and AK ({}): its quoting key is "
        "not proven to live in the certified TPM",
        StatusMessage(reply.status()));
  }
  attest::ActivateResponse response;
  if (!response.ParseFromString(*reply) ||
      !std::ranges::equal(Span(response.challenge()),
                          challenge.Reveal(InsecureSecretAccess::Get()))) {
    return PermissionDeniedError(
        "the node answered the credential challenge wrongly: its quoting key is not proven to "
        "live in the certified TPM");
  }
  attest::AttestationDocument parsed;
  if (!parsed.ParseFromString(document) ||
      parsed.pcrs_size() != static_cast<int>(attest::kQuotedPcrCount)) {
    return InternalError("the accepted document no longer parses");
  }
  VerifyResult result;
  result.node = peer.ek_fingerprint;
  for (int i = 0; i < parsed.pcrs_size(); ++i) {
    std::copy(parsed.pcrs(i).begin(), parsed.pcrs(i).end(), result.pcrs[i].begin());
  }
  return result;
}

}  // namespace keywarden::node
