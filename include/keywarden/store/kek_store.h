// The cluster store of managed mode: where the key service keeps the KEK and the measurement
// salt (never the master secret). Embedded SQLite on one machine, etcd for several.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::store {

// KekRecord is the managed-mode cluster record (docs/formats/kek-record.md).
struct KekRecord {
  SecretBytes kek;                        // 32 bytes: HKDF-Extract(salt, masterKey)
  std::vector<uint8_t> measurement_salt;  // 32 bytes, public
};

inline constexpr size_t kKekSize = 32;
inline constexpr size_t kMeasurementSaltSize = 32;
inline constexpr size_t kKekRecordSize = 4 + kKekSize + kMeasurementSaltSize;

// EncodeKekRecord returns the record's stored bytes: "KWK1" || kek || measurement salt.
SecretBytes EncodeKekRecord(const KekRecord& record);
// DecodeKekRecord parses stored bytes; DATA_LOSS for anything but a well-formed record (wrong
// size, wrong magic). The message never quotes the bytes.
absl::StatusOr<KekRecord> DecodeKekRecord(std::span<const uint8_t> bytes);
// SameKekRecord compares two records in constant time (for the KEK).
bool SameKekRecord(const KekRecord& a, const KekRecord& b);
// KekFingerprint returns a short public identifier of a KEK for logs and metrics: the first 8
// bytes of SHA-256("keywarden kek fingerprint" || kek) in hex. It reveals nothing usable.
std::string KekFingerprint(const SecretBytes& kek);

// KekStore is a place that holds at most one KekRecord. Implementations are thread-safe.
class KekStore {
 public:
  virtual ~KekStore() = default;

  // Load returns the stored record; NOT_FOUND when the store holds none; UNAVAILABLE when the
  // store cannot be reached within its timeout; DATA_LOSS when the stored bytes are malformed.
  virtual absl::StatusOr<KekRecord> Load() = 0;

  // InitializeOrLoad stores `record` if the store holds none, as one atomic compare-and-swap,
  // and returns the record the store holds afterwards: `record`, or the one another writer
  // stored first (the caller decides what a different record means). Errors as Load.
  virtual absl::StatusOr<KekRecord> InitializeOrLoad(const KekRecord& record) = 0;

  // Describe names the store for logs and errors, without credentials
  // (e.g. "sqlite:///var/lib/keywarden/keywarden.db", "etcd://10.0.0.1:2379,10.0.0.2:2379").
  virtual std::string Describe() const = 0;
};

// StoreOptions tune how a store is reached.
struct StoreOptions {
  // timeout bounds each store operation (connect included); past it the call is UNAVAILABLE.
  std::chrono::milliseconds timeout{2000};
};

// StoreUri is a parsed store URI.
struct StoreUri {
  enum class Kind { kSqlite, kEtcd } kind = Kind::kSqlite;
  std::string sqlite_path;                  // kSqlite
  std::vector<std::string> etcd_endpoints;  // kEtcd: "host:port"
  std::string etcd_ca, etcd_cert, etcd_key;
  std::string etcd_prefix = "/keywarden/";
};

// ParseStoreUri parses a store URI (the forms below) without opening anything;
// INVALID_ARGUMENT with a message that quotes the URI safely.
absl::StatusOr<StoreUri> ParseStoreUri(std::string_view uri);

// OpenKekStore opens the store a URI names:
//   sqlite://PATH                      embedded SQLite database file (created if absent)
//   etcd://HOST:PORT[,HOST:PORT...][?ca=FILE&cert=FILE&key=FILE&prefix=/keywarden/]
// INVALID_ARGUMENT for a malformed URI; UNAVAILABLE when an etcd store cannot be reached at
// all within the timeout; FAILED_PRECONDITION when a SQLite file cannot be opened.
absl::StatusOr<std::unique_ptr<KekStore>> OpenKekStore(std::string_view uri,
                                                       const StoreOptions& options = {});

}  // namespace keywarden::store
