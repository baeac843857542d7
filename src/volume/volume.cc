#include "keywarden/volume/volume.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/random.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/status.h"
#include "keywarden/volume/data_path.h"
#include "keywarden/volume/fuse_server.h"

namespace keywarden::volume {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

fs::path VolumesDir(const std::string& run_dir) { return fs::path(run_dir) / "volumes"; }
fs::path StateFile(const std::string& run_dir, const std::string& name) {
  return VolumesDir(run_dir) / (name + ".json");
}
fs::path LockFile(const std::string& run_dir, const std::string& name) {
  return VolumesDir(run_dir) / (name + ".lock");
}

absl::Status EnsureRunDir(const std::string& run_dir) {
  std::error_code ec;
  fs::create_directories(VolumesDir(run_dir), ec);
  if (ec) {
    return FailedPreconditionError("cannot create the run directory {}: {}",
                                   VolumesDir(run_dir).string(), ec.message());
  }
  chmod(run_dir.c_str(), 0700);
  chmod(VolumesDir(run_dir).c_str(), 0700);
  return absl::OkStatus();
}

// NameLock is the flock on RUN/volumes/NAME.lock that a FUSE server holds while it serves:
// held means "open", and it dies with the process, so a killed server leaves no false claim.
class NameLock {
 public:
  static absl::StatusOr<NameLock> TryAcquire(const std::string& run_dir, const std::string& name) {
    const fs::path path = LockFile(run_dir, name);
    const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      return FailedPreconditionError("cannot open {}: {}", path.string(), std::strerror(errno));
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      close(fd);
      return AlreadyExistsError("a volume named {} is open (keywarden volume status {})", name,
                                name);
    }
    return NameLock(fd);
  }
  NameLock(NameLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  NameLock& operator=(NameLock&& other) noexcept {
    std::swap(fd_, other.fd_);
    return *this;
  }
  ~NameLock() {
    if (fd_ >= 0) close(fd_);
  }

 private:
  explicit NameLock(int fd) : fd_(fd) {}
  int fd_;
};

Json ToJson(const OpenedVolume& v) {
  return Json{{"name", v.name},   {"target", v.target}, {"uuid", v.uuid}, {"mode", v.mode},
              {"mount", v.mount}, {"path", v.path},     {"pid", v.pid}};
}

absl::StatusOr<OpenedVolume> ReadState(const fs::path& path) {
  std::ifstream in(path);
  if (!in) return NotFoundError("{} does not exist", path.string());
  std::stringstream text;
  text << in.rdbuf();
  const Json j = Json::parse(text.str(), nullptr, false);
  OpenedVolume v;
  if (j.is_discarded() || !j.is_object()) {
    return FailedPreconditionError("{} is not valid JSON", path.string());
  }
  auto str = [&](const char* key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  };
  v.name = str("name");
  v.target = str("target");
  v.uuid = str("uuid");
  v.mode = str("mode");
  v.mount = str("mount");
  v.path = str("path");
  v.pid = j.contains("pid") && j["pid"].is_number_integer() ? j["pid"].get<int64_t>() : 0;
  if (v.name.empty() || (v.mode != "fuse" && v.mode != "dm")) {
    return FailedPreconditionError("{} is not a volume record", path.string());
  }
  return v;
}

absl::Status WriteState(const std::string& run_dir, const OpenedVolume& v) {
  const fs::path path = StateFile(run_dir, v.name);
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << ToJson(v).dump(2) << "\n";
    if (!out) return FailedPreconditionError("cannot write {}", tmp.string());
  }
  if (rename(tmp.c_str(), path.c_str()) != 0) {
    return FailedPreconditionError("cannot write {}: {}", path.string(), std::strerror(errno));
  }
  return absl::OkStatus();
}

bool NameLockHeld(const std::string& run_dir, const std::string& name) {
  auto lock = NameLock::TryAcquire(run_dir, name);
  return !lock.ok() && lock.status().code() == absl::StatusCode::kAlreadyExists;
}

// CleanStale removes what a killed FUSE server left behind: its record and its mount.
void CleanStale(const std::string& run_dir, const std::string& name) {
  auto state = ReadState(StateFile(run_dir, name));
  if (state.ok() && state->mode == "fuse" && !state->mount.empty() && IsMountPoint(state->mount)) {
    (void)UnmountFuse(state->mount, /*lazy=*/true);
  }
  if (state.ok() && state->mode == "fuse") unlink(StateFile(run_dir, name).c_str());
}

absl::StatusOr<std::string> Absolute(const std::string& path) {
  char resolved[PATH_MAX];
  if (realpath(path.c_str(), resolved) == nullptr) {
    return FailedPreconditionError("{}: {}", path, std::strerror(errno));
  }
  return std::string(resolved);
}

