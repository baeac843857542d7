// Encrypted volumes: format, open, close and status (docs/volumes.md).
//
// A volume is LUKS2 with Keywarden's fixed profile (profile.h). Its keyslot passphrase is the
// DEK whose id is the volume's lower-case LUKS UUID, so whoever can get that DEK from the key
// service (or derive it from the master secret) can open it, and nobody else.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/volume/luks.h"

namespace keywarden::volume {

// KeyFetcher returns the 32-byte DEK for a key id (the key service's GetDataKey, or a local
// derivation from the master secret).
using KeyFetcher = std::function<absl::StatusOr<SecretBytes>(const std::string& key_id)>;

inline constexpr size_t kDekSize = 32;
inline constexpr std::string_view kDefaultRunDir = "/run/keywarden";

// Passphrase returns keyslot 0's passphrase for a volume from its DEK: the 32 DEK bytes for
// LUKS2 (as Constellation does), the DEK's 64 lower-case hex digits for LUKS1 (qemu and
// nbdkit, the LUKS1 peers, take text passphrases).
absl::StatusOr<SecretBytes> Passphrase(LuksVersion version, const SecretBytes& dek);

// RandomUuid returns a fresh random (version 4) UUID in lower case.
absl::StatusOr<std::string> RandomUuid();

// ValidateVolumeName accepts 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'.
absl::Status ValidateVolumeName(std::string_view name);

struct FormatRequest {
  std::string target;
  // uuid is the volume's UUID: empty for a fresh random one; otherwise 8-4-4-4-12 hex digits
  // in either case, stored (and used as the DEK id) in lower case.
  std::string uuid;
  FormatOptions options;
  bool wipe = false;   // write encrypted zeros over the data area (always with integrity)
  bool force = false;  // allow replacing an existing LUKS header
  ProgressFn progress;
};

// FormatVolume takes request.uuid (INVALID_ARGUMENT if it is not a UUID) or picks a fresh one,
// fetches DEK(uuid), and only then writes a header; a failure before that (bad UUID, key
// service down, bad target, existing volume without `force`) writes nothing.
absl::StatusOr<HeaderFacts> FormatVolume(const FormatRequest& request, const KeyFetcher& fetch);

// State disks. A node keeps its measurement salt (public, kMeasurementSaltSize bytes) in its
// state disk's Keywarden token, next to a MAC under a key derived from the disk's DEK
// (docs/formats/volume.md, "node_state"):
//   K   = HKDF-SHA256(ikm = DEK, salt = empty, info = "keywarden-node-state-v1", 32)
//   mac = HMAC-SHA256(K, "keywarden-node-state-v1" || 0x00 || lower-case UUID || 0x00 || salt)
// so that a host that rewrites the salt (to make the node measure a wrong clusterID into
// PCR 15) is detected by whoever holds the DEK. `dek` below is the raw 32-byte DEK(uuid), not
// the keyslot passphrase. Each function loads and profile-checks TARGET first
// (FAILED_PRECONDITION / NOT_FOUND as LuksDevice::Load) and then checks that `dek` opens
// keyslot 0 (PERMISSION_DENIED "wrong key" otherwise) before it reads or writes node_state;
// that check runs the keyslot KDF once. Not safe against concurrent writers of the same header
// (libcryptsetup refuses a write whose header changed underneath it).
inline constexpr std::string_view kNodeStateLabel = "keywarden-node-state-v1";

// WriteNodeState writes (or replaces) the measurement salt and its MAC into TARGET's Keywarden
// token. INVALID_ARGUMENT for a salt that is not kMeasurementSaltSize bytes or a DEK that is
// not kDekSize; FAILED_PRECONDITION for a LUKS1 volume. Nothing is written on any error.
absl::Status WriteNodeState(const std::string& target, const SecretBytes& dek,
                            std::span<const uint8_t> measurement_salt);

// ReadNodeState returns the measurement salt kept on TARGET, or nullopt when its token has no
// node_state. DATA_LOSS when the MAC does not verify (the salt was tampered with; compared in
// constant time). Writes nothing.
absl::StatusOr<std::optional<std::vector<uint8_t>>> ReadNodeState(const std::string& target,
                                                                  const SecretBytes& dek);

// CheckVolumeKey profile-checks TARGET and checks that `dek` (the raw DEK) opens keyslot 0;
// returns the header's facts. PERMISSION_DENIED "wrong key" otherwise. Writes nothing.
absl::StatusOr<HeaderFacts> CheckVolumeKey(const std::string& target, const SecretBytes& dek);

// OpenedVolume describes an open volume; it is also what the run directory records.
struct OpenedVolume {
  std::string name;
  std::string target;  // absolute path
  std::string uuid;
  std::string mode;   // "fuse" or "dm"
  std::string mount;  // FUSE: the mount directory
  std::string path;   // what to use: FUSE file or /dev/mapper/NAME
  int64_t pid = 0;    // FUSE: the serving process
};

struct OpenRequest {
  std::string target;
  std::string name;
  std::string fuse_dir;  // empty: dm-crypt
  std::string run_dir = std::string(kDefaultRunDir);
  unsigned fuse_threads = 8;
};

// OpenVolume checks the header, fetches the DEK, unlocks keyslot 0 and then either maps the
// volume with dm-crypt (returns at once) or serves it through FUSE (returns when it is
// unmounted). `ready` is called once the volume is usable. The run directory records each open
// volume (RUN/volumes/NAME.json) so `close` and `status` find it by name.
absl::Status OpenVolume(const OpenRequest& request, const KeyFetcher& fetch,
                        const std::function<void(const OpenedVolume&)>& ready);

// CloseVolume unmaps NAME: unmounts its FUSE file system (waiting for the server to exit) or
// removes its dm mapping. FAILED_PRECONDITION while it is in use; NOT_FOUND if not open.
absl::Status CloseVolume(const std::string& name, const std::string& run_dir);

// VolumeStatus is what `keywarden volume status` prints.
struct VolumeStatus {
  std::string target;
  std::optional<HeaderFacts> facts;    // when the header passed the profile check
  absl::Status header_status;          // why not, otherwise
  std::vector<OpenedVolume> mappings;  // where it is open
  bool server_alive = true;            // FUSE: the serving process still runs
};

// GetVolumeStatus takes a target path or an open volume's name.
absl::StatusOr<VolumeStatus> GetVolumeStatus(const std::string& target_or_name,
                                             const std::string& run_dir);

}  // namespace keywarden::volume
