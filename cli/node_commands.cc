#include "cli/node_commands.h"

#include <fmt/format.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/volume_commands.h"
#include "keywarden/attest/measurements.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/node/node.h"
#include "keywarden/service/join.h"
#include "keywarden/status.h"
#include "keywarden/volume/luks.h"

namespace keywarden::cli {
namespace {

using std::chrono::milliseconds;

milliseconds Millis(double seconds) { return milliseconds(static_cast<int64_t>(seconds * 1000)); }

absl::StatusOr<std::string> ReadTextFile(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError("cannot read {} {}", what, path);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in.good() && !in.eof()) return UnavailableError("cannot read {} {}", what, path);
  return text.str();
}

absl::StatusOr<attest::Measurements> ReadMeasurements(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path, "measurements file"));
  auto parsed = attest::ParseMeasurements(text);
  if (!parsed.ok()) {
    return InvalidArgumentError("measurements file {}: {}", path, StatusMessage(parsed.status()));
  }
  return parsed;
}

absl::StatusOr<std::string> ReadCaBundle(const std::string& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadTextFile(path, "EK CA bundle"));
  if (pem.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
    return InvalidArgumentError("EK CA bundle {} holds no PEM certificate", path);
  }
  return pem;
}

absl::StatusOr<keys::ClusterId> ParseClusterId(std::string_view hex) {
  auto bytes = crypto::HexDecode(hex);
  if (!bytes.ok() || bytes->size() != keys::kDigestSize) {
    return InvalidArgumentError("a clusterID is {} hex digits", 2 * keys::kDigestSize);
  }
  keys::ClusterId id;
  std::copy(bytes->begin(), bytes->end(), id.begin());
  return id;
}

// ParseListen splits "HOST:PORT" ("[v6]:PORT"); an empty host means all addresses.
absl::StatusOr<std::pair<std::string, uint16_t>> ParseListen(std::string_view listen) {
  const size_t colon = listen.rfind(':');
  if (colon == std::string_view::npos) return InvalidArgumentError("--listen is HOST:PORT");
  std::string host(listen.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty()) host = "0.0.0.0";
  const std::string port_text(listen.substr(colon + 1));
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (port_text.empty() || *end != '\0' || port < 0 || port > 65535) {
    return InvalidArgumentError("--listen port \"{}\" is not a port number", Printable(port_text));
  }
  return std::make_pair(host, static_cast<uint16_t>(port));
}

// StopOnSignals blocks SIGINT and SIGTERM in every thread started after it and stops `stopper`
// when one arrives. Call before starting threads.
class StopOnSignals {
 public:
  explicit StopOnSignals(node::Stopper& stopper) {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::thread([this, &stopper] {
      int signal_number = 0;
      sigwait(&set_, &signal_number);
      if (signal_number != 0) stopper.Stop();
    });
  }
  ~StopOnSignals() {
    // Wake the waiter if no signal came, then restore the mask.
    pthread_kill(thread_.native_handle(), SIGTERM);
    thread_.join();
    pthread_sigmask(SIG_UNBLOCK, &set_, nullptr);
  }

 private:
  sigset_t set_;
  std::thread thread_;
};

// PrintListening prints "WHAT listening on HOST:PORT" once a server is up (tests and scripts
// wait for that line).
std::function<void(const std::string&)> PrintListening(std::string what) {
  return [what = std::move(what)](const std::string& where) {
    fmt::print("{} listening on {}\n", what, where);
    std::fflush(stdout);
  };
}

void QuietTss() {
  // tpm2-tss logs to stderr by default; our errors say what failed.
  setenv("TSS2_LOG", "all+NONE", /*overwrite=*/0);
}

// OpenStateDisk maps the state disk with the key the node was given (dm-crypt, or FUSE in the
// background with --fuse-dir) and prints its path.
int OpenStateDisk(const std::string& target, const std::string& name, const std::string& fuse_dir,
                  const std::string& run_dir, const std::string& uuid, const SecretBytes& key) {
  volume::OpenRequest request;
  request.target = target;
  request.name = name;
  request.fuse_dir = fuse_dir;
  request.run_dir = run_dir;
  auto shared = std::make_shared<SecretBytes>(key.Clone());
  return RunVolumeOpenWith(
      request,
      [shared, uuid]() -> absl::StatusOr<volume::KeyFetcher> {
        return volume::KeyFetcher(
            [shared, uuid](const std::string& id) -> absl::StatusOr<SecretBytes> {
              if (id != uuid) return PermissionDeniedError("this node holds no key for {}", id);
              return shared->Clone();
            });
      },
      /*foreground=*/false);
}

}  // namespace