absl::StatusOr<SecretBytes> FetchDek(const KeyFetcher& fetch, const std::string& key_id) {
  auto dek = fetch(key_id);
  if (!dek.ok()) {
    return MakeStatus(dek.status().code(), "cannot get the volume's key (DEK \"{}\"): {}", key_id,
                      StatusMessage(dek.status()));
  }
  if (dek->size() != kDekSize) {
    return InternalError("the key source returned a {}-byte key, not {}", dek->size(), kDekSize);
  }
  return dek;
}

std::span<const uint8_t> Bytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

// NodeStateMac computes the node_state MAC of `salt` on the volume `uuid` (volume.h; cited in
// docs/formats/volume.md).
// Security: the MAC key is HKDF-derived (RFC 5869) with its own label, so the DEK itself (the
// keyslot passphrase) never keys anything else; the message binds the label and the volume's
// UUID, so a node_state copied from another disk does not verify.
absl::StatusOr<std::array<uint8_t, crypto::kHmacSha256TagSize>> NodeStateMac(
    const SecretBytes& dek, const std::string& uuid, std::span<const uint8_t> salt) {
  ASSIGN_OR_RETURN(SecretBytes key,
                   crypto::HkdfSha256(dek.Reveal(InsecureSecretAccess::Get()), {},
                                      Bytes(kNodeStateLabel), crypto::kHmacSha256TagSize));
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::HmacSha256> hmac, crypto::HmacSha256::New(key));
  std::vector<uint8_t> message;
  message.reserve(kNodeStateLabel.size() + uuid.size() + salt.size() + 2);
  message.insert(message.end(), kNodeStateLabel.begin(), kNodeStateLabel.end());
  message.push_back(0);
  message.insert(message.end(), uuid.begin(), uuid.end());
  message.push_back(0);
  message.insert(message.end(), salt.begin(), salt.end());
  return hmac->Compute(message);
}

// LoadWithKey loads and profile-checks TARGET and checks that `dek` opens keyslot 0.
absl::StatusOr<std::unique_ptr<LuksDevice>> LoadWithKey(const std::string& target,
                                                        const SecretBytes& dek) {
  if (dek.size() != kDekSize) {
    return InvalidArgumentError("the DEK is {} bytes, a volume's DEK is {}", dek.size(), kDekSize);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LuksDevice> device, LuksDevice::Load(target));
  ASSIGN_OR_RETURN(SecretBytes passphrase, Passphrase(device->facts().version, dek));
  RETURN_IF_ERROR(device->CheckPassphrase(passphrase));
  return device;
}

}  // namespace

absl::StatusOr<SecretBytes> Passphrase(LuksVersion version, const SecretBytes& dek) {
  if (version == LuksVersion::kLuks2) return dek.Clone();
  return crypto::HexEncodeSecret(dek);
}

absl::StatusOr<std::string> RandomUuid() {
  uint8_t bytes[16];
  RETURN_IF_ERROR(crypto::RandomFill(bytes));
  bytes[6] = static_cast<uint8_t>((bytes[6] & 0x0f) | 0x40);  // version 4
  bytes[8] = static_cast<uint8_t>((bytes[8] & 0x3f) | 0x80);  // RFC 4122 variant
  const std::string hex = crypto::HexEncode(bytes);
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
         hex.substr(16, 4) + "-" + hex.substr(20, 12);
}

absl::Status ValidateVolumeName(std::string_view name) {
  const bool ok_chars = std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
  });
  if (name.empty() || name.size() > 64 || !ok_chars || name[0] == '.' || name[0] == '-') {
    return InvalidArgumentError(
        "volume name \"{}\" must be 1-64 of A-Z a-z 0-9 . _ - and not start with . or -",
        Printable(name));
  }
  return absl::OkStatus();
}

