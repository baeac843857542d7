// The key service's user-managed mode (docs/byok.md): GetDataKey from a DEK store and a KEK
// provider, with a bounded, expiring cache of unwrapped DEKs in locked memory.
#include "keywarden/byok/user_managed.h"

#include <list>
#include <mutex>
#include <unordered_map>

#include "keywarden/crypto/random.h"
#include "keywarden/service/audit.h"
#include "keywarden/status.h"

namespace keywarden::byok {
namespace {

constexpr size_t kMaxIdSize = 1024;

// DekCache keeps up to `capacity` DEKs, each until `ttl` after it was put; least recently used
// out first. Thread-safe.
class DekCache {
 public:
  DekCache(size_t capacity, std::chrono::milliseconds ttl) : capacity_(capacity), ttl_(ttl) {}

  bool enabled() const { return capacity_ > 0 && ttl_.count() > 0; }

  std::optional<SecretBytes> Get(std::string_view id) {
    if (!enabled()) return std::nullopt;
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = index_.find(std::string(id));
    if (it == index_.end()) return std::nullopt;
    if (std::chrono::steady_clock::now() >= it->second->expires) {
      order_.erase(it->second);
      index_.erase(it);
      return std::nullopt;
    }
    order_.splice(order_.begin(), order_, it->second);
    return it->second->dek.Clone();
  }

  void Put(std::string_view id, const SecretBytes& dek) {
    if (!enabled()) return;
    std::lock_guard<std::mutex> lock(mu_);
    const std::string key(id);
    if (const auto it = index_.find(key); it != index_.end()) {
      order_.erase(it->second);
      index_.erase(it);
    }
    while (order_.size() >= capacity_) {
      index_.erase(order_.back().id);
      order_.pop_back();
    }
    order_.push_front(Entry{key, dek.Clone(), std::chrono::steady_clock::now() + ttl_});
    index_.emplace(key, order_.begin());
  }

 private:
  struct Entry {
    std::string id;
    SecretBytes dek;
    std::chrono::steady_clock::time_point expires;
  };
  const size_t capacity_;
  const std::chrono::milliseconds ttl_;
  std::mutex mu_;
  std::list<Entry> order_;  // most recently used first; guarded by mu_
  std::unordered_map<std::string, std::list<Entry>::iterator> index_;  // guarded by mu_
};

class UserManagedKeysImpl : public UserManagedKeys {
 public:
  UserManagedKeysImpl(std::unique_ptr<KekProvider> provider, std::unique_ptr<DekStore> store,
                      UserManagedOptions options,
                      std::vector<std::unique_ptr<KekProvider>> previous)
      : provider_(std::move(provider)),
        previous_(std::move(previous)),
        store_(std::move(store)),
        audit_(options.audit),
        cache_(options.cache_entries, options.cache_ttl) {}

  absl::StatusOr<SecretBytes> GetDataKey(std::string_view id, size_t length) override {
    if (id.empty() || id.size() > kMaxIdSize) {
      return InvalidArgumentError("data_key_id must be 1 to {} bytes, not {}", kMaxIdSize,
                                  id.size());
    }
    if (length == 0 || length > kMaxDekSize) {
      return InvalidArgumentError("length must be 1 to {}, not {}", kMaxDekSize, length);
    }
    if (std::optional<SecretBytes> cached = cache_.Get(id)) {
      RETURN_IF_ERROR(CheckLength(id, *cached, length));
      return *std::move(cached);
    }
    ASSIGN_OR_RETURN(std::optional<StoredDek> stored, store_->Get(id));
    if (stored) return UnwrapStored(id, stored->blob, length);

    // First request for this id (here): make a DEK, wrap it, and let the store decide.
    ASSIGN_OR_RETURN(SecretBytes dek, crypto::RandomSecret(length));
    absl::StatusOr<std::vector<uint8_t>> blob = WrapDek(*provider_, id, dek);
    if (!blob.ok()) {
      RETURN_IF_ERROR(Audit("wrap", id, false, StatusMessage(blob.status())));
      return blob.status();
    }
    RETURN_IF_ERROR(
        Audit("wrap", id, true,
              fmt::format("wrapped a new {}-byte DEK under KEK {}", length, provider_->kek_id())));
    ASSIGN_OR_RETURN(StoredDek entry, store_->CreateIfAbsent(id, *blob));
    if (entry.blob != *blob) {
      // Another request or replica stored its DEK first: that one is the DEK of this id.
      RETURN_IF_ERROR(Audit("create", id, false,
                            "another request or replica created this key id first; using its "
                            "DEK"));
      return UnwrapStored(id, entry.blob, length);
    }
    RETURN_IF_ERROR(
        Audit("create", id, true,
              fmt::format("stored a new {}-byte DEK in {}", length, store_->Describe())));
    cache_.Put(id, dek);
    return dek;
  }

