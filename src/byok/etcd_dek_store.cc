#include <charconv>
#include <utility>

#include "keywarden/byok/etcd.h"
#include "keywarden/status.h"
#include "src/store/etcd_kv.h"

namespace keywarden::byok {
namespace {

// Keys are prefix + "key-" + id (DESIGN.md §3: a DEK is stored under "key-" + id). '.' follows
// '-', so [prefix + "key-", prefix + "key.") is exactly the DEKs.
constexpr std::string_view kKeyTag = "key-";
constexpr std::string_view kKeyTagEnd = "key.";
constexpr int64_t kListPage = 500;

absl::StatusOr<int64_t> ParseVersion(std::string_view version) {
  int64_t value = 0;
  const auto [end, error] = std::from_chars(version.data(), version.data() + version.size(), value);
  if (error != std::errc() || end != version.data() + version.size() || value <= 0) {
    return InvalidArgumentError("\"{}\" is not an etcd DEK version", Printable(version));
  }
  return value;
}

class EtcdDekStore final : public DekStore {
 public:
  EtcdDekStore(std::unique_ptr<store::EtcdKv> kv, std::string prefix)
      : kv_(std::move(kv)), prefix_(std::move(prefix)) {}

  absl::StatusOr<std::optional<StoredDek>> Get(std::string_view id) override {
    RETURN_IF_ERROR(CheckId(id));
    etcdserverpb::RangeRequest request;
    request.set_key(Key(id));
    etcdserverpb::RangeResponse response;
    RETURN_IF_ERROR(kv_->Range(request, &response));
    if (response.kvs_size() == 0) return std::nullopt;
    return Entry(response.kvs(0));
  }

  absl::StatusOr<StoredDek> CreateIfAbsent(std::string_view id,
                                           std::span<const uint8_t> blob) override {
    RETURN_IF_ERROR(CheckId(id));
    const std::string key = Key(id);
    // If the key was never created, put the blob; otherwise read what is there. A retry after a
    // success the client did not see fails the compare and reads back this blob.
    etcdserverpb::TxnRequest request;
    etcdserverpb::Compare* compare = request.add_compare();
    compare->set_result(etcdserverpb::Compare::EQUAL);
    compare->set_target(etcdserverpb::Compare::CREATE);
    compare->set_key(key);
    compare->set_create_revision(0);
    etcdserverpb::PutRequest* put = request.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_value(reinterpret_cast<const char*>(blob.data()), blob.size());
    request.add_failure()->mutable_request_range()->set_key(key);
    etcdserverpb::TxnResponse response;
    RETURN_IF_ERROR(kv_->Txn(request, &response));
    if (response.succeeded()) {
      // The put's mod_revision is the transaction's revision.
      return StoredDek{std::vector<uint8_t>(blob.begin(), blob.end()),
                       std::to_string(response.header().revision())};
    }
    if (response.responses_size() != 1 || !response.responses(0).has_response_range() ||
        response.responses(0).response_range().kvs_size() != 1) {
      return InternalError("{} answered a DEK transaction with an unexpected result",
                           kv_->description());
    }
    return Entry(response.responses(0).response_range().kvs(0));
  }

  absl::Status ReplaceIf(std::string_view id, std::string_view version,
                         std::span<const uint8_t> blob) override {
    RETURN_IF_ERROR(CheckId(id));
    ASSIGN_OR_RETURN(int64_t revision, ParseVersion(version));
    const std::string key = Key(id);
    etcdserverpb::TxnRequest request;
    etcdserverpb::Compare* compare = request.add_compare();
    compare->set_result(etcdserverpb::Compare::EQUAL);
    compare->set_target(etcdserverpb::Compare::MOD);
    compare->set_key(key);
    compare->set_mod_revision(revision);
    etcdserverpb::PutRequest* put = request.add_success()->mutable_request_put();
    put->set_key(key);
    put->set_value(reinterpret_cast<const char*>(blob.data()), blob.size());
    etcdserverpb::RangeRequest* range = request.add_failure()->mutable_request_range();
    range->set_key(key);
    range->set_count_only(true);
    etcdserverpb::TxnResponse response;
    RETURN_IF_ERROR(kv_->Txn(request, &response));
    if (response.succeeded()) return absl::OkStatus();
    const bool exists = response.responses_size() == 1 &&
                        response.responses(0).has_response_range() &&
                        response.responses(0).response_range().count() > 0;
    if (!exists) return NotFoundError("{}: no DEK stored for \"{}\"", Describe(), Printable(id));
    return MakeStatus(absl::StatusCode::kAborted,
                      "{}: the DEK for \"{}\" changed since version {} was read", Describe(),
                      Printable(id), version);
  }

