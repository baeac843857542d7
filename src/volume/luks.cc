#include "keywarden/volume/luks.h"

#include <fcntl.h>
#include <libcryptsetup.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"

namespace keywarden::volume {
namespace {

// libcryptsetup reports details through a log callback. Errors are collected per thread and
// appended to Keywarden's own message; nothing goes to stderr behind the caller's back.
thread_local std::string last_crypt_error;
// While a header loads, libcryptsetup's debug lines are kept too: its validation explains why
// it rejects a header only at debug level.
thread_local bool keep_debug = false;
thread_local std::vector<std::string> debug_lines;

void LogCallback(int level, const char* message, void* /*usrptr*/) {
  if (message == nullptr) return;
  if (level == CRYPT_LOG_DEBUG && keep_debug) {
    if (debug_lines.size() >= 64) debug_lines.erase(debug_lines.begin());
    debug_lines.emplace_back(message);
    return;
  }
  if (level != CRYPT_LOG_ERROR) return;
  std::string text(message);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (!last_crypt_error.empty()) last_crypt_error += "; ";
  last_crypt_error += text;
}

void InstallLogger(crypt_device* cd) { crypt_set_log_callback(cd, LogCallback, nullptr); }

std::string TakeCryptError() {
  std::string error = std::move(last_crypt_error);
  last_crypt_error.clear();
  return error.empty() ? "" : " (libcryptsetup: " + Printable(error, 200) + ")";
}

absl::Status CryptError(int rc, std::string_view what, const std::string& target) {
  return FailedPreconditionError("cannot {} {}: {}{}", what, target, std::strerror(-rc),
                                 TakeCryptError());
}

struct CryptFree {
  void operator()(crypt_device* cd) const { crypt_free(cd); }
};
using CryptPtr = std::unique_ptr<crypt_device, CryptFree>;

absl::StatusOr<CryptPtr> Init(const std::string& target) {
  crypt_set_log_callback(nullptr, LogCallback, nullptr);
  last_crypt_error.clear();
  crypt_device* cd = nullptr;
  const int rc = crypt_init(&cd, target.c_str());
  if (rc < 0) return CryptError(rc, "open", target);
  InstallLogger(cd);
  return CryptPtr(cd);
}

absl::StatusOr<HeaderFacts> CheckLoaded(crypt_device* cd, const std::string& target) {
  const char* type = crypt_get_type(cd);
  const char* uuid = crypt_get_uuid(cd);
  if (type == nullptr || uuid == nullptr) {
    return FailedPreconditionError("{}: libcryptsetup loaded no LUKS header", target);
  }
  if (std::strcmp(type, CRYPT_LUKS2) == 0) {
    const char* json = nullptr;
    const int rc = crypt_dump_json(cd, &json, 0);
    if (rc < 0 || json == nullptr) return CryptError(rc, "read the LUKS2 metadata of", target);
    auto facts = CheckLuks2Metadata(json, uuid);
    if (!facts.ok()) {
      return FailedPreconditionError("{}: {}", target, StatusMessage(facts.status()));
    }
    return facts;
  }
  if (std::strcmp(type, CRYPT_LUKS1) == 0) {
    Luks1Header header;
    header.uuid = uuid;
    header.cipher = crypt_get_cipher(cd) ? crypt_get_cipher(cd) : "";
    header.cipher_mode = crypt_get_cipher_mode(cd) ? crypt_get_cipher_mode(cd) : "";
    header.volume_key_size = static_cast<size_t>(std::max(0, crypt_get_volume_key_size(cd)));
    header.data_offset = crypt_get_data_offset(cd) * 512;
    ASSIGN_OR_RETURN(header.device_size, TargetSize(target));
    for (int slot = 0; slot < crypt_keyslot_max(CRYPT_LUKS1); ++slot) {
      const crypt_keyslot_info info = crypt_keyslot_status(cd, slot);
      if (info == CRYPT_SLOT_ACTIVE || info == CRYPT_SLOT_ACTIVE_LAST) {
        ++header.active_keyslots;
        if (slot == 0) header.keyslot0_active = true;
      }
    }
    if (header.keyslot0_active) {
      crypt_keyslot_area(cd, 0, &header.keyslot0_offset, &header.keyslot0_length);
      crypt_pbkdf_type pbkdf{};
      if (crypt_keyslot_get_pbkdf(cd, 0, &pbkdf) == 0 && pbkdf.hash != nullptr) {
        header.hash = pbkdf.hash;
      }
    }
    auto facts = CheckLuks1Header(header);
    if (!facts.ok()) {
      return FailedPreconditionError("{}: {}", target, StatusMessage(facts.status()));
    }
    return facts;
  }
  return FailedPreconditionError("{}: a {} header; Keywarden volumes are LUKS2 (or LUKS1)", target,
                                 Printable(type, 16));
}

// TokenJson renders the Keywarden token (docs/formats/volume.md) for a header with `facts`.
std::string TokenJson(const HeaderFacts& facts) {
  nlohmann::json token = {{"type", std::string(kTokenType)},
                          {"keyslots", {"0"}},
                          {"key_id", facts.uuid},
                          {"initialized", facts.initialized}};
  if (facts.measurement_salt) {
    token["node_state"] = {{"measurement_salt", crypto::HexEncode(*facts.measurement_salt)},
                           {"mac", crypto::HexEncode(facts.node_state_mac)}};
  }
  return token.dump();
}

}  // namespace

bool DeviceMapperAvailable() { return access("/dev/mapper/control", R_OK | W_OK) == 0; }

absl::StatusOr<uint64_t> TargetSize(const std::string& target) {
  const int fd = open(target.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return FailedPreconditionError("cannot open {}: {}", target, std::strerror(errno));
  }
  struct stat st {};
  uint64_t size = 0;
  absl::Status status;
  if (fstat(fd, &st) != 0) {
    status = FailedPreconditionError("cannot stat {}: {}", target, std::strerror(errno));
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (S_ISBLK(st.st_mode)) {
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) {
      status = FailedPreconditionError("cannot size {}: {}", target, std::strerror(errno));
    }
  } else {
    status = FailedPreconditionError("{} is neither a block device nor a regular file", target);
  }
  close(fd);
  if (!status.ok()) return status;
  return size;
}

namespace {

// HasLuksMagic reports whether TARGET starts with the LUKS magic (LUKS1 and LUKS2 share it).
bool HasLuksMagic(const std::string& target) {
  const int fd = open(target.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char magic[6] = {};
  const bool found = pread(fd, magic, sizeof(magic), 0) == sizeof(magic) &&
                     std::memcmp(magic, "LUKS\xba\xbe", sizeof(magic)) == 0;
  close(fd);
  return found;
}

// ValidationReason picks libcryptsetup's explanation of a rejected header from its debug lines.
std::string ValidationReason() {
  for (auto it = debug_lines.rbegin(); it != debug_lines.rend(); ++it) {
    const std::string& line = *it;
    if (line.find("validation failed") != std::string::npos ||
        line.find("header read failed") != std::string::npos ||
        line.find("Trying to read") != std::string::npos ||
        line.find("Reusing") != std::string::npos || line.find("lock") != std::string::npos) {
      continue;
    }
    std::string text = line;
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    return Printable(text, 160);
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<LuksDevice>> LuksDevice::Load(const std::string& target) {
  ASSIGN_OR_RETURN(uint64_t size, TargetSize(target));
  (void)size;
  ASSIGN_OR_RETURN(CryptPtr cd, Init(target));
  debug_lines.clear();
  keep_debug = true;
  crypt_set_debug_level(CRYPT_DEBUG_ALL);
  const int rc = crypt_load(cd.get(), CRYPT_LUKS, nullptr);
  crypt_set_debug_level(CRYPT_DEBUG_NONE);
  keep_debug = false;
  const std::string reason = ValidationReason();
  debug_lines.clear();
  if (rc == -EINVAL || rc == -ENODEV) {
    const std::string error = TakeCryptError();
    if (HasLuksMagic(target)) {
      return FailedPreconditionError(
          "{}: LUKS header refused: libcryptsetup's validation rejects it ({}){}", target,
          reason.empty() ? "no reason given" : reason, error);
    }
    return NotFoundError("{} holds no LUKS header", target);
  }
  if (rc < 0) return CryptError(rc, "read the LUKS header of", target);
  ASSIGN_OR_RETURN(HeaderFacts facts, CheckLoaded(cd.get(), target));
  return std::unique_ptr<LuksDevice>(new LuksDevice(cd.release(), target, std::move(facts)));
}

absl::StatusOr<std::unique_ptr<LuksDevice>> LuksDevice::Format(
    const std::string& target, const std::string& uuid, const SecretBytes& volume_key,
    const SecretBytes& passphrase, const FormatOptions& options, bool initialized) {
  const bool luks2 = options.version == LuksVersion::kLuks2;
  const size_t key_size = options.integrity ? kIntegrityVolumeKeySize : kVolumeKeySize;
  if (volume_key.size() != key_size) {
    return InvalidArgumentError("the volume key must be {} bytes", key_size);
  }
  if (options.integrity && !luks2) return InvalidArgumentError("integrity needs LUKS2");
  if (options.integrity && !DeviceMapperAvailable()) {
    return FailedPreconditionError(
        "--integrity needs the kernel's dm-integrity to initialize the volume, and this host "
        "has no device-mapper (/dev/mapper/control); nothing was written");
  }
  if (options.pbkdf != "argon2id" && options.pbkdf != "pbkdf2") {
    return InvalidArgumentError("unknown PBKDF \"{}\" (argon2id or pbkdf2)",
                                Printable(options.pbkdf));
  }
  ASSIGN_OR_RETURN(uint64_t size, TargetSize(target));
  const uint64_t offset = luks2 ? kLuks2DataOffset : 2 * 1024 * 1024;
  const uint32_t sector = luks2 ? kLuks2SectorSize : kLuks1SectorSize;
  if (size < offset + 1024 * 1024) {
    return FailedPreconditionError(
        "{} is {} bytes; a volume needs at least {} (a {} MiB header and 1 MiB of data)", target,
        size, offset + 1024 * 1024, offset >> 20);
  }
  if ((size - offset) % sector != 0) {
    return FailedPreconditionError(
        "{} is {} bytes: its data area is not a multiple of {}-byte "
        "sectors",
        target, size, sector);
  }

  ASSIGN_OR_RETURN(CryptPtr cd, Init(target));
  crypt_pbkdf_type pbkdf{};
  const bool argon = luks2 && options.pbkdf == "argon2id";
  pbkdf.type = argon ? CRYPT_KDF_ARGON2ID : CRYPT_KDF_PBKDF2;
  pbkdf.hash = "sha256";
  pbkdf.time_ms = 2000;
  if (argon) {
    pbkdf.max_memory_kb = 1024 * 1024;
    pbkdf.parallel_threads = 4;
  }
  if (options.pbkdf_iterations > 0) {
    pbkdf.flags = CRYPT_PBKDF_NO_BENCHMARK;
    pbkdf.iterations = options.pbkdf_iterations;
    if (argon) {
      pbkdf.max_memory_kb = 64 * 1024;
      pbkdf.parallel_threads = 1;
    }
  }
  int rc = crypt_set_pbkdf_type(cd.get(), &pbkdf);
  if (rc < 0) return CryptError(rc, "set the keyslot PBKDF for", target);

  const std::string integrity(kIntegrity);
  const auto key = volume_key.Reveal(InsecureSecretAccess::Get());
  if (luks2) {
    crypt_params_luks2 params{};
    params.pbkdf = &pbkdf;
    params.integrity = options.integrity ? integrity.c_str() : nullptr;
    params.sector_size = kLuks2SectorSize;
    rc = crypt_format(cd.get(), CRYPT_LUKS2, std::string(kCipher).c_str(),
                      std::string(kCipherMode).c_str(), uuid.c_str(),
                      reinterpret_cast<const char*>(key.data()), key.size(), &params);
  } else {
    crypt_params_luks1 params{};
    params.hash = "sha256";
    rc = crypt_format(cd.get(), CRYPT_LUKS1, std::string(kCipher).c_str(),
                      std::string(kCipherMode).c_str(), uuid.c_str(),
                      reinterpret_cast<const char*>(key.data()), key.size(), &params);
  }
  if (rc < 0) return CryptError(rc, "format", target);

  const auto pass = passphrase.Reveal(InsecureSecretAccess::Get());
  rc = crypt_keyslot_add_by_volume_key(cd.get(), 0, reinterpret_cast<const char*>(key.data()),
                                       key.size(), reinterpret_cast<const char*>(pass.data()),
                                       pass.size());
  if (rc < 0) return CryptError(rc, "add keyslot 0 to", target);
  if (luks2) {
    HeaderFacts token_facts;
    token_facts.uuid = uuid;
    token_facts.initialized = initialized;
    rc = crypt_token_json_set(cd.get(), 0, TokenJson(token_facts).c_str());
    if (rc < 0) return CryptError(rc, "write the Keywarden token to", target);
  }
  // Reload so that the facts come from what is on disk, through the same check as Load.
  cd.reset();
  return Load(target);
}

LuksDevice::~LuksDevice() { crypt_free(cd_); }

absl::StatusOr<SecretBytes> LuksDevice::UnlockVolumeKey(const SecretBytes& passphrase) {
  SecretBytes key(facts_.volume_key_size);
  size_t size = key.size();
  const auto pass = passphrase.Reveal(InsecureSecretAccess::Get());
  const int rc = crypt_volume_key_get(
      cd_, 0, reinterpret_cast<char*>(key.MutableReveal(InsecureSecretAccess::Get()).data()), &size,
      reinterpret_cast<const char*>(pass.data()), pass.size());
  if (rc == -EPERM) {
    TakeCryptError();
    return PermissionDeniedError(
        "the key for {} (DEK \"{}\") does not open keyslot 0: the volume belongs to another "
        "cluster or was formatted with another key",
        target_, facts_.key_id);
  }
  if (rc < 0) return CryptError(rc, "unlock", target_);
  if (size != facts_.volume_key_size) {
    return InternalError("libcryptsetup returned a {}-byte volume key", size);
  }
  return key;
}

absl::Status LuksDevice::CheckPassphrase(const SecretBytes& passphrase) {
  const auto pass = passphrase.Reveal(InsecureSecretAccess::Get());
  // A null name only verifies the passphrase against keyslot 0: nothing is activated.
  const int rc = crypt_activate_by_passphrase(
      cd_, nullptr, 0, reinterpret_cast<const char*>(pass.data()), pass.size(), 0);
  if (rc == -EPERM) {
    TakeCryptError();
    return PermissionDeniedError(
        "wrong key: the key for {} (DEK \"{}\") does not open keyslot 0: the volume belongs to "
        "another cluster or was formatted with another key",
        target_, facts_.key_id);
  }
  if (rc < 0) return CryptError(rc, "check the key of", target_);
  if (rc != 0) return InternalError("libcryptsetup opened keyslot {}, not 0", rc);
  return absl::OkStatus();
}

absl::Status LuksDevice::SetInitialized(bool initialized) {
  if (facts_.version != LuksVersion::kLuks2) return absl::OkStatus();
  HeaderFacts updated = facts_;
  updated.initialized = initialized;
  const int rc = crypt_token_json_set(cd_, 0, TokenJson(updated).c_str());
  if (rc < 0) return CryptError(rc, "update the Keywarden token of", target_);
  facts_ = std::move(updated);
  facts_.has_token = true;
  return absl::OkStatus();
}

absl::Status LuksDevice::SetNodeState(std::span<const uint8_t> measurement_salt,
                                      std::span<const uint8_t> mac) {
  if (facts_.version != LuksVersion::kLuks2) {
    return FailedPreconditionError("{} is a LUKS1 volume: it has no token to keep node state in",
                                   target_);
  }
  if (measurement_salt.size() != kMeasurementSaltSize || mac.size() != kNodeStateMacSize) {
    return InvalidArgumentError("node state needs a {}-byte salt and a {}-byte MAC, not {} and {}",
                                kMeasurementSaltSize, kNodeStateMacSize, measurement_salt.size(),
                                mac.size());
  }
  HeaderFacts updated = facts_;
  updated.measurement_salt.emplace(measurement_salt.begin(), measurement_salt.end());
  updated.node_state_mac.assign(mac.begin(), mac.end());
  const int rc = crypt_token_json_set(cd_, 0, TokenJson(updated).c_str());
  if (rc < 0) return CryptError(rc, "write the node state to the Keywarden token of", target_);
  facts_ = std::move(updated);
  facts_.has_token = true;
  return absl::OkStatus();
}

absl::Status LuksDevice::ActivateDm(const std::string& name, const SecretBytes& passphrase) {
  if (!DeviceMapperAvailable()) {
    return FailedPreconditionError("this host has no device-mapper; use --fuse-dir");
  }
  const auto pass = passphrase.Reveal(InsecureSecretAccess::Get());
  const int rc = crypt_activate_by_passphrase(
      cd_, name.c_str(), 0, reinterpret_cast<const char*>(pass.data()), pass.size(), 0);
  if (rc == -EPERM) {
    TakeCryptError();
    return PermissionDeniedError("the key for {} (DEK \"{}\") does not open keyslot 0", target_,
                                 facts_.key_id);
  }
  if (rc == -EEXIST) return AlreadyExistsError("a mapping named {} already exists", name);
  if (rc < 0) return CryptError(rc, "activate", target_);
  return absl::OkStatus();
}

absl::Status LuksDevice::WipeIntegrityDm(const SecretBytes& volume_key,
                                         const ProgressFn& progress) {
  if (!DeviceMapperAvailable()) {
    return FailedPreconditionError("initializing integrity needs device-mapper");
  }
  const std::string name = "keywarden-wipe-" + facts_.uuid;
  const auto key = volume_key.Reveal(InsecureSecretAccess::Get());
  int rc =
      crypt_activate_by_volume_key(cd_, name.c_str(), reinterpret_cast<const char*>(key.data()),
                                   key.size(), CRYPT_ACTIVATE_PRIVATE | CRYPT_ACTIVATE_NO_JOURNAL);
  if (rc < 0) return CryptError(rc, "activate for initialization", target_);
  struct Ctx {
    const ProgressFn* fn;
  } ctx{&progress};
  const std::string path = "/dev/mapper/" + name;
  rc = crypt_wipe(
      cd_, path.c_str(), CRYPT_WIPE_ZERO, 0, 0, 1024 * 1024, CRYPT_WIPE_NO_DIRECT_IO,
      [](uint64_t size, uint64_t offset, void* usrptr) -> int {
        const auto* c = static_cast<Ctx*>(usrptr);
        return (*c->fn && !(*c->fn)(offset, size)) ? 1 : 0;
      },
      &ctx);
  const int deactivate = crypt_deactivate(cd_, name.c_str());
  if (rc < 0) return CryptError(rc, "initialize the integrity tags of", target_);
  if (deactivate < 0) return CryptError(deactivate, "remove the mapping " + name + " of", target_);
  return absl::OkStatus();
}

absl::StatusOr<DmMapping> DmStatus(const std::string& name) {
  if (!DeviceMapperAvailable()) return NotFoundError("no device-mapper on this host");
  crypt_set_log_callback(nullptr, LogCallback, nullptr);
  crypt_device* raw = nullptr;
  if (crypt_init_by_name(&raw, name.c_str()) < 0) {
    TakeCryptError();
    return NotFoundError("no dm mapping named {}", name);
  }
  CryptPtr cd(raw);
  DmMapping mapping;
  if (const char* device = crypt_get_device_name(cd.get())) mapping.device = device;
  if (crypt_get_cipher(cd.get()) && crypt_get_cipher_mode(cd.get())) {
    mapping.cipher =
        std::string(crypt_get_cipher(cd.get())) + "-" + crypt_get_cipher_mode(cd.get());
  }
  mapping.sector_size = static_cast<uint32_t>(crypt_get_sector_size(cd.get()));
  return mapping;
}

absl::Status DeactivateDm(const std::string& name) {
  crypt_set_log_callback(nullptr, LogCallback, nullptr);
  const int rc = crypt_deactivate(nullptr, name.c_str());
  if (rc == -EBUSY) return FailedPreconditionError("{} is in use; unmount it first", name);
  if (rc == -ENODEV) return NotFoundError("no dm mapping named {}", name);
  if (rc < 0) return CryptError(rc, "close", name);
  return absl::OkStatus();
}

}  // namespace keywarden::volume
