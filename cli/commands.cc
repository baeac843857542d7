#include "cli/commands.h"

#include <fmt/format.h>

#include <cstdio>

#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/cluster.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/status.h"

namespace keywarden::cli {
int Fail(const absl::Status& status) {
  fmt::print(stderr, "keywarden: error: {}\n", StatusMessage(status));
  return kExitError;
}

namespace {

void PrintHex(std::span<const uint8_t> bytes) { fmt::print("{}\n", crypto::HexEncode(bytes)); }

// PrintSecretHex prints a key the user asked for, from locked memory, and wipes the text.
void PrintSecretHex(const SecretBytes& secret) {
  const SecretBytes text = crypto::HexEncodeSecret(secret);
  const auto bytes = text.Reveal(InsecureSecretAccess::Get());
  std::fwrite(bytes.data(), 1, bytes.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

absl::StatusOr<std::unique_ptr<keys::Kek>> LoadKek(const std::string& path) {
  ASSIGN_OR_RETURN(keys::MasterSecret secret, keys::ReadMasterSecretFile(path));
  return keys::Kek::FromMasterSecret(secret);
}

}  // namespace

int RunInit(const std::string& dir) {
  auto info = keys::InitCluster(dir);
  if (!info.ok()) return Fail(info.status());
  PrintHex(info->cluster_id);
  return kExitOk;
}

int RunStatus(const std::string& dir) {
  auto info = keys::ReadClusterInfo(dir);
  if (!info.ok()) return Fail(info.status());
  // Check that cluster.json belongs to the master secret beside it.
  auto secret =
      keys::ReadMasterSecretFile(std::filesystem::path(dir) / keys::kMasterSecretFileName);
  if (!secret.ok()) return Fail(secret.status());
  auto computed = keys::ComputeClusterInfo(*secret, info->measurement_salt);
  if (!computed.ok()) return Fail(computed.status());
  if (computed->cluster_id != info->cluster_id) {
    return Fail(FailedPreconditionError(
        "{}/{} does not match {}/{}: the clusterID it records is not derived from this master "
        "secret",
        dir, keys::kClusterFileName, dir, keys::kMasterSecretFileName));
  }
  fmt::print("cluster-id {}\n", crypto::HexEncode(info->cluster_id));
  fmt::print("pcr15 {}\n", crypto::HexEncode(keys::ExpectedPcr15(info->cluster_id)));
  return kExitOk;
}

int RunDeriveDek(const std::string& master_secret_file, const std::string& id, size_t length) {
  auto kek = LoadKek(master_secret_file);
  if (!kek.ok()) return Fail(kek.status());
  auto dek = (*kek)->DeriveDek(id, length);
  if (!dek.ok()) return Fail(dek.status());
  PrintSecretHex(*dek);
  return kExitOk;
}

int RunDeriveDiskKey(const std::string& master_secret_file, const std::string& uuid) {
  auto kek = LoadKek(master_secret_file);
  if (!kek.ok()) return Fail(kek.status());
  auto key = (*kek)->StateDiskKey(uuid);
  if (!key.ok()) return Fail(key.status());
  PrintSecretHex(*key);
  return kExitOk;
}

int RunDeriveClusterId(const std::string& master_secret_file, const std::string& salt_hex) {
  auto salt = crypto::HexDecode(salt_hex);
  if (!salt.ok()) return Fail(salt.status());
  auto secret = keys::ReadMasterSecretFile(master_secret_file);
  if (!secret.ok()) return Fail(secret.status());
  auto info = keys::ComputeClusterInfo(*secret, *salt);
  if (!info.ok()) return Fail(info.status());
  PrintHex(info->cluster_id);
  return kExitOk;
}

int RunDerivePcr15(const std::string& cluster_id_hex) {
  auto id = crypto::HexDecode(cluster_id_hex);
  if (!id.ok()) return Fail(id.status());
  PrintHex(keys::ExpectedPcr15(*id));
  return kExitOk;
}

int RunServe(const service::ServeOptions& options) {
  const absl::Status status = service::RunKeyService(options);
  if (!status.ok()) return Fail(status);
  return kExitOk;
}

int RunDekGet(const service::ClientOptions& options, const std::string& id, size_t length) {
  auto key = service::GetDataKeyRemote(options, id, static_cast<uint32_t>(length));
  if (!key.ok()) return Fail(key.status());
  PrintSecretHex(*key);
  return kExitOk;
}

}  // namespace keywarden::cli
