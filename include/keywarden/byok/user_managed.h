// The key service's user-managed mode: GetDataKey(id, length) served from a DEK store and a KEK
// provider (`keywarden serve --kms URI --storage URI`), same API as managed mode.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::service {
class AuditLog;
}

namespace keywarden::byok {

struct UserManagedOptions {
  // Unwrapped DEKs are cached in locked memory (SecretBytes), at most cache_entries of them
  // (least recently used out first), each for at most cache_ttl after it was unwrapped or
  // created; 0 entries or a 0 TTL = no cache (unwrap at the provider per request). Defaults:
  // 4096 entries, 5 minutes (docs/byok.md); 4096 DEKs of 32 bytes are 128 KiB of locked memory.
  size_t cache_entries = 4096;
  std::chrono::milliseconds cache_ttl{std::chrono::minutes(5)};
  // audit, if set, records every decision taken at the provider or store (never key bytes):
  // "wrap" (a new DEK wrapped, or the provider's refusal), "create" (allowed: this request's DEK
  // was stored; refused: another writer's came first and is used), "unwrap" (a stored DEK
  // unwrapped, or why not). Answers from the cache are not recorded again. node is "", key_id
  // the DEK's id. A failed audit write fails the request with UNAVAILABLE (fail closed).
  // Not owned; must outlive the UserManagedKeys.
  service::AuditLog* audit = nullptr;
};

// UserManagedKeys answers GetDataKey:
//   - the store holds a blob for `id`: unwrap it at the provider (or take it from the cache);
//   - it holds none: make a random DEK of `length` bytes, wrap it, CreateIfAbsent; if another
//     request or replica stored one first, unwrap and return *that* one. No two callers ever get
//     different keys for one id.
// INVALID_ARGUMENT for an empty id, an id over 1024 bytes, a length outside 1..kMaxDekSize, or a
// length other than the stored DEK's; UNAVAILABLE when the provider or store is unreachable (and
// then no DEK is created); the provider's PERMISSION_DENIED / the binding checks of UnwrapDek.
// Thread-safe.
//
// During a KEK rotation (`keywarden kek rotate`, which rewraps entry by entry while the service
// keeps serving) the store holds blobs under both KEKs. `previous` are KEK providers that
// stored blobs may still be wrapped under: a blob is unwrapped at the provider whose kek_id() it
// names, among `provider` and `previous`; new DEKs are always wrapped by `provider`. A blob
// under a KEK that is neither is refused (FAILED_PRECONDITION naming both).
class UserManagedKeys {
 public:
  static absl::StatusOr<std::unique_ptr<UserManagedKeys>> New(
      std::unique_ptr<KekProvider> provider, std::unique_ptr<DekStore> store,
      UserManagedOptions options = {}, std::vector<std::unique_ptr<KekProvider>> previous = {});
  virtual ~UserManagedKeys() = default;
  virtual absl::StatusOr<SecretBytes> GetDataKey(std::string_view id, size_t length) = 0;
  virtual std::string Describe() const = 0;
};

}  // namespace keywarden::byok
