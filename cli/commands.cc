#include "cli/commands.h"

#include <fmt/format.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>

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

absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view flag,
                                                        std::string_view text) {
  const auto refuse = [&] {
    return InvalidArgumentError(
        "{} \"{}\" is not a duration: write a positive whole number followed by s, m, h or d "
        "(e.g. 90s, 10m, 1h, 1d)",
        flag, Printable(text));
  };
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  if (digits == 0 || digits > 9 || digits + 1 != text.size() || text[0] == '0') return refuse();
  const int64_t count = std::strtoll(std::string(text.substr(0, digits)).c_str(), nullptr, 10);
  switch (text.back()) {
    case 's':
      return std::chrono::milliseconds(count * 1000);
    case 'm':
      return std::chrono::milliseconds(count * 60 * 1000);
    case 'h':
      return std::chrono::milliseconds(count * 3600 * 1000);
    case 'd':
      return std::chrono::milliseconds(count * 86400 * 1000);
    default:
      return refuse();
  }
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
