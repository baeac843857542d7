#include "keywarden/crypto/encoding.h"

#include <openssl/evp.h>

#include <cstring>

#include "keywarden/status.h"

namespace keywarden::crypto {
namespace {

constexpr char kHexDigits[] = "0123456789abcdef";

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void HexEncodeInto(std::span<const uint8_t> in, char* out) {
  for (size_t i = 0; i < in.size(); ++i) {
    out[2 * i] = kHexDigits[in[i] >> 4];
    out[2 * i + 1] = kHexDigits[in[i] & 0xf];
  }
}

// HexDecodeInto decodes into `out`, which holds hex.size() / 2 bytes. Errors never quote the
// input: it may be a key.
absl::Status HexDecodeInto(std::string_view hex, uint8_t* out) {
  if (hex.size() % 2 != 0) {
    return InvalidArgumentError("hex has an odd number of digits ({})", hex.size());
  }
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = HexValue(hex[i]);
    const int lo = HexValue(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      return InvalidArgumentError("hex has a non-hex character at offset {}", hi < 0 ? i : i + 1);
    }
    out[i / 2] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return absl::OkStatus();
}

bool IsBase64Char(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
         c == '/';
}

int Base64Value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  return c == '+' ? 62 : 63;
}

// ValidateBase64 checks RFC 4648 §4 canonical form and returns the decoded length.
absl::StatusOr<size_t> ValidateBase64(std::string_view text) {
  if (text.size() % 4 != 0) {
    return InvalidArgumentError("base64 length {} is not a multiple of 4", text.size());
  }
  size_t padding = 0;
  if (!text.empty() && text.back() == '=') {
    padding = text[text.size() - 2] == '=' ? 2 : 1;  // size is a non-zero multiple of 4
  }
  for (size_t i = 0; i < text.size() - padding; ++i) {
    if (!IsBase64Char(text[i])) {
      return InvalidArgumentError("base64 has an invalid character at offset {}", i);
    }
  }
  // Non-canonical encodings (set bits in the unused low bits) are refused so that one value
  // has exactly one text form.
  if (padding == 1 && (Base64Value(text[text.size() - 2]) & 0x3) != 0) {
    return InvalidArgumentError("base64 has non-zero trailing bits");
  }
  if (padding == 2 && (Base64Value(text[text.size() - 3]) & 0xf) != 0) {
    return InvalidArgumentError("base64 has non-zero trailing bits");
  }
  return text.size() / 4 * 3 - padding;
}

// Base64DecodeInto decodes validated text; `out` holds text.size() / 4 * 3 bytes.
absl::Status Base64DecodeInto(std::string_view text, uint8_t* out) {
  if (text.empty()) return absl::OkStatus();
  const int n = EVP_DecodeBlock(out, reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return InvalidArgumentError("base64 could not be decoded");
  return absl::OkStatus();
}

void Base64EncodeInto(std::span<const uint8_t> in, char* out) {
  // EVP_EncodeBlock writes a terminating NUL after 4 * ceil(n / 3) characters.
  EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out), in.data(), static_cast<int>(in.size()));
}

size_t Base64Length(size_t n) { return (n + 2) / 3 * 4; }

}  // namespace

std::string HexEncode(std::span<const uint8_t> bytes) {
  std::string out(bytes.size() * 2, '\0');
  HexEncodeInto(bytes, out.data());
  return out;
}

absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex) {
  std::vector<uint8_t> out(hex.size() / 2);
  RETURN_IF_ERROR(HexDecodeInto(hex, out.data()));
  return out;
}

SecretBytes HexEncodeSecret(const SecretBytes& secret) {
  const auto token = InsecureSecretAccess::Get();
  SecretBytes out(secret.size() * 2);
  HexEncodeInto(secret.Reveal(token), reinterpret_cast<char*>(out.MutableReveal(token).data()));
  return out;
}

absl::StatusOr<SecretBytes> HexDecodeSecret(std::string_view hex) {
  SecretBytes out(hex.size() / 2);
  RETURN_IF_ERROR(HexDecodeInto(hex, out.MutableReveal(InsecureSecretAccess::Get()).data()));
  return out;
}

std::string Base64Encode(std::span<const uint8_t> bytes) {
  std::string out(Base64Length(bytes.size()) + 1, '\0');
  Base64EncodeInto(bytes, out.data());
  out.pop_back();
  return out;
}

absl::StatusOr<std::vector<uint8_t>> Base64Decode(std::string_view text) {
  ASSIGN_OR_RETURN(const size_t length, ValidateBase64(text));
  std::vector<uint8_t> out(text.size() / 4 * 3);
  RETURN_IF_ERROR(Base64DecodeInto(text, out.data()));
  out.resize(length);
  return out;
}

SecretBytes Base64EncodeSecret(const SecretBytes& secret) {
  const auto token = InsecureSecretAccess::Get();
  SecretBytes scratch(Base64Length(secret.size()) + 1);
  Base64EncodeInto(secret.Reveal(token),
                   reinterpret_cast<char*>(scratch.MutableReveal(token).data()));
  return SecretBytes(scratch.Reveal(token).first(scratch.size() - 1));
}

absl::StatusOr<SecretBytes> Base64DecodeSecret(std::string_view text) {
  ASSIGN_OR_RETURN(const size_t length, ValidateBase64(text));
  const auto token = InsecureSecretAccess::Get();
  SecretBytes scratch(text.size() / 4 * 3);
  RETURN_IF_ERROR(Base64DecodeInto(text, scratch.MutableReveal(token).data()));
  return SecretBytes(scratch.Reveal(token).first(length));
}

}  // namespace keywarden::crypto
