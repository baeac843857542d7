// Hex and base64 (RFC 4648 §4, standard alphabet, with padding) codecs.
//
// The decoders are strict: no whitespace, no line breaks, no missing or misplaced padding, no
// non-canonical trailing bits, upper- or lower-case hex only as pairs. Variants with "Secret" in
// their name keep every byte, input and output, in SecretBytes so that no copy of key material
// is left in ordinary heap memory.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::crypto {

// HexEncode returns lower-case hex. For public data only.
std::string HexEncode(std::span<const uint8_t> bytes);
// HexDecode accepts an even number of [0-9a-fA-F]; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex);

// HexEncodeSecret returns the lower-case hex text of a secret, itself held as a secret.
SecretBytes HexEncodeSecret(const SecretBytes& secret);
// HexDecodeSecret decodes hex text into locked memory.
absl::StatusOr<SecretBytes> HexDecodeSecret(std::string_view hex);

// Base64Encode returns standard base64 with padding. For public data only.
std::string Base64Encode(std::span<const uint8_t> bytes);
// Base64Decode decodes strict standard base64 with padding; INVALID_ARGUMENT otherwise.
absl::StatusOr<std::vector<uint8_t>> Base64Decode(std::string_view text);

// Base64EncodeSecret returns the base64 text of a secret, itself held as a secret.
SecretBytes Base64EncodeSecret(const SecretBytes& secret);
// Base64DecodeSecret decodes strict base64 text into locked memory.
absl::StatusOr<SecretBytes> Base64DecodeSecret(std::string_view text);

}  // namespace keywarden::crypto
