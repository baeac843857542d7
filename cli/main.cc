// keywarden: the command-line entry point. Parses flags and calls cli/commands.cc; nothing
// else happens here.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "cli/commands.h"
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

const CLI::Validator kNonEmpty(
    [](std::string& value) -> std::string { return value.empty() ? "must not be empty" : ""; },
    "NONEMPTY");

}  // namespace

int main(int argc, char** argv) {
  using namespace keywarden;
  CLI::App app{
      "keywarden: key management for confidential-computing clusters.\n"
      "Derives Constellation-compatible cluster identities and data-encryption keys from a "
      "master secret.",
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
      "derive", "Derive keys and identities from a master secret, offline (DESIGN.md §2).");
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
  // No command (or `derive` without one): show what there is.
  const CLI::App& shown = derive->parsed() ? *derive : app;
  fmt::print(stderr, "{}\n{}", "keywarden: error: a command is required", shown.help());
  return cli::kExitUsage;
}
