#include "keywarden/service/key_service.h"

#include "keywarden/crypto/ed25519.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/net/registry.h"
#include "keywarden/status.h"

namespace keywarden::service {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<KeyService>> KeyService::Start(
    std::unique_ptr<store::KekStore> store, store::KekRecord record, Options options) {
  if (record.measurement_salt.size() != store::kMeasurementSaltSize) {
    return InvalidArgumentError("KEK record has a {}-byte measurement salt; want {}",
                                record.measurement_salt.size(), store::kMeasurementSaltSize);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<keys::Kek> kek, keys::Kek::FromBytes(record.kek));
  ASSIGN_OR_RETURN(SecretBytes measurement_secret, kek->MeasurementSecret());
  ASSIGN_OR_RETURN(keys::ClusterId cluster_id,
                   keys::DeriveClusterId(measurement_secret, record.measurement_salt));
  std::unique_ptr<KeyService> service(new KeyService(
      std::move(store), std::move(record), std::move(kek), cluster_id, std::move(options)));
  service->checker_ = std::thread([s = service.get()] { s->CheckerLoop(); });
  return service;
}

KeyService::KeyService(std::unique_ptr<store::KekStore> store, store::KekRecord record,
                       std::unique_ptr<keys::Kek> kek, keys::ClusterId cluster_id, Options options)
    : store_(std::move(store)),
      record_(std::move(record)),
      kek_(std::move(kek)),
      cluster_id_(cluster_id),
      fingerprint_(store::KekFingerprint(record_.kek)),
      options_(std::move(options)),
      last_confirmed_ns_(NowNs()) {}

KeyService::~KeyService() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (checker_.joinable()) checker_.join();
}

absl::StatusOr<SecretBytes> KeyService::GetDataKey(std::string_view id, uint64_t length) const {
  if (id.empty()) return InvalidArgumentError("data_key_id is empty");
  if (id.size() > kMaxDataKeyIdSize) {
    return InvalidArgumentError("data_key_id is {} bytes; at most {} are allowed", id.size(),
                                kMaxDataKeyIdSize);
  }
  if (length < 1 || length > kMaxDataKeyLength) {
    return InvalidArgumentError("length {} is not in [1, {}]", length, kMaxDataKeyLength);
  }
  RETURN_IF_ERROR(CheckServing());
  return kek_->DeriveDek(id, static_cast<size_t>(length));
}

absl::Status KeyService::CheckServing() const {
  switch (health_.load(std::memory_order_acquire)) {
    case StoreHealth::kMismatch:
      return FailedPreconditionError(
          "the cluster store no longer holds this replica's KEK (fingerprint {}); refusing to "
          "serve keys until restarted",
          fingerprint_);
    case StoreHealth::kStale:
    case StoreHealth::kConfirmed:
      break;
  }
  const int64_t age_ns = NowNs() - last_confirmed_ns_.load(std::memory_order_acquire);
  if (age_ns > std::chrono::nanoseconds(options_.stale_after).count()) {
    absl::Status unavailable =
        UnavailableError("cluster store {} has not confirmed the KEK for {} ms", store_->Describe(),
                         age_ns / 1000000);
    if (health_.load(std::memory_order_acquire) == StoreHealth::kConfirmed) {
      SetHealth(StoreHealth::kStale, unavailable);
    }
    return unavailable;
  }
  return absl::OkStatus();
}

absl::StatusOr<SecretBytes> KeyService::NetAuthoritySeed() const {
  RETURN_IF_ERROR(CheckServing());
  // The KEK is the HKDF PRK (DESIGN.md §2); this is exactly what net::NewAuthority expands.
  ASSIGN_OR_RETURN(std::unique_ptr<crypto::HkdfSha256Expander> expander,
                   crypto::HkdfSha256Expander::New(kek_->bytes()));
  const std::string_view info = net::kAuthorityInfo;
  return expander->Expand({reinterpret_cast<const uint8_t*>(info.data()), info.size()},
                          crypto::kEd25519SeedSize);
}

void KeyService::CheckStoreNow() {
  absl::StatusOr<store::KekRecord> stored = store_->Load();
  if (!stored.ok() && options_.on_store_error) options_.on_store_error(stored.status());
  if (stored.ok() && store::SameKekRecord(*stored, record_)) {
    last_confirmed_ns_.store(NowNs(), std::memory_order_release);
    SetHealth(StoreHealth::kConfirmed, {});
    return;
  }
  if (stored.ok() || stored.status().code() == absl::StatusCode::kNotFound ||
      stored.status().code() == absl::StatusCode::kDataLoss) {
    // Security: never switch keys under a running replica. A different (or vanished) record
    // means the cluster was re-initialized or tampered with; an operator must look.
    SetHealth(StoreHealth::kMismatch,
              stored.ok() ? FailedPreconditionError("store holds a different KEK (fingerprint {})",
                                                    store::KekFingerprint(stored->kek))
                          : stored.status());
    return;
  }
  const int64_t age_ns = NowNs() - last_confirmed_ns_.load(std::memory_order_acquire);
  if (age_ns > std::chrono::nanoseconds(options_.stale_after).count()) {
    SetHealth(StoreHealth::kStale, stored.status());
  }
}

void KeyService::SetHealth(StoreHealth health, const absl::Status& reason) const {
  StoreHealth old = health_.load(std::memory_order_acquire);
  // Never leave kMismatch; otherwise move to `health` if nobody else changed it meanwhile.
  do {
    if (old == StoreHealth::kMismatch || old == health) return;
  } while (!health_.compare_exchange_weak(old, health, std::memory_order_acq_rel));
  if (options_.on_health_change) options_.on_health_change(health, reason);
}

void KeyService::CheckerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stopping_) {
    if (wake_.wait_for(lock, options_.check_interval, [this] { return stopping_; })) break;
    lock.unlock();
    CheckStoreNow();
    lock.lock();
  }
}

}  // namespace keywarden::service