absl::StatusOr<HeaderFacts> FormatVolume(const FormatRequest& request, const KeyFetcher& fetch) {
  const FormatOptions& options = request.options;
  std::string uuid;
  if (!request.uuid.empty()) {
    auto normalized = keys::NormalizeUuid(request.uuid);
    if (!normalized.ok()) {
      return InvalidArgumentError("\"{}\" is not a UUID (8-4-4-4-12 hex digits)",
                                  Printable(request.uuid));
    }
    uuid = *std::move(normalized);
  }
  ASSIGN_OR_RETURN(uint64_t size, TargetSize(request.target));
  (void)size;
  auto existing = LuksDevice::Load(request.target);
  if (existing.ok() || existing.status().code() == absl::StatusCode::kFailedPrecondition) {
    if (!request.force) {
      return AlreadyExistsError("{} already holds a LUKS volume{}; pass --force to destroy it",
                                request.target,
                                existing.ok() ? " (UUID " + (*existing)->facts().uuid + ")" : "");
    }
  }
  existing = absl::NotFoundError("");  // release the device before formatting

  if (options.integrity && !DeviceMapperAvailable()) {
    return FailedPreconditionError(
        "--integrity needs the kernel's dm-integrity to initialize the volume, and this host "
        "has no device-mapper (/dev/mapper/control); nothing was written");
  }
  if (uuid.empty()) {
    ASSIGN_OR_RETURN(uuid, RandomUuid());
  }
  // The key comes first: if the key service cannot give it, nothing has been written.
  ASSIGN_OR_RETURN(SecretBytes dek, FetchDek(fetch, uuid));
  ASSIGN_OR_RETURN(SecretBytes passphrase, Passphrase(options.version, dek));
  ASSIGN_OR_RETURN(
      SecretBytes volume_key,
      crypto::RandomSecret(options.integrity ? kIntegrityVolumeKeySize : kVolumeKeySize));
  const bool initialize = request.wipe || options.integrity;
  ASSIGN_OR_RETURN(auto device, LuksDevice::Format(request.target, uuid, volume_key, passphrase,
                                                   options, /*initialized=*/!initialize));
  if (!initialize) return device->facts();

  if (options.integrity) {
    RETURN_IF_ERROR(device->WipeIntegrityDm(volume_key, request.progress));
  } else {
    ASSIGN_OR_RETURN(auto codec, NewXtsCodec(volume_key, device->facts().sector_size));
    ASSIGN_OR_RETURN(auto path,
                     DataPath::Open(request.target, device->facts().data_offset, std::move(codec)));
    RETURN_IF_ERROR(path->WriteZeros(request.progress));
  }
  RETURN_IF_ERROR(device->SetInitialized(true));
  return device->facts();
}

absl::Status WriteNodeState(const std::string& target, const SecretBytes& dek,
                            std::span<const uint8_t> measurement_salt) {
  if (measurement_salt.size() != kMeasurementSaltSize) {
    return InvalidArgumentError("the measurement salt is {} bytes, not {}", measurement_salt.size(),
                                kMeasurementSaltSize);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<LuksDevice> device, LoadWithKey(target, dek));
  if (device->facts().version != LuksVersion::kLuks2) {
    return FailedPreconditionError("{} is a LUKS1 volume: a state disk is LUKS2", target);
  }
  ASSIGN_OR_RETURN(auto mac, NodeStateMac(dek, device->facts().uuid, measurement_salt));
  return device->SetNodeState(measurement_salt, mac);
}

absl::StatusOr<std::optional<std::vector<uint8_t>>> ReadNodeState(const std::string& target,
                                                                  const SecretBytes& dek) {
  ASSIGN_OR_RETURN(std::unique_ptr<LuksDevice> device, LoadWithKey(target, dek));
  const HeaderFacts& facts = device->facts();
  if (!facts.measurement_salt) return std::optional<std::vector<uint8_t>>();
  ASSIGN_OR_RETURN(auto mac, NodeStateMac(dek, facts.uuid, *facts.measurement_salt));
  if (!crypto::ConstantTimeEquals(mac, facts.node_state_mac)) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "the measurement salt on the state disk {} has been tampered with: its MAC "
                      "does not verify under the disk's key",
                      target);
  }
  return std::optional<std::vector<uint8_t>>(*facts.measurement_salt);
}

absl::StatusOr<HeaderFacts> CheckVolumeKey(const std::string& target, const SecretBytes& dek) {
  ASSIGN_OR_RETURN(std::unique_ptr<LuksDevice> device, LoadWithKey(target, dek));
  return device->facts();
}