  absl::Status List(const std::function<absl::Status(std::string_view id)>& visit) override {
    std::string start = prefix_ + std::string(kKeyTag);
    const std::string end = prefix_ + std::string(kKeyTagEnd);
    for (;;) {
      etcdserverpb::RangeRequest request;
      request.set_key(start);
      request.set_range_end(end);
      request.set_keys_only(true);
      request.set_limit(kListPage);
      request.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
      request.set_sort_target(etcdserverpb::RangeRequest::KEY);
      etcdserverpb::RangeResponse response;
      RETURN_IF_ERROR(kv_->Range(request, &response));
      for (const etcdserverpb::KeyValue& kv : response.kvs()) {
        const std::string_view key = kv.key();
        RETURN_IF_ERROR(visit(key.substr(prefix_.size() + kKeyTag.size())));
      }
      if (!response.more() || response.kvs_size() == 0) return absl::OkStatus();
      start = response.kvs(response.kvs_size() - 1).key();
      start.push_back('\0');  // the next key after the last one seen
    }
  }

  std::string Describe() const override { return kv_->description() + prefix_; }

  absl::Status Ping() { return kv_->Ping(prefix_ + std::string(kKeyTag)); }

 private:
  std::string Key(std::string_view id) const {
    return prefix_ + std::string(kKeyTag) + std::string(id);
  }

  static absl::Status CheckId(std::string_view id) {
    if (id.empty() || id.size() > 1024) {
      return InvalidArgumentError("a DEK id is 1 to 1024 bytes, not {}", id.size());
    }
    return absl::OkStatus();
  }

  static StoredDek Entry(const etcdserverpb::KeyValue& kv) {
    return StoredDek{std::vector<uint8_t>(kv.value().begin(), kv.value().end()),
                     std::to_string(kv.mod_revision())};
  }

  const std::unique_ptr<store::EtcdKv> kv_;
  const std::string prefix_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DekStore>> NewEtcdDekStore(store::EtcdOptions options) {
  if (options.prefix.empty() || options.prefix == "/keywarden/") {
    options.prefix = kDefaultEtcdDekPrefix;
  }
  ASSIGN_OR_RETURN(std::unique_ptr<store::EtcdKv> kv, store::EtcdKv::Connect(options));
  auto dek_store = std::make_unique<EtcdDekStore>(std::move(kv), options.prefix);
  RETURN_IF_ERROR(dek_store->Ping());
  return dek_store;
}

void RegisterEtcd() {
  RegisterDekStore("etcd",
                   [](const UriParams& params,
                      const RemoteOptions& remote) -> absl::StatusOr<std::unique_ptr<DekStore>> {
                     RETURN_IF_ERROR(CheckUriParams(
                         params, {"endpoints"}, {"prefix", "ca", "cert", "key"}, "storage://etcd"));
                     store::EtcdOptions options;
                     const std::string& endpoints = params.at("endpoints");
                     size_t start = 0;
                     while (start <= endpoints.size()) {
                       const size_t comma = endpoints.find(',', start);
                       const std::string endpoint = endpoints.substr(
                           start, comma == std::string::npos ? std::string::npos : comma - start);
                       RETURN_IF_ERROR(store::ValidateEtcdEndpoint(endpoint));
                       options.endpoints.push_back(endpoint);
                       if (comma == std::string::npos) break;
                       start = comma + 1;
                     }
                     auto get = [&params](const char* name) {
                       auto it = params.find(name);
                       return it == params.end() ? std::string() : it->second;
                     };
                     options.prefix = get("prefix");
                     if (!options.prefix.empty() && options.prefix.back() != '/')
                       options.prefix.push_back('/');
                     options.ca_file = get("ca");
                     options.cert_file = get("cert");
                     options.key_file = get("key");
                     options.store.timeout = remote.timeout;
                     return NewEtcdDekStore(std::move(options));
                   });
}

}  // namespace keywarden::byok
