// keywarden: the command-line entry point. Parses flags and calls cli/commands.cc; nothing
// else happens here.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "cli/attest_commands.h"
#include "cli/byok_commands.h"
#include "cli/byok_ops_commands.h"
#include "cli/commands.h"
#include "cli/net_commands.h"
#include "cli/node_commands.h"
#include "cli/volume_commands.h"
#include "keywarden/keys/hierarchy.h"

namespace {

// HexBytes validates a hex argument of exactly `bytes` bytes.
CLI::Validator HexBytes(size_t bytes) {
  return CLI::Validator(
      [bytes](std::string& value) -> std::string {
        if (value.size() != 2 * bytes) {
          return "must be " + std::to_string(2 * bytes) + " hex digits (" + std::to_string(bytes) +
                 " bytes), got " + std::to_string(value.size());
        }
        for (char c : value) {
          if (!std::isxdigit(static_cast<unsigned char>(c))) return "must be hex digits only";
        }
        return "";
      },
      "HEX" + std::to_string(2 * bytes));
}

// KeySourceFlags are the flags that say where a volume's key comes from.
struct KeySourceFlags {
  keywarden::cli::KeySource keys;
  double timeout_s = 10;
};

const CLI::Validator kNonEmpty(
    [](std::string& value) -> std::string { return value.empty() ? "must not be empty" : ""; },
    "NONEMPTY");

}  // namespace

