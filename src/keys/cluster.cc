#include "keywarden/keys/cluster.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"

namespace keywarden::keys {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxClusterFileSize = 64 * 1024;

absl::Status ErrnoStatus(std::string_view what, const fs::path& path, int err) {
  return FailedPreconditionError("cannot {} {}: {}", what, path.string(), std::strerror(err));
}

// WriteNewFile writes `contents` to a new file (O_EXCL) and fsyncs it; no file on error.
absl::Status WriteNewFile(const fs::path& path, std::string_view contents, mode_t mode) {
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return ErrnoStatus("create", path, errno);
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      close(fd);
      unlink(path.c_str());
      return ErrnoStatus("write", path, err);
    }
    done += static_cast<size_t>(n);
  }
  if (fsync(fd) != 0 || close(fd) != 0) {
    const int err = errno;
    unlink(path.c_str());
    return ErrnoStatus("sync", path, err);
  }
  return absl::OkStatus();
}

void SyncDirectory(const fs::path& dir) {
  const int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    (void)fsync(fd);
    close(fd);
  }
}

std::string ClusterJson(const ClusterInfo& info) {
  nlohmann::ordered_json doc;
  doc["measurementSalt"] = crypto::HexEncode(info.measurement_salt);
  doc["clusterID"] = crypto::HexEncode(info.cluster_id);
  return doc.dump(2) + "\n";
}

}  // namespace

absl::StatusOr<ClusterInfo> ComputeClusterInfo(const MasterSecret& secret,
                                               std::span<const uint8_t> measurement_salt) {
  ASSIGN_OR_RETURN(auto kek, Kek::FromMasterSecret(secret));
  ASSIGN_OR_RETURN(SecretBytes measurement_secret, kek->MeasurementSecret());
  ASSIGN_OR_RETURN(ClusterId id, DeriveClusterId(measurement_secret, measurement_salt));
  return ClusterInfo{std::vector<uint8_t>(measurement_salt.begin(), measurement_salt.end()), id};
}

absl::StatusOr<ClusterInfo> InitCluster(const fs::path& dir) {
  const fs::path secret_path = dir / kMasterSecretFileName;
  const fs::path cluster_path = dir / kClusterFileName;

  bool created_dir = false;
  if (mkdir(dir.c_str(), 0700) == 0) {
    created_dir = true;
  } else if (errno != EEXIST) {
    return ErrnoStatus("create directory", dir, errno);
  } else if (!fs::is_directory(dir)) {
    return FailedPreconditionError("{} exists and is not a directory", dir.string());
  }
  auto undo_dir = [&] {
    if (created_dir) rmdir(dir.c_str());
  };
  for (const fs::path& p : {secret_path, cluster_path}) {
    struct stat st {};
    if (lstat(p.c_str(), &st) == 0 || errno != ENOENT) {
      return AlreadyExistsError("{} already holds a cluster ({} exists); refusing to overwrite it",
                                dir.string(), p.filename().string());
    }
  }

  auto secret = MasterSecret::Generate();
  if (!secret.ok()) {
    undo_dir();
    return secret.status();
  }
  std::vector<uint8_t> salt(kMeasurementSaltSize);
  if (absl::Status s = crypto::RandomFill(salt); !s.ok()) {
    undo_dir();
    return s;
  }
  auto info = ComputeClusterInfo(*secret, salt);
  if (!info.ok()) {
    undo_dir();
    return info.status();
  }

  // cluster.json goes to a temporary name first and is linked into place only after the
  // master secret exists, so a crash never leaves a cluster.json without its secret.
  const fs::path temp_path = dir / (std::string(kClusterFileName) + ".tmp");
  unlink(temp_path.c_str());
  if (absl::Status s = WriteNewFile(temp_path, ClusterJson(*info), 0644); !s.ok()) {
    undo_dir();
    return s;
  }
  if (absl::Status s = WriteMasterSecretFile(secret_path, *secret); !s.ok()) {
    unlink(temp_path.c_str());
    undo_dir();
    return s;
  }
  if (link(temp_path.c_str(), cluster_path.c_str()) != 0) {
    const int err = errno;
    unlink(secret_path.c_str());
    unlink(temp_path.c_str());
    undo_dir();
    return ErrnoStatus("create", cluster_path, err);
  }
  unlink(temp_path.c_str());
  SyncDirectory(dir);
  return info;
}

absl::StatusOr<ClusterInfo> ParseClusterJson(std::string_view text) {
  nlohmann::json doc = nlohmann::json::parse(text.begin(), text.end(), nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return InvalidArgumentError("not a JSON object");
  }
  auto field = [&doc](const char* name) -> absl::StatusOr<std::vector<uint8_t>> {
    auto it = doc.find(name);
    if (it == doc.end() || !it->is_string()) {
      return InvalidArgumentError("missing string field \"{}\"", name);
    }
    auto bytes = crypto::HexDecode(it->get_ref<const std::string&>());
    if (!bytes.ok() || bytes->size() != kDigestSize) {
      return InvalidArgumentError("\"{}\" is not {} bytes of hex", name, kDigestSize);
    }
    return bytes;
  };
  ASSIGN_OR_RETURN(std::vector<uint8_t> salt, field("measurementSalt"));
  ASSIGN_OR_RETURN(std::vector<uint8_t> id, field("clusterID"));
  ClusterInfo info{std::move(salt), {}};
  std::copy(id.begin(), id.end(), info.cluster_id.begin());
  return info;
}

absl::StatusOr<ClusterInfo> ReadClusterInfo(const fs::path& dir) {
  const fs::path path = dir / kClusterFileName;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFoundError("cannot read {}: {} (run `keywarden init --dir {}` first)", path.string(),
                         std::strerror(errno), dir.string());
  }
  std::string text(kMaxClusterFileSize + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxClusterFileSize) {
    return InvalidArgumentError("{} is larger than {} bytes", path.string(), kMaxClusterFileSize);
  }
  auto info = ParseClusterJson(text);
  if (!info.ok()) {
    return InvalidArgumentError("{}: {}", path.string(), StatusMessage(info.status()));
  }
  return info;
}

}  // namespace keywarden::keys