struct NodeCommands::Flags {
  CLI::App* node = nullptr;
  CLI::App* join = nullptr;
  CLI::App* recovery = nullptr;
  CLI::App* verification = nullptr;
  CLI::App* recover = nullptr;
  CLI::App* verify = nullptr;

  // Shared by the node commands.
  std::string tpm;
  std::string state_disk;
  std::string name = "state";
  std::string fuse_dir;
  std::string run_dir = std::string(volume::kDefaultRunDir);
  double timeout_s = 30;

  // node join
  std::string join_endpoint;
  std::string expect_cluster_id;
  volume::FormatOptions format;

  // servers
  std::string recovery_listen = fmt::format("0.0.0.0:{}", node::kDefaultRecoveryPort);
  std::string verify_listen = fmt::format("0.0.0.0:{}", node::kDefaultVerifyPort);

  // recover / verify
  std::string endpoint;
  std::string master_secret;
  std::string measurements;
  std::string ek_ca;
  std::string cluster_id;

  int RunJoin();
  int RunRecoveryServer();
  int RunVerificationServer();
  int RunRecover();
  int RunVerify();
};

NodeCommands::NodeCommands(CLI::App& app) : flags_(std::make_unique<Flags>()) {
  Flags& f = *flags_;
  f.node = app.add_subcommand(
      "node",
      "A node's side of attested key release: join the cluster, wait for recovery, answer "
      "auditors (docs/nodes.md).");
  f.node->require_subcommand(0, 1);

  auto add_tpm = [&f](CLI::App* cmd) {
    cmd->add_option("--tpm", f.tpm,
                    "the node's TPM: a TCTI such as device:/dev/tpmrm0 or "
                    "swtpm:port=2321")
        ->required();
  };
  auto add_disk = [&f](CLI::App* cmd) {
    cmd->add_option("--state-disk", f.state_disk, "the node's state disk (block device or file)")
        ->required();
    cmd->add_option("--name", f.name, "mapping name of the opened state disk")
        ->capture_default_str();
    cmd->add_option("--fuse-dir", f.fuse_dir,
                    "serve the state disk's plaintext as DIR/NAME through FUSE (hosts without "
                    "device-mapper); default: dm-crypt as /dev/mapper/NAME");
    cmd->add_option("--run-dir", f.run_dir, "where open volumes are recorded")
        ->capture_default_str();
  };

  f.join = f.node->add_subcommand(
      "join",
      "Attest to the join service with the TPM and take this node's ticket: the state disk's "
      "key DEK(disk UUID), measurementSecret and measurementSalt, sealed to this TPM. Formats "
      "the state disk on first boot (no LUKS header yet) or unlocks it later (IssueRejoinTicket), "
      "keeps the measurement salt on it, measures the clusterID into PCR 15 once, and opens it. "
      "Refuses when PCR 15 is already set (the node measured a cluster since it booted).");
  f.join->add_option("--join-endpoint", f.join_endpoint, "the join service, HOST:PORT (port 9090)")
      ->required();
  add_tpm(f.join);
  add_disk(f.join);
  f.join->add_option("--cluster-id", f.expect_cluster_id,
                     "the clusterID (hex) this node must end up in; refuses a ticket of another "
                     "cluster before touching the disk. Recommended: the join service itself "
                     "is not attested");
  f.join->add_option("--pbkdf", f.format.pbkdf, "first boot: keyslot KDF, argon2id or pbkdf2")
      ->check(CLI::IsMember({"argon2id", "pbkdf2"}))
      ->capture_default_str();
  f.join->add_option("--pbkdf-iterations", f.format.pbkdf_iterations,
                     "first boot: fixed KDF cost instead of a 2-second benchmark (tests)");
  f.join->add_option("--timeout", f.timeout_s, "seconds to wait for the join service")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();

  f.recovery = f.node->add_subcommand(
      "recovery-server",
      "For a node that cannot rejoin (the key service is down): attest over aTLS on --listen and "
      "wait until an operator runs `keywarden recover` with the master secret. Then unlock the "
      "state disk with the key sent, measure the clusterID into PCR 15, open the disk, and exit.");
  f.recovery->add_option("--listen", f.recovery_listen, "HOST:PORT to listen on")
      ->capture_default_str();
  add_tpm(f.recovery);
  add_disk(f.recovery);

  f.verification = f.node->add_subcommand(
      "verification-server",
      "Answer auditors (`keywarden verify`) over aTLS on --listen: a fresh quote per connection "
      "and credential activation proving the quoting key is in this TPM. Runs until SIGTERM.");
  f.verification->add_option("--listen", f.verify_listen, "HOST:PORT to listen on")
      ->capture_default_str();
  add_tpm(f.verification);

  auto add_attestation_policy = [&f](CLI::App* cmd) {
    cmd->add_option("--measurements", f.measurements,
                    "base measurements, JSON or YAML ({\"<pcr>\": {\"expected\": \"<hex>\", "
                    "\"warnOnly\": bool}})")
        ->required();
    cmd->add_option("--ek-ca", f.ek_ca, "PEM bundle of the CAs that issue TPM EK certificates")
        ->required();
    cmd->add_option("--timeout", f.timeout_s, "seconds to wait for the node")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
  };

  f.recover = app.add_subcommand(
      "recover",
      "Recover a node of a stopped cluster: check its attestation (EK certificate, quote, base "
      "measurements, PCR 15 still zero), then send it only its state disk's key and the "
      "measurementSecret, sealed to its TPM; the master secret never leaves this machine.");
  f.recover->add_option("--endpoint", f.endpoint, "the node's recovery server, HOST:PORT (9999)")
      ->required();
  f.recover->add_option("--master-secret", f.master_secret, "mastersecret.json")->required();
  add_attestation_policy(f.recover);
  f.recover->add_option("--cluster-id", f.cluster_id,
                        "expected clusterID (hex): fail if the node measures another");

  f.verify = app.add_subcommand(
      "verify",
      "Check a running node: a fresh quote bound to the connection, its EK certificate, its "
      "PCRs against the base measurements, PCR 15 equal to the value the clusterID implies, "
      "and credential activation. Exit status 0 only if all hold.");
  f.verify
      ->add_option("--endpoint", f.endpoint, "the node's verification server, HOST:PORT (30081)")
      ->required();
  add_attestation_policy(f.verify);
  f.verify->add_option("--cluster-id", f.cluster_id, "the cluster's clusterID (hex)")->required();
}

