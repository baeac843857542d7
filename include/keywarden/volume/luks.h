// LUKS headers through libcryptsetup: format, load-and-check, unlock, token, dm-crypt.
//
// This is the only place Keywarden calls libcryptsetup. Every function that reads a header runs
// the profile check (profile.h) before it uses anything the header says.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/volume/profile.h"

struct crypt_device;

namespace keywarden::volume {

// FormatOptions are the knobs `keywarden volume format` exposes; everything else is the
// fixed profile.
struct FormatOptions {
  LuksVersion version = LuksVersion::kLuks2;
  bool integrity = false;          // LUKS2 only; needs device-mapper (dm-integrity)
  std::string pbkdf = "argon2id";  // keyslot KDF: "argon2id" or "pbkdf2" (LUKS1: pbkdf2)
  // pbkdf_iterations > 0 skips libcryptsetup's benchmark: PBKDF2 iterations, or Argon2id's time
  // cost (with 64 MiB, 1 thread). For tests; 0 (the default) benchmarks for a 2 s unlock.
  uint32_t pbkdf_iterations = 0;
};

// ProgressFn is told (done, total) bytes during long operations; returning false cancels.
using ProgressFn = std::function<bool(uint64_t done, uint64_t total)>;

// DeviceMapperAvailable reports whether this host can activate dm-crypt (/dev/mapper/control).
bool DeviceMapperAvailable();

// TargetSize returns the size in bytes of a regular file or block device; FAILED_PRECONDITION
// for anything else or an unreadable path.
absl::StatusOr<uint64_t> TargetSize(const std::string& target);

// LuksDevice is one loaded, profile-checked header. Not thread-safe.
class LuksDevice {
 public:
  // Load reads TARGET's header (read-only: nothing is written) and checks it against the
  // profile. NOT_FOUND when TARGET has no LUKS header; FAILED_PRECONDITION when the header
  // breaks the profile (the message names the rule).
  static absl::StatusOr<std::unique_ptr<LuksDevice>> Load(const std::string& target);

  // Format writes a new header on TARGET with `volume_key` (64 bytes, or 96 with integrity),
  // `uuid`, and one keyslot (0) opened by `passphrase`; LUKS2 headers get a Keywarden token
  // with `initialized`. Checks everything it can before the first write; the result passes
  // the profile check. Integrity needs device-mapper (FAILED_PRECONDITION without it).
  static absl::StatusOr<std::unique_ptr<LuksDevice>> Format(
      const std::string& target, const std::string& uuid, const SecretBytes& volume_key,
      const SecretBytes& passphrase, const FormatOptions& options, bool initialized);

  ~LuksDevice();
  LuksDevice(const LuksDevice&) = delete;
  LuksDevice& operator=(const LuksDevice&) = delete;

  const HeaderFacts& facts() const { return facts_; }
  const std::string& target() const { return target_; }

  // UnlockVolumeKey runs keyslot 0's KDF on `passphrase` and returns the volume key.
  // PERMISSION_DENIED when the passphrase does not open the keyslot; the header is unchanged.
  absl::StatusOr<SecretBytes> UnlockVolumeKey(const SecretBytes& passphrase);

  // CheckPassphrase runs keyslot 0's KDF on `passphrase` and reports whether it opens the
  // keyslot, without handing the volume key to Keywarden (libcryptsetup's --test-passphrase).
  // PERMISSION_DENIED when it does not; the header is unchanged either way.
  absl::Status CheckPassphrase(const SecretBytes& passphrase);

  // SetInitialized rewrites the Keywarden token's `initialized` flag (LUKS2). The token's
  // other members (node_state) are kept.
  absl::Status SetInitialized(bool initialized);

  // SetNodeState writes (or replaces) the Keywarden token's node_state: `measurement_salt`
  // and its `mac` (kMeasurementSaltSize and kNodeStateMacSize bytes), which the caller has
  // computed (volume.h's WriteNodeState). FAILED_PRECONDITION for LUKS1, which has no tokens.
  absl::Status SetNodeState(std::span<const uint8_t> measurement_salt,
                            std::span<const uint8_t> mac);

  // ActivateDm maps the volume as /dev/mapper/NAME with dm-crypt (and dm-integrity).
  absl::Status ActivateDm(const std::string& name, const SecretBytes& passphrase);

  // WipeIntegrityDm initializes a fresh integrity volume's tags by writing zeros through a
  // temporary dm mapping, as cryptsetup does (needs device-mapper).
  absl::Status WipeIntegrityDm(const SecretBytes& volume_key, const ProgressFn& progress);

 private:
  LuksDevice(crypt_device* cd, std::string target, HeaderFacts facts)
      : cd_(cd), target_(std::move(target)), facts_(std::move(facts)) {}
  crypt_device* cd_;
  std::string target_;
  HeaderFacts facts_;
};

// DmMapping is what device-mapper says about an active mapping.
struct DmMapping {
  std::string device;  // the underlying device
  std::string cipher;
  uint32_t sector_size = 0;
};

// DmStatus returns NAME's dm-crypt mapping, NOT_FOUND when there is none.
absl::StatusOr<DmMapping> DmStatus(const std::string& name);

// DeactivateDm removes the dm mapping NAME. FAILED_PRECONDITION while it is in use.
absl::Status DeactivateDm(const std::string& name);

}  // namespace keywarden::volume