  std::string Describe() const override {
    std::string previous;
    for (const auto& p : previous_) previous += fmt::format(", previous KEK {}", p->kek_id());
    return fmt::format("user-managed keys: KEK {} ({}){}, DEK store {}", provider_->kek_id(),
                       provider_->Describe(), previous, store_->Describe());
  }

 private:
  absl::StatusOr<SecretBytes> UnwrapStored(std::string_view id, std::span<const uint8_t> blob,
                                           size_t length) {
    KekProvider& provider = ProviderFor(blob);
    absl::StatusOr<SecretBytes> dek = UnwrapDek(provider, id, blob);
    if (!dek.ok()) {
      RETURN_IF_ERROR(Audit("unwrap", id, false, StatusMessage(dek.status())));
      return dek.status();
    }
    RETURN_IF_ERROR(
        Audit("unwrap", id, true,
              fmt::format("unwrapped under {}KEK {}",
                          &provider == provider_.get() ? "" : "the previous ", provider.kek_id())));
    cache_.Put(id, *dek);
    RETURN_IF_ERROR(CheckLength(id, *dek, length));
    return dek;
  }

  // ProviderFor returns the previous provider whose KEK the blob names, else the current one
  // (whose UnwrapDek then reports a malformed blob or a KEK mismatch).
  KekProvider& ProviderFor(std::span<const uint8_t> blob) const {
    if (previous_.empty()) return *provider_;
    const absl::StatusOr<WrappedDek> decoded = DecodeWrappedDek(blob);
    if (decoded.ok() && decoded->kek_id != provider_->kek_id()) {
      for (const auto& p : previous_) {
        if (p->kek_id() == decoded->kek_id) return *p;
      }
    }
    return *provider_;
  }

  static absl::Status CheckLength(std::string_view id, const SecretBytes& dek, size_t length) {
    if (dek.size() != length) {
      return InvalidArgumentError(
          "the DEK of key id \"{}\" is {} bytes; it was created by a request for that length "
          "and cannot be asked for with length {}",
          Printable(id), dek.size(), length);
    }
    return absl::OkStatus();
  }

  // Audit records one decision; a failed write fails the request (fail closed), but only for
  // allowed decisions: a refusal is returned as such either way.
  absl::Status Audit(std::string_view event, std::string_view id, bool allowed,
                     std::string_view reason) {
    if (audit_ == nullptr) return absl::OkStatus();
    service::AuditRecord record;
    record.event = std::string(event);
    record.key_id = Printable(id, kMaxIdSize);
    record.allowed = allowed;
    record.reason = std::string(reason);
    const absl::Status written = audit_->Append(record);
    if (!written.ok() && allowed) {
      return UnavailableError("cannot write the audit log, so no key is released: {}",
                              StatusMessage(written));
    }
    return absl::OkStatus();
  }

  const std::unique_ptr<KekProvider> provider_;
  const std::vector<std::unique_ptr<KekProvider>> previous_;
  const std::unique_ptr<DekStore> store_;
  service::AuditLog* const audit_;
  DekCache cache_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<UserManagedKeys>> UserManagedKeys::New(
    std::unique_ptr<KekProvider> provider, std::unique_ptr<DekStore> store,
    UserManagedOptions options, std::vector<std::unique_ptr<KekProvider>> previous) {
  if (provider == nullptr || store == nullptr) {
    return InvalidArgumentError("user-managed keys need a KEK provider and a DEK store");
  }
  for (const auto& p : previous) {
    if (p == nullptr) return InvalidArgumentError("a previous KEK provider is null");
    if (p->kek_id() == provider->kek_id()) {
      return InvalidArgumentError("the previous KEK {} is the current KEK", p->kek_id());
    }
  }
  return std::unique_ptr<UserManagedKeys>(
      new UserManagedKeysImpl(std::move(provider), std::move(store), options, std::move(previous)));
}

}  // namespace keywarden::byok