absl::Status OpenVolume(const OpenRequest& request, const KeyFetcher& fetch,
                        const std::function<void(const OpenedVolume&)>& ready) {
  RETURN_IF_ERROR(ValidateVolumeName(request.name));
  ASSIGN_OR_RETURN(std::string target, Absolute(request.target));
  RETURN_IF_ERROR(EnsureRunDir(request.run_dir));
  const bool fuse = !request.fuse_dir.empty();
  if (!fuse && !DeviceMapperAvailable()) {
    return FailedPreconditionError(
        "this host has no device-mapper (/dev/mapper/control): open the volume in userspace "
        "with --fuse-dir DIR");
  }
  // One server per name: the lock is held for as long as a FUSE server runs.
  ASSIGN_OR_RETURN(NameLock lock, NameLock::TryAcquire(request.run_dir, request.name));
  if (auto old = ReadState(StateFile(request.run_dir, request.name)); old.ok()) {
    if (old->mode == "dm" && DmStatus(request.name).ok()) {
      return AlreadyExistsError("a volume named {} is open (/dev/mapper/{})", request.name,
                                request.name);
    }
    CleanStale(request.run_dir, request.name);
  }

  ASSIGN_OR_RETURN(auto device, LuksDevice::Load(target));
  const HeaderFacts facts = device->facts();
  if (!facts.initialized) {
    return FailedPreconditionError(
        "{} was never fully initialized (its token says initialized=false: formatting was "
        "interrupted); format it again",
        target);
  }
  if (fuse && facts.integrity) {
    return FailedPreconditionError(
        "{} uses integrity ({}): only the kernel's dm-integrity can open it; the userspace path "
        "implements dm-crypt without integrity",
        target, *facts.integrity);
  }
  ASSIGN_OR_RETURN(SecretBytes dek, FetchDek(fetch, facts.key_id));
  ASSIGN_OR_RETURN(SecretBytes passphrase, Passphrase(facts.version, dek));

  OpenedVolume opened;
  opened.name = request.name;
  opened.target = target;
  opened.uuid = facts.uuid;
  if (!fuse) {
    RETURN_IF_ERROR(device->ActivateDm(request.name, passphrase));
    opened.mode = "dm";
    opened.path = "/dev/mapper/" + request.name;
    RETURN_IF_ERROR(WriteState(request.run_dir, opened));
    if (ready) ready(opened);
    return absl::OkStatus();
  }

  ASSIGN_OR_RETURN(SecretBytes volume_key, device->UnlockVolumeKey(passphrase));
  device.reset();
  ASSIGN_OR_RETURN(auto codec, NewXtsCodec(volume_key, facts.sector_size));
  ASSIGN_OR_RETURN(auto path, DataPath::Open(target, facts.data_offset, std::move(codec)));
  ASSIGN_OR_RETURN(opened.mount, Absolute(request.fuse_dir));
  opened.mode = "fuse";
  opened.path = (fs::path(opened.mount) / request.name).string();
  opened.pid = getpid();

  absl::Status state_status;
  FuseServeOptions serve;
  serve.mount_dir = opened.mount;
  serve.file_name = request.name;
  serve.max_threads = request.fuse_threads;
  serve.mounted = [&] {
    state_status = WriteState(request.run_dir, opened);
    if (state_status.ok() && ready) ready(opened);
  };
  absl::Status served = ServeFuse(*path, serve);
  unlink(StateFile(request.run_dir, request.name).c_str());
  RETURN_IF_ERROR(state_status);
  return served;
}

absl::Status CloseVolume(const std::string& name, const std::string& run_dir) {
  RETURN_IF_ERROR(ValidateVolumeName(name));
  auto state = ReadState(StateFile(run_dir, name));
  if (!state.ok()) {
    if (DmStatus(name).ok()) return DeactivateDm(name);
    return NotFoundError("no open volume named {}", name);
  }
  if (state->mode == "dm") {
    RETURN_IF_ERROR(DeactivateDm(name));
    unlink(StateFile(run_dir, name).c_str());
    return absl::OkStatus();
  }
  if (!NameLockHeld(run_dir, name)) {
    // The server is gone (killed): detach its dead mount and forget it.
    CleanStale(run_dir, name);
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(UnmountFuse(state->mount, /*lazy=*/false));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (NameLockHeld(run_dir, name)) {
    if (std::chrono::steady_clock::now() > deadline) {
      return UnavailableError("the server of {} (pid {}) did not exit after the unmount", name,
                              state->pid);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  unlink(StateFile(run_dir, name).c_str());
  return absl::OkStatus();
}

absl::StatusOr<VolumeStatus> GetVolumeStatus(const std::string& target_or_name,
                                             const std::string& run_dir) {
  VolumeStatus status;
  struct stat st {};
  std::string target;
  if (stat(target_or_name.c_str(), &st) == 0) {
    ASSIGN_OR_RETURN(target, Absolute(target_or_name));
  } else {
    if (!ValidateVolumeName(target_or_name).ok()) {
      return NotFoundError("{}: no such file, and not a volume name", target_or_name);
    }
    auto state = ReadState(StateFile(run_dir, target_or_name));
    if (!state.ok()) {
      return NotFoundError("{}: no such file, and no open volume of that name", target_or_name);
    }
    target = state->target;
  }
  status.target = target;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(VolumesDir(run_dir), ec)) {
    if (entry.path().extension() != ".json") continue;
    auto state = ReadState(entry.path());
    if (!state.ok() || state->target != target) continue;
    if (state->mode == "fuse" && !NameLockHeld(run_dir, state->name)) {
      status.server_alive = false;
    }
    status.mappings.push_back(*state);
  }
  auto device = LuksDevice::Load(target);
  if (device.ok()) {
    status.facts = (*device)->facts();
  } else {
    status.header_status = device.status();
  }
  return status;
}

}  // namespace keywarden::volume
