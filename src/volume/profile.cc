#include "keywarden/volume/profile.h"

#include <algorithm>
#include <charconv>
#include <nlohmann/json.hpp>

#include "keywarden/keys/hierarchy.h"
#include "keywarden/status.h"

namespace keywarden::volume {
namespace {

using Json = nlohmann::json;

template <typename... Args>
absl::Status Refuse(fmt::format_string<Args...> format, Args&&... args) {
  return FailedPreconditionError("LUKS header refused: {}",
                                 fmt::format(format, std::forward<Args>(args)...));
}

// Quote renders a JSON value from an untrusted header for an error message.
std::string Quote(const Json& value) {
  return Printable(value.dump(-1, ' ', true, Json::error_handler_t::replace), 48);
}

// ObjectKeys checks that `object` is an object whose member names are exactly `want`.
absl::Status ExpectKeys(const Json& object, std::string_view what,
                        std::initializer_list<std::string_view> required,
                        std::initializer_list<std::string_view> optional = {}) {
  if (!object.is_object()) return Refuse("{} is not a JSON object", what);
  for (const auto& [key, value] : object.items()) {
    const bool known = std::find(required.begin(), required.end(), key) != required.end() ||
                       std::find(optional.begin(), optional.end(), key) != optional.end();
    if (!known) return Refuse("{} has an unexpected field \"{}\"", what, Printable(key, 32));
  }
  for (std::string_view key : required) {
    if (!object.contains(std::string(key))) return Refuse("{} lacks \"{}\"", what, key);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> String(const Json& object, std::string_view what,
                                   std::string_view key) {
  const Json& value = object.at(std::string(key));
  if (!value.is_string()) return Refuse("{}.{} is not a string", what, key);
  return value.get<std::string>();
}

absl::Status ExpectString(const Json& object, std::string_view what, std::string_view key,
                          std::string_view want) {
  ASSIGN_OR_RETURN(std::string got, String(object, what, key));
  if (got != want) {
    return Refuse("{}.{} is \"{}\", the profile requires \"{}\"", what, key, Printable(got, 48),
                  want);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Integer(const Json& object, std::string_view what, std::string_view key) {
  const Json& value = object.at(std::string(key));
  if (!value.is_number_unsigned()) return Refuse("{}.{} is not a non-negative integer", what, key);
  return value.get<uint64_t>();
}

// DecimalString reads LUKS2's 64-bit sizes, which the format stores as decimal strings.
absl::StatusOr<uint64_t> DecimalString(const Json& object, std::string_view what,
                                       std::string_view key) {
  ASSIGN_OR_RETURN(std::string text, String(object, what, key));
  uint64_t value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) {
    return Refuse("{}.{} is not a decimal number", what, key);
  }
  return value;
}

// ExpectOnly checks that `list` is the JSON array ["0"].
absl::Status ExpectOnlyZero(const Json& object, std::string_view what, std::string_view key) {
  const Json& list = object.at(std::string(key));
  if (!list.is_array() || list.size() != 1 || list[0] != "0") {
    return Refuse("{}.{} is {}, the profile requires [\"0\"]", what, key, Quote(list));
  }
  return absl::OkStatus();
}

// OnlyMemberZero checks that `object` has exactly one member, "0", and returns it.
absl::StatusOr<const Json*> OnlyMemberZero(const Json& object, std::string_view what,
                                           std::string_view noun) {
  if (!object.is_object()) return Refuse("{} is not a JSON object", what);
  if (object.size() != 1 || !object.contains("0")) {
    std::string names;
    for (const auto& [key, value] : object.items()) {
      names += (names.empty() ? "" : ", ") + Printable(key, 16);
    }
    return Refuse("the header has {} {} ({}); the profile allows exactly one, number 0",
                  object.size(), noun, names.empty() ? "none" : names);
  }
  return &object.at("0");
}

absl::Status CheckSegment(const Json& segment, HeaderFacts& facts) {
  constexpr std::string_view what = "segment 0";
  RETURN_IF_ERROR(ExpectKeys(segment, what,
                             {"type", "offset", "size", "iv_tweak", "encryption", "sector_size"},
                             {"integrity", "flags"}));
  ASSIGN_OR_RETURN(std::string type, String(segment, what, "type"));
  if (type != "crypt") {
    return Refuse("segment 0 is of type \"{}\", the profile requires a crypt segment",
                  Printable(type, 32));
  }
  ASSIGN_OR_RETURN(std::string encryption, String(segment, what, "encryption"));
  if (encryption != kCipherSpec) {
    return Refuse("segment 0 uses cipher \"{}\"; Keywarden volumes use {}",
                  Printable(encryption, 48), kCipherSpec);
  }
  ASSIGN_OR_RETURN(uint64_t offset, DecimalString(segment, what, "offset"));
  if (offset != kLuks2DataOffset) {
    return Refuse(
        "segment 0 starts at byte {}, the profile requires {} (right after the "
        "header and keyslot areas)",
        offset, kLuks2DataOffset);
  }
  RETURN_IF_ERROR(ExpectString(segment, what, "size", "dynamic"));
  RETURN_IF_ERROR(ExpectString(segment, what, "iv_tweak", "0"));
  ASSIGN_OR_RETURN(uint64_t sector_size, Integer(segment, what, "sector_size"));
  if (sector_size != kLuks2SectorSize) {
    return Refuse("segment 0 has {}-byte sectors, the profile requires {}", sector_size,
                  kLuks2SectorSize);
  }
  if (segment.contains("flags") &&
      !(segment.at("flags").is_array() && segment.at("flags").empty())) {
    return Refuse("segment 0 carries flags {} (e.g. an unfinished re-encryption)",
                  Quote(segment.at("flags")));
  }
  if (segment.contains("integrity")) {
    const Json& integrity = segment.at("integrity");
    constexpr std::string_view iwhat = "segment 0 integrity";
    RETURN_IF_ERROR(
        ExpectKeys(integrity, iwhat, {"type", "journal_encryption", "journal_integrity"}));
    RETURN_IF_ERROR(ExpectString(integrity, iwhat, "type", kIntegrity));
    RETURN_IF_ERROR(ExpectString(integrity, iwhat, "journal_encryption", "none"));
    RETURN_IF_ERROR(ExpectString(integrity, iwhat, "journal_integrity", "none"));
    facts.integrity = std::string(kIntegrity);
  }
  facts.sector_size = static_cast<uint32_t>(sector_size);
  facts.data_offset = offset;
  return absl::OkStatus();
}

absl::Status CheckKeyslot(const Json& keyslot, HeaderFacts& facts) {
  constexpr std::string_view what = "keyslot 0";
  RETURN_IF_ERROR(
      ExpectKeys(keyslot, what, {"type", "key_size", "af", "area", "kdf"}, {"priority"}));
  RETURN_IF_ERROR(ExpectString(keyslot, what, "type", "luks2"));
  ASSIGN_OR_RETURN(uint64_t key_size, Integer(keyslot, what, "key_size"));
  const size_t want_key = facts.integrity ? kIntegrityVolumeKeySize : kVolumeKeySize;
  if (key_size != want_key) {
    return Refuse("keyslot 0 holds a {}-byte volume key, the profile requires {}", key_size,
                  want_key);
  }
  const Json& af = keyslot.at("af");
  RETURN_IF_ERROR(ExpectKeys(af, "keyslot 0 af", {"type", "stripes", "hash"}));
  RETURN_IF_ERROR(ExpectString(af, "keyslot 0 af", "type", "luks1"));
  RETURN_IF_ERROR(ExpectString(af, "keyslot 0 af", "hash", "sha256"));
  ASSIGN_OR_RETURN(uint64_t stripes, Integer(af, "keyslot 0 af", "stripes"));
  if (stripes != 4000) return Refuse("keyslot 0 uses {} AF stripes, the profile 4000", stripes);

  const Json& area = keyslot.at("area");
  constexpr std::string_view awhat = "keyslot 0 area";
  RETURN_IF_ERROR(ExpectKeys(area, awhat, {"type", "offset", "size", "encryption", "key_size"}));
  RETURN_IF_ERROR(ExpectString(area, awhat, "type", "raw"));
  ASSIGN_OR_RETURN(std::string area_cipher, String(area, awhat, "encryption"));
  if (area_cipher != kCipherSpec) {
    return Refuse("keyslot 0 is encrypted with \"{}\"; the profile requires {}",
                  Printable(area_cipher, 48), kCipherSpec);
  }
  ASSIGN_OR_RETURN(uint64_t area_key, Integer(area, awhat, "key_size"));
  if (area_key != kVolumeKeySize) {
    return Refuse("keyslot 0 area key is {} bytes, the profile requires {}", area_key,
                  kVolumeKeySize);
  }
  ASSIGN_OR_RETURN(uint64_t area_offset, DecimalString(area, awhat, "offset"));
  ASSIGN_OR_RETURN(uint64_t area_size, DecimalString(area, awhat, "size"));
  constexpr uint64_t kAreaStart = 2 * (kLuks2JsonSize + 4096);
  if (area_offset < kAreaStart || area_size == 0 || area_size > kLuks2KeyslotsSize ||
      area_offset > kLuks2DataOffset - area_size) {
    return Refuse("keyslot 0's area [{}, +{}) lies outside the keyslots area [{}, {})", area_offset,
                  area_size, kAreaStart, kLuks2DataOffset);
  }

  const Json& kdf = keyslot.at("kdf");
  constexpr std::string_view kwhat = "keyslot 0 kdf";
  if (!kdf.is_object() || !kdf.contains("type") || !kdf.at("type").is_string()) {
    return Refuse("keyslot 0 has no valid kdf");
  }
  const std::string kdf_type = kdf.at("type").get<std::string>();
  if (kdf_type == "argon2id") {
    RETURN_IF_ERROR(ExpectKeys(kdf, kwhat, {"type", "time", "memory", "cpus", "salt"}));
  } else if (kdf_type == "pbkdf2") {
    RETURN_IF_ERROR(ExpectKeys(kdf, kwhat, {"type", "hash", "iterations", "salt"}));
    RETURN_IF_ERROR(ExpectString(kdf, kwhat, "hash", "sha256"));
  } else {
    return Refuse(
        "keyslot 0 uses kdf \"{}\"; the profile allows argon2id (or pbkdf2 with "
        "sha256)",
        Printable(kdf_type, 32));
  }
  facts.volume_key_size = key_size;
  facts.pbkdf = kdf_type;
  return absl::OkStatus();
}

absl::Status CheckDigest(const Json& digest) {
  constexpr std::string_view what = "digest 0";
  RETURN_IF_ERROR(ExpectKeys(
      digest, what, {"type", "keyslots", "segments", "hash", "iterations", "salt", "digest"}));
  RETURN_IF_ERROR(ExpectString(digest, what, "type", "pbkdf2"));
  RETURN_IF_ERROR(ExpectOnlyZero(digest, what, "keyslots"));
  RETURN_IF_ERROR(ExpectOnlyZero(digest, what, "segments"));
  return absl::OkStatus();
}

// LowerHex reads OBJECT.KEY as exactly 2 * `size` lower-case hex digits. One spelling only, so
// that a header has one canonical token text.
absl::StatusOr<std::vector<uint8_t>> LowerHex(const Json& object, std::string_view what,
                                              std::string_view key, size_t size) {
  ASSIGN_OR_RETURN(std::string text, String(object, what, key));
  const bool lower_hex = std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
  if (text.size() != 2 * size || !lower_hex) {
    return Refuse("{}.{} is \"{}\", the profile requires {} lower-case hex digits", what, key,
                  Printable(text, 72), 2 * size);
  }
  std::vector<uint8_t> bytes(text.size() / 2);
  auto nibble = [](char c) { return c <= '9' ? c - '0' : c - 'a' + 10; };
  for (size_t i = 0; i < bytes.size(); ++i) {
    bytes[i] = static_cast<uint8_t>(nibble(text[2 * i]) << 4 | nibble(text[2 * i + 1]));
  }
  return bytes;
}

// CheckNodeState checks token 0's optional node_state: {"measurement_salt", "mac"}, both
// 32 bytes as lower-case hex. The MAC is only parsed here; ReadNodeState verifies it.
absl::Status CheckNodeState(const Json& node_state, HeaderFacts& facts) {
  constexpr std::string_view what = "token 0 node_state";
  RETURN_IF_ERROR(ExpectKeys(node_state, what, {"measurement_salt", "mac"}));
  ASSIGN_OR_RETURN(std::vector<uint8_t> salt,
                   LowerHex(node_state, what, "measurement_salt", kMeasurementSaltSize));
  ASSIGN_OR_RETURN(std::vector<uint8_t> mac, LowerHex(node_state, what, "mac", kNodeStateMacSize));
  facts.measurement_salt = std::move(salt);
  facts.node_state_mac = std::move(mac);
  return absl::OkStatus();
}

absl::Status CheckTokens(const Json& tokens, HeaderFacts& facts) {
  if (!tokens.is_object()) return Refuse("tokens is not a JSON object");
  if (tokens.empty()) return absl::OkStatus();
  ASSIGN_OR_RETURN(const Json* token, OnlyMemberZero(tokens, "tokens", "tokens"));
  constexpr std::string_view what = "token 0";
  RETURN_IF_ERROR(
      ExpectKeys(*token, what, {"type", "keyslots", "key_id", "initialized"}, {"node_state"}));
  ASSIGN_OR_RETURN(std::string type, String(*token, what, "type"));
  if (type != kTokenType) {
    return Refuse("token 0 is of type \"{}\", not Keywarden's \"{}\"", Printable(type, 32),
                  kTokenType);
  }
  RETURN_IF_ERROR(ExpectOnlyZero(*token, what, "keyslots"));
  ASSIGN_OR_RETURN(std::string key_id, String(*token, what, "key_id"));
  if (key_id != facts.uuid) {
    return Refuse("token 0 names key \"{}\", but a volume's key is the DEK of its own UUID {}",
                  Printable(key_id, 64), facts.uuid);
  }
  if (!token->at("initialized").is_boolean()) return Refuse("token 0 initialized is not a bool");
  if (token->contains("node_state"))
    RETURN_IF_ERROR(CheckNodeState(token->at("node_state"), facts));
  facts.has_token = true;
  facts.key_id = key_id;
  facts.initialized = token->at("initialized").get<bool>();
  return absl::OkStatus();
}

absl::Status CheckConfig(const Json& config) {
  constexpr std::string_view what = "config";
  RETURN_IF_ERROR(
      ExpectKeys(config, what, {"json_size", "keyslots_size"}, {"flags", "requirements"}));
  ASSIGN_OR_RETURN(uint64_t json_size, DecimalString(config, what, "json_size"));
  ASSIGN_OR_RETURN(uint64_t keyslots_size, DecimalString(config, what, "keyslots_size"));
  if (json_size != kLuks2JsonSize || keyslots_size != kLuks2KeyslotsSize) {
    return Refuse(
        "metadata sizes json_size={} keyslots_size={} differ from the profile's {} "
        "and {}",
        json_size, keyslots_size, kLuks2JsonSize, kLuks2KeyslotsSize);
  }
  for (std::string_view key : {"flags", "requirements"}) {
    if (!config.contains(std::string(key))) continue;
    const Json& value = config.at(std::string(key));
    const bool empty = (value.is_array() || value.is_object()) && value.empty();
    if (!empty) return Refuse("config.{} is {}; the profile allows none", key, Quote(value));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<HeaderFacts> CheckLuks2Metadata(std::string_view json, std::string_view uuid) {
  HeaderFacts facts;
  facts.version = LuksVersion::kLuks2;
  auto normalized = keys::NormalizeUuid(uuid);
  if (!normalized.ok()) return Refuse("the header's UUID \"{}\" is not a UUID", Printable(uuid));
  facts.uuid = *normalized;
  facts.key_id = facts.uuid;

  const Json root = Json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Refuse("the metadata is not valid JSON");
  RETURN_IF_ERROR(
      ExpectKeys(root, "the metadata", {"keyslots", "tokens", "segments", "digests", "config"}));

  ASSIGN_OR_RETURN(const Json* segment,
                   OnlyMemberZero(root.at("segments"), "segments", "data segments"));
  RETURN_IF_ERROR(CheckSegment(*segment, facts));
  ASSIGN_OR_RETURN(const Json* keyslot,
                   OnlyMemberZero(root.at("keyslots"), "keyslots", "keyslots"));
  RETURN_IF_ERROR(CheckKeyslot(*keyslot, facts));
  ASSIGN_OR_RETURN(const Json* digest, OnlyMemberZero(root.at("digests"), "digests", "digests"));
  RETURN_IF_ERROR(CheckDigest(*digest));
  RETURN_IF_ERROR(CheckTokens(root.at("tokens"), facts));
  RETURN_IF_ERROR(CheckConfig(root.at("config")));
  return facts;
}

absl::StatusOr<HeaderFacts> CheckLuks1Header(const Luks1Header& header) {
  HeaderFacts facts;
  facts.version = LuksVersion::kLuks1;
  auto normalized = keys::NormalizeUuid(header.uuid);
  if (!normalized.ok()) {
    return Refuse("the header's UUID \"{}\" is not a UUID", Printable(header.uuid));
  }
  facts.uuid = *normalized;
  facts.key_id = facts.uuid;
  const std::string spec = header.cipher + "-" + header.cipher_mode;
  if (header.cipher != kCipher || header.cipher_mode != kCipherMode) {
    return Refuse("the volume uses cipher \"{}\"; Keywarden volumes use {}", Printable(spec, 48),
                  kCipherSpec);
  }
  if (header.volume_key_size != kVolumeKeySize) {
    return Refuse("the volume key is {} bytes, the profile requires {}", header.volume_key_size,
                  kVolumeKeySize);
  }
  if (header.hash != "sha256") {
    return Refuse("the header hash is \"{}\", the profile requires sha256",
                  Printable(header.hash, 16));
  }
  if (!header.keyslot0_active || header.active_keyslots != 1) {
    return Refuse("the header has {} active keyslots{}; the profile allows exactly keyslot 0",
                  header.active_keyslots, header.keyslot0_active ? "" : " and keyslot 0 is off");
  }
  const uint64_t slot_end = header.keyslot0_offset + header.keyslot0_length;
  if (header.keyslot0_offset < 4096 || header.keyslot0_length == 0 ||
      slot_end < header.keyslot0_offset || slot_end > header.data_offset) {
    return Refuse("keyslot 0's material [{}, +{}) overlaps the header or the data at {}",
                  header.keyslot0_offset, header.keyslot0_length, header.data_offset);
  }
  if (header.data_offset % 4096 != 0 || header.data_offset > kLuks2DataOffset) {
    return Refuse("the data starts at byte {}: not 4 KiB-aligned or beyond 16 MiB",
                  header.data_offset);
  }
  if (header.device_size <= header.data_offset) {
    return Refuse("the data offset {} lies beyond the device's {} bytes", header.data_offset,
                  header.device_size);
  }
  facts.volume_key_size = header.volume_key_size;
  facts.sector_size = kLuks1SectorSize;
  facts.data_offset = header.data_offset;
  facts.pbkdf = "pbkdf2";
  return facts;
}

}  // namespace keywarden::volume
