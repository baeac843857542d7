// KeyService: the managed-mode key service's logic, independent of gRPC. It holds the KEK
// (loaded from the cluster store), answers GetDataKey with DEK(id, length), and keeps checking
// that the store still holds that same KEK.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/store/kek_store.h"

namespace keywarden::service {

// kMaxDataKeyIdSize bounds data_key_id (bytes). Constellation's ids are UUIDs and short names.
inline constexpr size_t kMaxDataKeyIdSize = 1024;
// kMaxDataKeyLength is the largest DEK GetDataKey returns: HKDF-SHA256's limit, 255 * 32.
inline constexpr uint32_t kMaxDataKeyLength = keys::kMaxDekSize;

// StoreHealth is what the service knows about its store, for health checks and metrics.
enum class StoreHealth {
  kConfirmed,  // the store answered recently and holds this service's KEK
  kStale,      // the store has not answered for longer than stale_after: requests fail
  kMismatch,   // the store holds a different KEK (or none): requests fail until restart
};

class KeyService {
 public:
  struct Options {
    // check_interval: how often the store is read back to confirm the KEK.
    std::chrono::milliseconds check_interval{1000};
    // stale_after: how long without a confirmation before requests get UNAVAILABLE. It rides
    // out an etcd leader election; it is short enough that a replica cut off from its store
    // stops serving soon.
    std::chrono::milliseconds stale_after{5000};
    // on_health_change is called (from the checker thread) whenever the health changes.
    std::function<void(StoreHealth, const absl::Status&)> on_health_change;
    // on_store_error is called (from the checker thread) for every failed store read.
    std::function<void(const absl::Status&)> on_store_error;
  };

  // Start takes a store that holds `record` (already loaded or initialized by the caller) and
  // starts the background checker.
  static absl::StatusOr<std::unique_ptr<KeyService>> Start(std::unique_ptr<store::KekStore> store,
                                                           store::KekRecord record,
                                                           Options options);
  ~KeyService();
  KeyService(const KeyService&) = delete;
  KeyService& operator=(const KeyService&) = delete;

  // GetDataKey returns DEK(id, length). INVALID_ARGUMENT for an empty id, an id over
  // kMaxDataKeyIdSize bytes, or a length outside [1, kMaxDataKeyLength]; UNAVAILABLE when the
  // store has not confirmed the KEK within stale_after; FAILED_PRECONDITION when the store holds
  // another KEK. Thread-safe; never touches the store.
  absl::StatusOr<SecretBytes> GetDataKey(std::string_view id, uint64_t length) const;
  // CheckServing returns OK when GetDataKey would serve a valid request, else GetDataKey's
  // UNAVAILABLE or FAILED_PRECONDITION. For services that hold something derived from the KEK
  // (the join service's network authority) and must stop using it when GetDataKey would.
  absl::Status CheckServing() const;
  // NetAuthoritySeed returns the 32-byte Ed25519 seed of the cluster's network authority,
  // HKDF-Expand(KEK, net::kAuthorityInfo, 32) (RFC 5869 §2.3; docs/formats/network-registry.md):
  // net::NewAuthorityFromSeed(seed) is net::NewAuthority(KEK), without the KEK leaving this
  // class. Security: the seed is as secret as a DEK; callers keep it in SecretBytes and drop it
  // once the Authority is made. CheckServing's errors. Thread-safe; never touches the store.
  absl::StatusOr<SecretBytes> NetAuthoritySeed() const;

  StoreHealth health() const { return health_.load(std::memory_order_acquire); }
  // cluster_id is the clusterID derived from the KEK and the record's measurement salt.
  const keys::ClusterId& cluster_id() const { return cluster_id_; }
  // measurement_salt is the record's public measurement salt (32 bytes).
  const std::vector<uint8_t>& measurement_salt() const { return record_.measurement_salt; }
  // kek_fingerprint identifies the KEK in logs (store::KekFingerprint).
  const std::string& kek_fingerprint() const { return fingerprint_; }
  std::string store_description() const { return store_->Describe(); }

  // CheckStoreNow reads the store once and updates the health (the checker thread calls it;
  // tests may too).
  void CheckStoreNow();

 private:
  KeyService(std::unique_ptr<store::KekStore> store, store::KekRecord record,
             std::unique_ptr<keys::Kek> kek, keys::ClusterId cluster_id, Options options);
  void CheckerLoop();
  void SetHealth(StoreHealth health, const absl::Status& reason) const;

  const std::unique_ptr<store::KekStore> store_;
  const store::KekRecord record_;
  const std::unique_ptr<keys::Kek> kek_;
  const keys::ClusterId cluster_id_;
  const std::string fingerprint_;
  const Options options_;

  // mutable: a request that finds the confirmation too old marks the service stale at once.
  mutable std::atomic<StoreHealth> health_{StoreHealth::kConfirmed};
  // Last confirmation, as steady_clock nanoseconds since its epoch.
  std::atomic<int64_t> last_confirmed_ns_;

  std::mutex mu_;
  std::condition_variable wake_;
  bool stopping_ = false;  // guarded by mu_
  std::thread checker_;
};

}  // namespace keywarden::service
