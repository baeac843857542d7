// The fixed LUKS profile of a Keywarden volume, and the check that a header follows it.
//
// A host can hand a confidential VM any disk header it likes: a null cipher, a data segment
// that overlaps the header, a second keyslot whose passphrase the host knows. Before Keywarden
// unlocks, opens or writes a volume it checks the header against this profile and refuses
// anything else (docs/formats/volume.md lists every rule).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::volume {

inline constexpr std::string_view kCipher = "aes";
inline constexpr std::string_view kCipherMode = "xts-plain64";
inline constexpr std::string_view kCipherSpec = "aes-xts-plain64";
inline constexpr std::string_view kIntegrity = "hmac(sha256)";
inline constexpr std::string_view kTokenType = "keywarden";
inline constexpr size_t kVolumeKeySize = 64;           // AES-256-XTS
inline constexpr size_t kIntegrityVolumeKeySize = 96;  // AES-256-XTS + HMAC-SHA256 key
inline constexpr uint32_t kLuks2SectorSize = 4096;
inline constexpr uint32_t kLuks1SectorSize = 512;
// kLuks2DataOffset is where a Keywarden LUKS2 volume's data starts: two 16 KiB metadata copies
// and libcryptsetup's default keyslot area (16744448 bytes), i.e. 16 MiB.
inline constexpr uint64_t kLuks2DataOffset = 16 * 1024 * 1024;
inline constexpr uint64_t kLuks2JsonSize = 12288;
inline constexpr uint64_t kLuks2KeyslotsSize = 16744448;
// kMeasurementSaltSize is the size of a state disk's measurement salt, and kNodeStateMacSize
// that of the tag that authenticates it (HMAC-SHA256; docs/formats/volume.md, "node_state").
inline constexpr size_t kMeasurementSaltSize = 32;
inline constexpr size_t kNodeStateMacSize = 32;

enum class LuksVersion { kLuks1 = 1, kLuks2 = 2 };

// HeaderFacts is what a header that passed the profile check says about its volume.
struct HeaderFacts {
  LuksVersion version = LuksVersion::kLuks2;
  std::string uuid;                      // lower-case
  size_t volume_key_size = 0;            // 64, or 96 with integrity
  uint32_t sector_size = 0;              // 4096 (LUKS2) or 512 (LUKS1)
  uint64_t data_offset = 0;              // bytes from the start of the device
  std::optional<std::string> integrity;  // "hmac(sha256)" or none
  std::string pbkdf;                     // keyslot 0's: "argon2id" or "pbkdf2"
  std::string key_id;                    // the DEK id: the token's, or the UUID (LUKS1)
  bool has_token = false;                // a Keywarden token is present (LUKS2)
  bool initialized = true;               // the token's flag (LUKS1: always true)
  // The token's node_state (a node's state disk): the measurement salt and its MAC, both
  // kMeasurementSaltSize / kNodeStateMacSize bytes. The MAC is NOT verified by the profile
  // check (that needs the DEK): use ReadNodeState (volume.h), never this field, to trust the
  // salt.
  std::optional<std::vector<uint8_t>> measurement_salt;
  std::vector<uint8_t> node_state_mac;  // empty when measurement_salt is nullopt
};

// CheckLuks2Metadata checks LUKS2 JSON metadata (the object libcryptsetup's crypt_dump_json
// returns) against the profile. `uuid` is the binary header's UUID. Returns the facts, or
// FAILED_PRECONDITION naming the first rule the header breaks. Never throws; any JSON is safe.
absl::StatusOr<HeaderFacts> CheckLuks2Metadata(std::string_view json, std::string_view uuid);

// Luks1Header is what libcryptsetup reports about a LUKS1 header (LUKS1 has no JSON).
struct Luks1Header {
  std::string uuid;
  std::string cipher;       // "aes"
  std::string cipher_mode;  // "xts-plain64"
  std::string hash;         // the header's hash spec
  size_t volume_key_size = 0;
  uint64_t data_offset = 0;  // bytes
  uint64_t device_size = 0;  // bytes
  int active_keyslots = 0;   // count of enabled keyslots
  bool keyslot0_active = false;
  uint64_t keyslot0_offset = 0;  // bytes: where keyslot 0's key material lies
  uint64_t keyslot0_length = 0;
};

// CheckLuks1Header checks a LUKS1 header against the LUKS1 interop profile (aes-xts-plain64,
// 64-byte key, sha256, exactly keyslot 0, data 4 KiB-aligned after the keyslots and inside
// the device). Returns the facts or FAILED_PRECONDITION.
absl::StatusOr<HeaderFacts> CheckLuks1Header(const Luks1Header& header);

}  // namespace keywarden::volume