NodeCommands::~NodeCommands() = default;

const CLI::App* NodeCommands::parsed_group() const {
  return flags_->node->parsed() ? flags_->node : nullptr;
}

std::optional<int> NodeCommands::Run() {
  Flags& f = *flags_;
  if (f.join->parsed()) return f.RunJoin();
  if (f.recovery->parsed()) return f.RunRecoveryServer();
  if (f.verification->parsed()) return f.RunVerificationServer();
  if (f.recover->parsed()) return f.RunRecover();
  if (f.verify->parsed()) return f.RunVerify();
  return std::nullopt;
}

int NodeCommands::Flags::RunJoin() {
  QuietTss();
  std::optional<keys::ClusterId> expected;
  if (!expect_cluster_id.empty()) {
    auto id = ParseClusterId(expect_cluster_id);
    if (!id.ok()) return Fail(id.status());
    expected = *id;
  }
  auto disk = node::InspectStateDisk(state_disk);
  if (!disk.ok()) return Fail(disk.status());
  auto issuer = node::OpenFreshTpm(tpm);
  if (!issuer.ok()) return Fail(issuer.status());
  auto ticket = service::RequestJoinTicket(*issuer, join_endpoint, disk->uuid, disk->exists,
                                           Millis(timeout_s));
  if (!ticket.ok()) {
    if (absl::IsPermissionDenied(ticket.status())) {
      return Fail(PermissionDeniedError(
          "the join service refused this node ({}); the service's audit log names the check "
          "that failed. Nothing was written",
          StatusMessage(ticket.status())));
    }
    return Fail(ticket.status());
  }
  if (expected && ticket->cluster_id != *expected) {
    return Fail(PermissionDeniedError(
        "the join service's ticket is for clusterID {}, not {}; nothing was written",
        crypto::HexEncode(ticket->cluster_id), crypto::HexEncode(*expected)));
  }
  auto salt = node::PrepareStateDisk(state_disk, *disk, ticket->secrets.state_disk_key,
                                     std::span<const uint8_t>(ticket->measurement_salt), format);
  if (!salt.ok()) return Fail(salt.status());
  auto derived_id = keys::DeriveClusterId(ticket->secrets.measurement_secret, *salt);
  if (!derived_id.ok()) return Fail(derived_id.status());
  const absl::Status measured = node::MeasureCluster(**issuer, *derived_id);
  if (!measured.ok()) return Fail(measured);
  issuer->reset();  // release the TPM (a TPM serves one client at a time)
  fmt::print("{} state disk {}\n", disk->exists ? "rejoined" : "joined (first boot)", disk->uuid);
  fmt::print("cluster-id {}\n", crypto::HexEncode(*derived_id));
  fmt::print("pcr15 {}\n", crypto::HexEncode(keys::ExpectedPcr15(*derived_id)));
  std::fflush(stdout);
  return OpenStateDisk(state_disk, name, fuse_dir, run_dir, disk->uuid,
                       ticket->secrets.state_disk_key);
}

