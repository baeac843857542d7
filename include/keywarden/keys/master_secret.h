// The master secret and its file, mastersecret.json (docs/formats/mastersecret.md).
//
// The file is Constellation's CLI format: a JSON object {"key": <std base64>, "salt": <std
// base64>}, written tab-indented with mode 0600 and never overwritten.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::keys {

// kMinMasterKeySize and kMinSaltSize are the shortest values accepted (DESIGN.md §2).
inline constexpr size_t kMinMasterKeySize = 16;
inline constexpr size_t kMinSaltSize = 32;
// kDefaultMasterKeySize and kSaltSize are what Generate makes (Constellation's defaults).
inline constexpr size_t kDefaultMasterKeySize = 32;
inline constexpr size_t kSaltSize = 32;
// kMaxMasterSecretFileSize bounds what is read: the real file is about 110 bytes.
inline constexpr size_t kMaxMasterSecretFileSize = 64 * 1024;

// MasterSecret is the root of the managed-mode key hierarchy. Move-only; both parts live in
// locked memory.
struct MasterSecret {
  SecretBytes key;
  SecretBytes salt;

  // Generate returns a fresh 32-byte key and 32-byte salt from the CSPRNG; fails closed.
  static absl::StatusOr<MasterSecret> Generate();
};

// ParseMasterSecretJson parses the bytes of a mastersecret.json. Errors are INVALID_ARGUMENT,
// each with its own message (not JSON, not an object, missing or non-string field, bad
// base64, key shorter than 16 bytes, salt shorter than 32 bytes); none quotes the input.
absl::StatusOr<MasterSecret> ParseMasterSecretJson(std::span<const uint8_t> json);

// SerializeMasterSecretJson returns the file's bytes exactly as Constellation's CLI writes them
// (Go's json.MarshalIndent with a tab indent, no trailing newline), in locked memory.
SecretBytes SerializeMasterSecretJson(const MasterSecret& secret);

// ReadMasterSecretFile reads and parses `path`. Errors name the path: NOT_FOUND when it does
// not exist, PERMISSION_DENIED when it cannot be read, INVALID_ARGUMENT for bad contents.
absl::StatusOr<MasterSecret> ReadMasterSecretFile(const std::filesystem::path& path);

// WriteMasterSecretFile creates `path` with mode 0600 and O_EXCL, writes and fsyncs it.
// ALREADY_EXISTS when the file exists (it is never overwritten); on any error no file is left.
absl::Status WriteMasterSecretFile(const std::filesystem::path& path, const MasterSecret& secret);

}  // namespace keywarden::keys