int main(int argc, char** argv) {
  using namespace keywarden;
  CLI::App app{
      "keywarden: key management for confidential-computing clusters.\n"
      "Creates a cluster's master secret, derives its Constellation-compatible identity and "
      "data-encryption keys, and serves those keys (docs/key-service.md).",
      "keywarden"};
  app.set_version_flag("--version", "keywarden 0.1.0");
  app.require_subcommand(0, 1);
  app.fallthrough(false);

  // init
  std::string init_dir = "./keywarden-state";
  CLI::App* init = app.add_subcommand(
      "init",
      "Create a new cluster: a master secret (mastersecret.json, mode 0600) and its public "
      "identity (cluster.json: measurement salt and clusterID) in DIR. Refuses a DIR that "
      "already holds a cluster. Prints the clusterID.");
  init->add_option("--dir", init_dir, "state directory")->capture_default_str();

  // status
  std::string status_dir = "./keywarden-state";
  CLI::App* status = app.add_subcommand(
      "status",
      "Show the cluster in DIR: checks that cluster.json belongs to mastersecret.json, then "
      "prints `cluster-id HEX` and `pcr15 HEX` (the PCR 15 value of a bootstrapped node).");
  status->add_option("--dir", status_dir, "state directory")->capture_default_str();

  // derive
  CLI::App* derive = app.add_subcommand(
      "derive",
      "Derive keys and identities from a master secret, offline (docs/key-hierarchy.md).");
  derive->require_subcommand(0, 1);

  std::string dek_secret, dek_id;
  size_t dek_length = keys::kDefaultDekSize;
  CLI::App* dek = derive->add_subcommand(
      "dek",
      "Print DEK(ID) = HKDF-SHA256(masterKey, salt, \"key-\" || ID, LENGTH) in hex: the key "
      "Constellation's key service returns for data_key_id ID. IDs are case-sensitive.");
  dek->add_option("--master-secret", dek_secret, "mastersecret.json")->required();
  dek->add_option("--id", dek_id, "key identifier (without the \"key-\" prefix)")
      ->required()
      ->check(kNonEmpty);
  dek->add_option("--length", dek_length, "key length in bytes")
      ->check(CLI::Range(size_t{1}, keys::kMaxDekSize))
      ->capture_default_str();

  std::string disk_secret, disk_uuid;
  CLI::App* disk = derive->add_subcommand(
      "disk-key",
      "Print the state-disk key for a LUKS UUID: DEK(lowercase(UUID), 32), the passphrase of "
      "the node's state disk.");
  disk->add_option("--master-secret", disk_secret, "mastersecret.json")->required();
  disk->add_option("--uuid", disk_uuid, "LUKS UUID of the disk (8-4-4-4-12 hex digits)")
      ->required();

  std::string cid_secret, cid_salt;
  CLI::App* cid = derive->add_subcommand(
      "cluster-id",
      "Print clusterID = HKDF-SHA256(measurementSecret, measurementSalt, \"key-clusterID\", 32).");
  cid->add_option("--master-secret", cid_secret, "mastersecret.json")->required();
  cid->add_option("--measurement-salt", cid_salt, "measurement salt (hex, from cluster.json)")
      ->required()
      ->check(HexBytes(keys::kMeasurementSaltSize));

  std::string pcr_cluster_id;
  CLI::App* pcr =
      derive->add_subcommand("pcr15",
                             "Print the PCR 15 value a node shows after measuring CLUSTER_ID: "
                             "SHA256(0^32 || SHA256(clusterID)).");
  pcr->add_option("--cluster-id", pcr_cluster_id, "clusterID (hex)")
      ->required()
      ->check(HexBytes(keys::kDigestSize));

  // serve
  service::ServeOptions serve_options;
  std::string log_format = "text";
  double store_timeout_s = 2, drain_timeout_s = 10;
  CLI::App* serve = app.add_subcommand(
      "serve",
      "Run the key service: kms.API/GetDataKey (Constellation's API) and grpc.health.v1 on "
      "--listen. The KEK lives in the cluster store (--store); an empty store is initialized "
      "from DIR/mastersecret.json and DIR/cluster.json. Stops cleanly on SIGTERM.");
  serve
      ->add_option("--dir", serve_options.dir,
                   "state directory from `keywarden init` (mastersecret.json, cluster.json, "
                   "and the default store keywarden.db)")
      ->capture_default_str();
  serve->add_option("--listen", serve_options.listen, "gRPC address HOST:PORT (port 0: any)")
      ->capture_default_str();
  serve->add_option("--store", serve_options.store_uri,
                    "cluster store: sqlite://PATH (default DIR/keywarden.db) or "
                    "etcd://HOST:PORT[,HOST:PORT...][?ca=FILE&cert=FILE&key=FILE&prefix=P]");
  serve->add_option("--master-secret", serve_options.master_secret,
                    "mastersecret.json to initialize an empty store (default "
                    "DIR/mastersecret.json if present); must match an initialized store");
  serve->add_option("--metrics", serve_options.metrics_listen,
                    "serve Prometheus metrics on HOST:PORT at /metrics (default off)");
  serve->add_option("--tls-cert", serve_options.tls_cert, "PEM server certificate (enables TLS)");
  serve->add_option("--tls-key", serve_options.tls_key, "PEM server private key");
  serve->add_option("--tls-client-ca", serve_options.tls_client_ca,
                    "PEM CA bundle: require and verify client certificates (mutual TLS)");
  serve
      ->add_option("--join-listen", serve_options.join_listen,
                   "join service address HOST:PORT (aTLS, issue 5); runs only with "
                   "--measurements and --ek-ca; \"\" turns it off")
      ->capture_default_str();
  serve->add_option("--measurements", serve_options.join_measurements,
                    "base measurements the join service requires of joining nodes (JSON or "
                    "YAML, as `keywarden measurements read` prints; PCRs 0-14 are used, PCR 15 "
                    "must be 0); without it the join service is off");
  serve->add_option("--ek-ca", serve_options.join_ek_ca,
                    "PEM bundle of the TPM manufacturer CAs that EK certificates must chain to "
                    "(with --measurements)");
  std::string net_credential_lifetime;  // empty: ServeOptions' default (1d)
  serve->add_option("--net-credential-lifetime", net_credential_lifetime,
                    "join service: how long a network node credential (`keywarden net agent`) "
                    "stays valid: a whole number and s, m, h or d (default 1d). Agents renew at "
                    "2/3 of it; a node that stops without leaving drops out of its peers' "
                    "configuration when its credential expires");
  serve->add_option("--audit-log", serve_options.audit_log,
                    "hash-chained audit log of the join service, or in user-managed mode of "
                    "every wrap/unwrap decision (default DIR/audit.log)");
  serve->add_option("--kms", serve_options.kms_uri,
                    "user-managed mode (docs/byok.md): the KEK provider, e.g. "
                    "kms://pkcs11?module=PATH&token=LABEL&pin=PIN&key=LABEL; with --storage");
  serve->add_option("--kms-previous", serve_options.previous_kms_uris,
                    "user-managed mode, during a KEK rotation: a KEK that stored DEKs may still "
                    "be wrapped under (repeatable); they unwrap there, new DEKs are wrapped under "
                    "--kms. Drop it once `keywarden kek rotate` has finished.");
  serve->add_option("--storage", serve_options.storage_uri,
                    "user-managed mode: the DEK store, e.g. storage://sqlite?path=FILE");
  serve
      ->add_option("--dek-cache-entries", serve_options.dek_cache_entries,
                   "user-managed mode: unwrapped DEKs kept in locked memory (0: unwrap per "
                   "request)")
      ->capture_default_str();
  double dek_cache_ttl_s = 300;
  serve
      ->add_option("--dek-cache-ttl", dek_cache_ttl_s,
                   "user-managed mode: seconds a cached DEK is used before it is unwrapped again")
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  serve->add_option("--log-format", log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
  serve
      ->add_option("--store-timeout", store_timeout_s,
                   "seconds a store operation may take before it counts as unreachable")
      ->check(CLI::Range(0.1, 600.0))
      ->capture_default_str();
  serve
      ->add_option("--drain-timeout", drain_timeout_s,
                   "seconds to let in-flight calls finish after SIGTERM")
      ->check(CLI::Range(0.0, 600.0))
      ->capture_default_str();

  // dek get
  CLI::App* dek_cmd = app.add_subcommand("dek", "Data-encryption keys from a running key service.");
  dek_cmd->require_subcommand(0, 1);
  service::ClientOptions client_options;
  std::string get_id;
  size_t get_length = keys::kDefaultDekSize;
  double client_timeout_s = 10;
  CLI::App* dek_get =
      dek_cmd->add_subcommand("get", "Call kms.API/GetDataKey and print the key in hex.");
  dek_get->add_option("--endpoint", client_options.endpoint, "key service HOST:PORT")->required();
  dek_get->add_option("--id", get_id, "data_key_id (without the \"key-\" prefix)")->required();
  dek_get->add_option("--length", get_length, "key length in bytes")
      ->check(CLI::Range(size_t{1}, keys::kMaxDekSize))
      ->capture_default_str();
  dek_get->add_option("--tls-ca", client_options.tls_ca, "PEM CA bundle (enables TLS)");
  dek_get->add_option("--tls-cert", client_options.tls_cert, "PEM client certificate (mutual TLS)");
  dek_get->add_option("--tls-key", client_options.tls_key, "PEM client private key");
  dek_get->add_option("--timeout", client_timeout_s, "seconds to wait for the answer")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();

  // volume
  CLI::App* volume_cmd = app.add_subcommand(
      "volume",
      "Encrypted volumes: LUKS2 (aes-xts-plain64, 4096-byte sectors) whose passphrase is the DEK "
      "of the volume's UUID. Opened with dm-crypt, or in userspace through FUSE where there is "
      "no device-mapper (docs/volumes.md).");
  volume_cmd->require_subcommand(0, 1);
  // Flags shared by the commands that need the volume's key.
  auto add_key_source = [](CLI::App* cmd, KeySourceFlags& flags) {
    auto* endpoint =
        cmd->add_option("--endpoint", flags.keys.client.endpoint, "key service HOST:PORT");
    auto* secret = cmd->add_option(
        "--master-secret", flags.keys.master_secret,
        "derive the key locally from mastersecret.json instead (recovery; no key service)");
    endpoint->excludes(secret);
    cmd->add_option("--tls-ca", flags.keys.client.tls_ca, "PEM CA bundle (enables TLS)");
    cmd->add_option("--tls-cert", flags.keys.client.tls_cert, "PEM client certificate");
    cmd->add_option("--tls-key", flags.keys.client.tls_key, "PEM client private key");
    cmd->add_option("--timeout", flags.timeout_s, "seconds to wait for the key service")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
  };

  volume::FormatRequest format_request;
  KeySourceFlags format_keys;
  std::string format_type = "luks2";
  CLI::App* vformat = volume_cmd->add_subcommand(
      "format",
      "Create a LUKS volume on TARGET (a block device or a file). Picks a fresh UUID, gets "
      "DEK(uuid) from the key service first (nothing is written if it cannot), then writes a "
      "LUKS2 header with a random 64-byte volume key, one keyslot opened by the DEK, and a "
      "Keywarden token. Prints the volume's parameters.");
  vformat->add_option("TARGET", format_request.target, "block device or file")->required();
  add_key_source(vformat, format_keys);
  vformat->add_flag("--integrity", format_request.options.integrity,
                    "add dm-integrity hmac(sha256) (96-byte volume key; needs device-mapper)");
  vformat
      ->add_option("--type", format_type,
                   "luks2, or luks1 for interop with qemu-img and nbdkit (LUKS1's passphrase "
                   "is the DEK in hex)")
      ->check(CLI::IsMember({"luks2", "luks1"}))
      ->capture_default_str();
  vformat->add_option("--pbkdf", format_request.options.pbkdf, "keyslot KDF: argon2id or pbkdf2")
      ->check(CLI::IsMember({"argon2id", "pbkdf2"}))
      ->capture_default_str();
  vformat->add_option("--pbkdf-iterations", format_request.options.pbkdf_iterations,
                      "fixed KDF cost instead of a 2-second benchmark (for tests: the DEK is "
                      "already a 256-bit random key)");
  vformat->add_flag("--wipe", format_request.wipe,
                    "write encrypted zeros over the whole data area (progress on a terminal)");
  vformat->add_flag("--force", format_request.force, "replace an existing LUKS header");

  volume::OpenRequest open_request;
  KeySourceFlags open_keys;
  bool open_foreground = false;
  CLI::App* vopen = volume_cmd->add_subcommand(
      "open",
      "Check TARGET's header against Keywarden's profile, get its key, unlock it and map it as "
      "NAME: /dev/mapper/NAME with dm-crypt, or with --fuse-dir the file DIR/NAME served in "
      "userspace with dm-crypt's exact format. Prints the path once it is usable.");
  vopen->add_option("TARGET", open_request.target, "block device or file")->required();
  vopen->add_option("--name", open_request.name, "mapping name")->required();
  add_key_source(vopen, open_keys);
  vopen->add_option("--fuse-dir", open_request.fuse_dir,
                    "serve the plaintext as DIR/NAME through FUSE (an empty directory; for "
                    "hosts without device-mapper)");
  vopen->add_flag("--foreground", open_foreground,
                  "with --fuse-dir: serve in this process instead of in the background");
  vopen->add_option("--threads", open_request.fuse_threads, "FUSE worker threads")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();

  std::string close_name;
  CLI::App* vclose = volume_cmd->add_subcommand(
      "close", "Unmap volume NAME (unmount its FUSE file or remove its dm mapping).");
  vclose->add_option("NAME", close_name, "mapping name")->required();

  std::string status_what;
  bool status_json = false;
  CLI::App* vstatus = volume_cmd->add_subcommand(
      "status",
      "Show a volume: header parameters, the profile check, key id, integrity, and where it is "
      "mapped. Exit status 1 if the header breaks the profile.");
  vstatus->add_option("TARGET_OR_NAME", status_what, "device/file, or an open volume's name")
      ->required();
  vstatus->add_flag("--json", status_json, "print JSON");

  // measurements
  CLI::App* measurements_cmd = app.add_subcommand(
      "measurements", "TPM measurements in Constellation's format (docs/attestation.md).");
  measurements_cmd->require_subcommand(0, 1);
  std::string measure_tpm, measure_format = "json";
  CLI::App* mread = measurements_cmd->add_subcommand(
      "read",
      "Print a TPM's SHA-256 PCRs 0-23 as base measurements: {\"<pcr>\": {\"expected\": "
      "\"<hex>\", \"warnOnly\": false}}. Edit warnOnly where a PCR may vary.");
  mread
      ->add_option("--tpm", measure_tpm,
                   "TPM to read: a TCTI such as device:/dev/tpmrm0 or swtpm:port=2321")
      ->required();
  mread->add_option("--format", measure_format, "json or yaml")
      ->check(CLI::IsMember({"json", "yaml"}))
      ->capture_default_str();

  std::string run_dir(volume::kDefaultRunDir);
  for (CLI::App* cmd : {vopen, vclose, vstatus}) {
    cmd->add_option("--run-dir", run_dir, "where open volumes are recorded")->capture_default_str();
  }

  cli::NodeCommands node_commands(app);
  cli::ByokCommands byok_commands(app);
  cli::ByokOpsCommands byok_ops_commands(app);
  cli::NetCommands net_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? cli::kExitOk : cli::kExitUsage;
  }

  if (init->parsed()) return cli::RunInit(init_dir);
  if (status->parsed()) return cli::RunStatus(status_dir);
  if (dek->parsed()) return cli::RunDeriveDek(dek_secret, dek_id, dek_length);
  if (disk->parsed()) return cli::RunDeriveDiskKey(disk_secret, disk_uuid);
  if (cid->parsed()) return cli::RunDeriveClusterId(cid_secret, cid_salt);
  if (pcr->parsed()) return cli::RunDerivePcr15(pcr_cluster_id);
  auto millis = [](double seconds) {
    return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
  };
  if (serve->parsed()) {
    serve_options.log_format =
        log_format == "json" ? service::LogFormat::kJson : service::LogFormat::kText;
    serve_options.store_timeout = millis(store_timeout_s);
    serve_options.drain_timeout = millis(drain_timeout_s);
    serve_options.dek_cache_ttl = millis(dek_cache_ttl_s);
    if (!net_credential_lifetime.empty()) {
      auto lifetime = cli::ParseDuration("--net-credential-lifetime", net_credential_lifetime);
      if (!lifetime.ok()) return cli::Fail(lifetime.status());
      serve_options.net_credential_lifetime =
          std::chrono::duration_cast<std::chrono::seconds>(*lifetime);
    }
    return cli::RunServe(serve_options);
  }
  if (dek_get->parsed()) {
    client_options.timeout = millis(client_timeout_s);
    return cli::RunDekGet(client_options, get_id, get_length);
  }
  auto key_source = [&](KeySourceFlags& flags) {
    flags.keys.client.timeout = millis(flags.timeout_s);
    return flags.keys;
  };
  if (vformat->parsed()) {
    format_request.options.version =
        format_type == "luks1" ? volume::LuksVersion::kLuks1 : volume::LuksVersion::kLuks2;
    return cli::RunVolumeFormat(format_request, key_source(format_keys));
  }
  if (vopen->parsed()) {
    open_request.run_dir = run_dir;
    return cli::RunVolumeOpen(open_request, key_source(open_keys), open_foreground);
  }
  if (vclose->parsed()) return cli::RunVolumeClose(close_name, run_dir);
  if (vstatus->parsed()) return cli::RunVolumeStatus(status_what, run_dir, status_json);
  if (mread->parsed()) return cli::RunMeasurementsRead(measure_tpm, measure_format);
  if (std::optional<int> code = node_commands.Run()) return *code;
  if (std::optional<int> code = byok_commands.Run()) return *code;
  if (std::optional<int> code = byok_ops_commands.Run()) return *code;
  if (std::optional<int> code = net_commands.Run()) return *code;
  // No command (or `derive` without one): show what there is.
  const CLI::App& shown = derive->parsed()                   ? *derive
                          : dek_cmd->parsed()                ? *dek_cmd
                          : volume_cmd->parsed()             ? *volume_cmd
                          : measurements_cmd->parsed()       ? *measurements_cmd
                          : node_commands.parsed_group()     ? *node_commands.parsed_group()
                          : byok_ops_commands.parsed_group() ? *byok_ops_commands.parsed_group()
                          : net_commands.parsed_group()      ? *net_commands.parsed_group()
                                                             : app;
  fmt::print(stderr, "{}\n{}", "keywarden: error: a command is required", shown.help());
  return cli::kExitUsage;
}