int NodeCommands::Flags::RunRecoveryServer() {
  QuietTss();
  auto listen = ParseListen(recovery_listen);
  if (!listen.ok()) return Fail(listen.status());
  node::Stopper stopper;
  StopOnSignals signals(stopper);
  auto issuer = node::OpenFreshTpm(tpm);
  if (!issuer.ok()) return Fail(issuer.status());
  node::RecoveryServerOptions options;
  options.host = listen->first;
  options.port = listen->second;
  options.target = state_disk;
  options.issuer = *issuer;
  options.on_listening = PrintListening("recovery server");
  options.on_refused = [](const std::string& peer, const absl::Status& status) {
    fmt::print(stderr, "keywarden: refused recovery attempt from {}: {}\n", peer,
               StatusMessage(status));
  };
  auto recovered = node::RunRecoveryServer(options, stopper);
  options.issuer.reset();
  issuer->reset();
  if (!recovered.ok()) return Fail(recovered.status());
  fmt::print("recovered state disk {}\n", recovered->uuid);
  fmt::print("cluster-id {}\n", crypto::HexEncode(recovered->cluster_id));
  std::fflush(stdout);
  return OpenStateDisk(state_disk, name, fuse_dir, run_dir, recovered->uuid, recovered->disk_key);
}

int NodeCommands::Flags::RunVerificationServer() {
  QuietTss();
  auto listen = ParseListen(verify_listen);
  if (!listen.ok()) return Fail(listen.status());
  node::Stopper stopper;
  StopOnSignals signals(stopper);
  auto issuer = node::OpenTpm(tpm);
  if (!issuer.ok()) return Fail(issuer.status());
  node::VerificationServerOptions options;
  options.host = listen->first;
  options.port = listen->second;
  options.issuer = *issuer;
  options.on_listening = PrintListening("verification server");
  const absl::Status status = node::RunVerificationServer(options, stopper);
  return status.ok() ? kExitOk : Fail(status);
}

int NodeCommands::Flags::RunRecover() {
  node::RecoverOptions options;
  options.endpoint = endpoint;
  options.timeout = Millis(timeout_s);
  auto measured = ReadMeasurements(measurements);
  if (!measured.ok()) return Fail(measured.status());
  options.measurements = *std::move(measured);
  auto ca = ReadCaBundle(ek_ca);
  if (!ca.ok()) return Fail(ca.status());
  options.ca_bundle_pem = *std::move(ca);
  if (!cluster_id.empty()) {
    auto id = ParseClusterId(cluster_id);
    if (!id.ok()) return Fail(id.status());
    options.expected_cluster_id = *id;
  }
  auto secret = keys::ReadMasterSecretFile(master_secret);
  if (!secret.ok()) return Fail(secret.status());
  auto result = node::RecoverNode(options, *secret);
  if (!result.ok()) return Fail(result.status());
  fmt::print("recovered node ek-sha256:{}\n", result->node);
  fmt::print("state disk {}\n", result->uuid);
  fmt::print("cluster-id {}\n", crypto::HexEncode(result->cluster_id));
  return kExitOk;
}

int NodeCommands::Flags::RunVerify() {
  node::VerifyOptions options;
  options.endpoint = endpoint;
  options.timeout = Millis(timeout_s);
  auto measured = ReadMeasurements(measurements);
  if (!measured.ok()) return Fail(measured.status());
  options.measurements = *std::move(measured);
  auto ca = ReadCaBundle(ek_ca);
  if (!ca.ok()) return Fail(ca.status());
  options.ca_bundle_pem = *std::move(ca);
  auto id = ParseClusterId(cluster_id);
  if (!id.ok()) return Fail(id.status());
  options.cluster_id = *id;
  auto result = node::VerifyNode(options);
  if (!result.ok()) return Fail(result.status());
  fmt::print(
      "verified: node ek-sha256:{} runs the base measurements and is a member of "
      "cluster {} (PCR 15 {})\n",
      result->node, crypto::HexEncode(*id), crypto::HexEncode(result->pcrs[15]));
  return kExitOk;
}

}  // namespace keywarden::cli
