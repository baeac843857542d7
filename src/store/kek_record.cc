#include <algorithm>
#include <cstring>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"
#include "keywarden/store/kek_store.h"

namespace keywarden::store {
namespace {

constexpr char kMagic[4] = {'K', 'W', 'K', '1'};

}  // namespace

SecretBytes EncodeKekRecord(const KekRecord& record) {
  SecretBytes out(kKekRecordSize);
  const auto token = InsecureSecretAccess::Get();
  uint8_t* p = out.MutableReveal(token).data();
  std::memcpy(p, kMagic, sizeof(kMagic));
  const auto kek = record.kek.Reveal(token);
  std::memcpy(p + sizeof(kMagic), kek.data(), std::min(kek.size(), kKekSize));
  std::memcpy(p + sizeof(kMagic) + kKekSize, record.measurement_salt.data(),
              std::min(record.measurement_salt.size(), kMeasurementSaltSize));
  return out;
}

absl::StatusOr<KekRecord> DecodeKekRecord(std::span<const uint8_t> bytes) {
  if (bytes.size() != kKekRecordSize) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "stored KEK record is {} bytes; a valid record has {}", bytes.size(),
                      kKekRecordSize);
  }
  if (!std::equal(std::begin(kMagic), std::end(kMagic), bytes.begin())) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "stored KEK record has an unknown format (bad magic)");
  }
  KekRecord record;
  record.kek = SecretBytes(bytes.subspan(sizeof(kMagic), kKekSize));
  const auto salt = bytes.subspan(sizeof(kMagic) + kKekSize, kMeasurementSaltSize);
  record.measurement_salt.assign(salt.begin(), salt.end());
  return record;
}

bool SameKekRecord(const KekRecord& a, const KekRecord& b) {
  const auto token = InsecureSecretAccess::Get();
  const bool same_kek = crypto::ConstantTimeEquals(a.kek.Reveal(token), b.kek.Reveal(token));
  return same_kek && a.measurement_salt == b.measurement_salt;
}

std::string KekFingerprint(const SecretBytes& kek) {
  static constexpr std::string_view kLabel = "keywarden kek fingerprint";
  const auto digest = crypto::Sha256(
      {std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kLabel.data()), kLabel.size()),
       kek.Reveal(InsecureSecretAccess::Get())});
  return crypto::HexEncode(std::span<const uint8_t>(digest).first(8));
}

}  // namespace keywarden::store
