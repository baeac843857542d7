// Test tools for LUKS volumes that deliberately do not use Keywarden's own code paths:
// - NettleXtsDecryptSector decrypts one dm-crypt aes-xts-plain64 sector with Nettle, an
//   AES-XTS implementation independent of Keywarden's (libgcrypt) one.
// - RewriteLuks2Metadata edits a LUKS2 header's JSON and recomputes both header copies'
//   checksums (LUKS2 on-disk format §2-3), as a malicious host could.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

namespace keywarden::testing {

// NettleXtsDecryptSector returns the plaintext of `ciphertext` (one sector) under the 64-byte
// `key` with tweak = the little-endian plain64 IV `iv` (dm-crypt counts it in 512-byte units:
// 4096-byte sector k has IV 8k). Empty on error (the test then fails).
std::string NettleXtsDecryptSector(const std::string& key, uint64_t iv,
                                   const std::string& ciphertext);

// RewriteLuks2Metadata applies `edit` to the JSON metadata of the LUKS2 header in `path`,
// writes it back into both header copies (bumping seqid) and fixes their SHA-256 checksums.
// Returns an error message, or "" on success.
std::string RewriteLuks2Metadata(const std::filesystem::path& path,
                                 const std::function<void(nlohmann::json&)>& edit);

}  // namespace keywarden::testing
