#include "keywarden/keys/hierarchy.h"

#include <algorithm>
#include <cctype>
#include <string>

#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::keys {
namespace {

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

constexpr std::string_view kDekPrefix = "key-";
constexpr std::string_view kMeasurementSecretId = "measurementSecret";
constexpr std::string_view kClusterIdInfo = "key-clusterID";

}  // namespace

absl::StatusOr<std::unique_ptr<Kek>> Kek::FromMasterSecret(const MasterSecret& secret) {
  if (secret.key.size() < kMinMasterKeySize || secret.salt.size() < kMinSaltSize) {
    return InvalidArgumentError("master secret too short (key {} bytes, salt {} bytes)",
                                secret.key.size(), secret.salt.size());
  }
  const auto token = InsecureSecretAccess::Get();
  ASSIGN_OR_RETURN(SecretBytes kek,
                   crypto::HkdfSha256Extract(secret.salt.Reveal(token), secret.key.Reveal(token)));
  return FromBytes(kek);
}

absl::StatusOr<std::unique_ptr<Kek>> Kek::FromBytes(const SecretBytes& kek) {
  if (kek.size() != crypto::kHkdfSha256HashLen) {
    return InvalidArgumentError("KEK of {} bytes; want {}", kek.size(), crypto::kHkdfSha256HashLen);
  }
  ASSIGN_OR_RETURN(auto expander, crypto::HkdfSha256Expander::New(kek));
  return std::unique_ptr<Kek>(new Kek(kek.Clone(), std::move(expander)));
}

absl::StatusOr<SecretBytes> Kek::DeriveDek(std::string_view id, size_t length) const {
  if (length < 1 || length > kMaxDekSize) {
    return InvalidArgumentError("DEK length {} is not in [1, {}]", length, kMaxDekSize);
  }
  return expander_->ExpandParts({Bytes(kDekPrefix), Bytes(id)}, length);
}

absl::StatusOr<SecretBytes> Kek::MeasurementSecret() const {
  return DeriveDek(kMeasurementSecretId, 32);
}

absl::StatusOr<SecretBytes> Kek::StateDiskKey(std::string_view uuid) const {
  ASSIGN_OR_RETURN(const std::string id, NormalizeUuid(uuid));
  return DeriveDek(id, 32);
}

absl::StatusOr<ClusterId> DeriveClusterId(const SecretBytes& measurement_secret,
                                          std::span<const uint8_t> measurement_salt) {
  if (measurement_salt.size() != kMeasurementSaltSize) {
    return InvalidArgumentError("measurement salt of {} bytes; want {}", measurement_salt.size(),
                                kMeasurementSaltSize);
  }
  ASSIGN_OR_RETURN(SecretBytes okm,
                   crypto::HkdfSha256(measurement_secret.Reveal(InsecureSecretAccess::Get()),
                                      measurement_salt, Bytes(kClusterIdInfo), kDigestSize));
  // The clusterID is public (it is measured into a PCR), so it leaves locked memory here.
  ClusterId id;
  const auto bytes = okm.Reveal(InsecureSecretAccess::Get());
  std::copy(bytes.begin(), bytes.end(), id.begin());
  return id;
}

PcrValue ExpectedPcr15(std::span<const uint8_t> cluster_id) {
  // TPM2_PCR_Event (TCG TPM2 Part 3 §22.2) extends PCR[i] = H(PCR[i] || H(eventData)); a fresh
  // PCR 15 is 32 zero bytes.
  const std::array<uint8_t, kDigestSize> zero{};
  const auto event_digest = crypto::Sha256({cluster_id});
  return crypto::Sha256({zero, event_digest});
}

absl::StatusOr<std::string> NormalizeUuid(std::string_view uuid) {
  static constexpr size_t kDashes[] = {8, 13, 18, 23};
  auto invalid = [uuid] {
    return InvalidArgumentError(
        "\"{}\" is not a UUID (want 8-4-4-4-12 hex digits, e.g. "
        "0b1c2d3e-0000-4000-8000-00000000abcd)",
        Printable(uuid));
  };
  if (uuid.size() != 36) return invalid();
  std::string out(uuid);
  for (size_t i = 0; i < out.size(); ++i) {
    const bool dash = std::find(std::begin(kDashes), std::end(kDashes), i) != std::end(kDashes);
    const unsigned char c = static_cast<unsigned char>(out[i]);
    if (dash ? c != '-' : !std::isxdigit(c)) return invalid();
    out[i] = static_cast<char>(std::tolower(c));
  }
  return out;
}

}  // namespace keywarden::keys
