// A node's side of attested key release (docs/attestation.md): its TPM, its state disk, the
// one PCR 15 measurement of its boot, the recovery server that runs while it cannot rejoin,
// and the verification server an auditor checks it through; plus the operator's side of
// recovery and verification (`keywarden recover`, `keywarden verify`).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/attest/measurements.h"
#include "keywarden/attest/release.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/volume/volume.h"

namespace keywarden::node {

// Default ports: the join service (on the key service), a node's recovery server, and a node's
// verification server (Constellation's verification service uses 30081).
inline constexpr uint16_t kDefaultJoinPort = 9090;
inline constexpr uint16_t kDefaultRecoveryPort = 9999;
inline constexpr uint16_t kDefaultVerifyPort = 30081;

// Method names on the node's aTLS servers (wire messages in proto/attest.proto).
inline constexpr char kRecoveryInfoMethod[] = "keywarden.recovery.v1/Info";
inline constexpr char kRecoverMethod[] = "keywarden.recovery.v1/Recover";
inline constexpr char kActivateMethod[] = "keywarden.verify.v1/Activate";

// Stopper lets a signal handler thread (or a test) stop a blocking server.
class Stopper {
 public:
  void Stop();
  bool stopped() const;
  // WaitFor waits until Stop or `timeout`; returns stopped().
  bool WaitFor(std::chrono::milliseconds timeout) const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  bool stopped_ = false;
};

// OpenFreshTpm opens the node's TPM, refuses when PCR 15 is not zero (FAILED_PRECONDITION: the
// node has measured a cluster since its TPM was last reset, so it must not join or recover
// again before a reboot), and creates an AK for attestation.
absl::StatusOr<std::shared_ptr<attest::TpmIssuer>> OpenFreshTpm(std::string_view tcti);

// OpenTpm opens the TPM and creates an AK, whatever PCR 15 holds (the verification server).
absl::StatusOr<std::shared_ptr<attest::TpmIssuer>> OpenTpm(std::string_view tcti);

// StateDisk is what a node finds on its state disk before it asks for keys.
struct StateDisk {
  std::string uuid;     // the header's UUID, or a fresh one for a disk without a header
  bool exists = false;  // a Keywarden LUKS2 header is there (profile-checked)
};

// InspectStateDisk loads TARGET's header. A target without any LUKS header is a first boot
// (exists = false, a fresh UUID); a header that breaks the profile or is LUKS1 is an error
// (FAILED_PRECONDITION): the node never formats over something it does not recognise.
absl::StatusOr<StateDisk> InspectStateDisk(const std::string& target);

// PrepareStateDisk makes the state disk usable with `disk_key` and returns the measurement salt
// kept on it:
//   - first boot: formats TARGET with disk.uuid and the key, then stores `salt` (required);
//   - later: checks that the key opens it (PERMISSION_DENIED otherwise), reads the salt kept on
//     it (DATA_LOSS if tampered with); if `salt` is given too it must be equal
//     (FAILED_PRECONDITION: the disk belongs to another cluster), and a disk without a stored
//     salt gets it. Without `salt` (recovery) the disk must hold one.
absl::StatusOr<std::vector<uint8_t>> PrepareStateDisk(const std::string& target,
                                                      const StateDisk& disk,
                                                      const SecretBytes& disk_key,
                                                      std::optional<std::span<const uint8_t>> salt,
                                                      const volume::FormatOptions& format);

// MeasureCluster extends PCR 15 with the clusterID via TPM2_PCR_Event, once: it re-reads PCR 15
// first (FAILED_PRECONDITION unless zero) and checks the result equals
// keys::ExpectedPcr15(cluster_id) afterwards (INTERNAL otherwise).
absl::Status MeasureCluster(attest::TpmIssuer& issuer, const keys::ClusterId& cluster_id);

// Recovered is what a node learned from a successful recovery.
struct Recovered {
  std::string uuid;
  SecretBytes disk_key;
  keys::ClusterId cluster_id{};
};

struct RecoveryServerOptions {
  std::string host = "0.0.0.0";
  uint16_t port = kDefaultRecoveryPort;
  std::string target;                         // the state disk (must exist)
  std::shared_ptr<attest::TpmIssuer> issuer;  // from OpenFreshTpm
  volume::FormatOptions format;               // unused: recovery never formats
  // on_listening is told "host:port" once the server accepts connections.
  std::function<void(const std::string& endpoint)> on_listening;
  // on_refused is told about every refused recovery attempt (for the node's log).
  std::function<void(const std::string& peer, const absl::Status& status)> on_refused;
};

// RunRecoveryServer serves kRecoveryInfoMethod and kRecoverMethod over aTLS (the node attests;
// the operator's `keywarden recover` validates it before sending anything) until one Recover
// succeeds: the release opens in this TPM, the disk key opens the state disk, the salt on the
// disk verifies, and PCR 15 has been extended with the clusterID. Then it stops and returns
// what the node needs to open its disk. CANCELLED when `stop` fires first.
absl::StatusOr<Recovered> RunRecoveryServer(const RecoveryServerOptions& options,
                                            const Stopper& stop);

// RecoverOptions configures `keywarden recover`.
struct RecoverOptions {
  std::string endpoint;  // HOST:PORT of the node's recovery server
  std::string ca_bundle_pem;
  attest::Measurements measurements;
  // expected_cluster_id, if set, must be what the node reports measuring.
  std::optional<keys::ClusterId> expected_cluster_id;
  std::chrono::milliseconds timeout{30'000};
};

struct RecoverResult {
  std::string node;  // EK fingerprint
  std::string uuid;  // the node's state disk
  keys::ClusterId cluster_id{};
};

// RecoverNode validates the node's attestation (EK chain, base measurements, PCR 15 zero), asks
// for its state disk's UUID, and sends it DEK(uuid) and measurementSecret derived from `secret`,
// sealed for the node's TPM. Only those two keys leave the operator's machine (never the master
// secret or the KEK).
absl::StatusOr<RecoverResult> RecoverNode(const RecoverOptions& options,
                                          const keys::MasterSecret& secret);

struct VerificationServerOptions {
  std::string host = "0.0.0.0";
  uint16_t port = kDefaultVerifyPort;
  std::shared_ptr<attest::TpmIssuer> issuer;
  std::function<void(const std::string& endpoint)> on_listening;
};

// RunVerificationServer serves kActivateMethod over aTLS (the node attests) until `stop`.
absl::Status RunVerificationServer(const VerificationServerOptions& options, const Stopper& stop);

struct VerifyOptions {
  std::string endpoint;
  std::string ca_bundle_pem;
  attest::Measurements measurements;
  keys::ClusterId cluster_id{};
  std::chrono::milliseconds timeout{30'000};
};

struct VerifyResult {
  std::string node;  // EK fingerprint
  std::array<attest::PcrValue, attest::kQuotedPcrCount> pcrs{};
};

// VerifyNode checks a running node: its quote (fresh nonce, bound to the TLS key), its EK chain,
// its PCRs against the base measurements, PCR 15 == ExpectedPcr15(cluster_id), and that the
// quoting AK lives in the certified EK's TPM (a credential challenge it must answer).
// PERMISSION_DENIED naming the failed check.
absl::StatusOr<VerifyResult> VerifyNode(const VerifyOptions& options);

}  // namespace keywarden::node
