// KekStore on etcd (src/store/etcd_kv.h does the talking): the record lives at
// prefix + "v1/kek"; InitializeOrLoad is one compare-and-swap transaction.
#include "keywarden/store/etcd_kek_store.h"

#include <string_view>
#include <utility>

#include "keywarden/status.h"
#include "src/store/etcd_kv.h"

namespace keywarden::store {
namespace {

constexpr std::string_view kRecordKeySuffix = "v1/kek";

// Security: protobuf keeps `bytes` fields in std::string, so the encoded record (KEK included)
// passes through ordinary heap strings on its way to and from etcd; they are wiped before they
// are destroyed. Copies that gRPC and protobuf make internally are out of reach; they live only
// for the duration of a call.
// OnExit runs a function when it goes out of scope (wipes on every return path).
template <typename F>
class OnExit {
 public:
  explicit OnExit(F f) : f_(std::move(f)) {}
  ~OnExit() { f_(); }
  OnExit(const OnExit&) = delete;
  OnExit& operator=(const OnExit&) = delete;

 private:
  F f_;
};

std::span<const uint8_t> AsBytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

void WipeString(std::string* s) { SecureWipe(*s); }

class EtcdKekStore final : public KekStore {
 public:
  EtcdKekStore(std::unique_ptr<EtcdKv> kv, std::string key)
      : kv_(std::move(kv)), key_(std::move(key)) {}

  absl::StatusOr<KekRecord> Load() override {
    etcdserverpb::RangeRequest request;
    request.set_key(key_);  // linearizable (serializable = false)
    etcdserverpb::RangeResponse response;
    OnExit wipe([&response] { WipeEtcdRange(&response); });
    RETURN_IF_ERROR(kv_->Range(request, &response));
    if (response.kvs_size() == 0) {
      return NotFoundError("no KEK record in {} (key {})", kv_->description(), Printable(key_));
    }
    return Decode(response.kvs(0).value());
  }

  absl::StatusOr<KekRecord> InitializeOrLoad(const KekRecord& record) override {
    if (record.kek.size() != kKekSize || record.measurement_salt.size() != kMeasurementSaltSize) {
      return InvalidArgumentError(
          "KEK record to store has a {}-byte KEK and a {}-byte salt; "
          "want {} and {}",
          record.kek.size(), record.measurement_salt.size(), kKekSize, kMeasurementSaltSize);
    }
    const SecretBytes encoded = EncodeKekRecord(record);
    const std::span<const uint8_t> encoded_bytes = encoded.Reveal(InsecureSecretAccess::Get());

    // One transaction: if the key was never created (create revision 0), put the record;
    // otherwise read what is there.
    etcdserverpb::TxnRequest request;
    etcdserverpb::Compare* compare = request.add_compare();
    compare->set_result(etcdserverpb::Compare::EQUAL);
    compare->set_target(etcdserverpb::Compare::CREATE);
    compare->set_key(key_);
    compare->set_create_revision(0);
    etcdserverpb::PutRequest* put = request.add_success()->mutable_request_put();
    put->set_key(key_);
    request.add_failure()->mutable_request_range()->set_key(key_);
    etcdserverpb::TxnResponse response;
    OnExit wipe([put, &response] {
      WipeString(put->mutable_value());
      WipeEtcdTxn(&response);
    });
    put->set_value(reinterpret_cast<const char*>(encoded_bytes.data()), encoded_bytes.size());

    RETURN_IF_ERROR(kv_->Txn(request, &response));
    if (response.succeeded()) return DecodeKekRecord(encoded_bytes);
    if (response.responses_size() != 1 || !response.responses(0).has_response_range() ||
        response.responses(0).response_range().kvs_size() != 1) {
      return InternalError("{} answered the KEK record transaction with an unexpected result",
                           kv_->description());
    }
    return Decode(response.responses(0).response_range().kvs(0).value());
  }

  std::string Describe() const override { return kv_->description(); }

  absl::Status Ping() { return kv_->Ping(key_); }

 private:
  absl::StatusOr<KekRecord> Decode(const std::string& value) const {
    absl::StatusOr<KekRecord> record = DecodeKekRecord(AsBytes(value));
    if (!record.ok()) {
      return MakeStatus(record.status().code(), "{} key {}: {}", kv_->description(),
                        Printable(key_), StatusMessage(record.status()));
    }
    return record;
  }

  const std::unique_ptr<EtcdKv> kv_;
  const std::string key_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KekStore>> NewEtcdKekStore(const EtcdOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<EtcdKv> kv, EtcdKv::Connect(options));
  auto store =
      std::make_unique<EtcdKekStore>(std::move(kv), options.prefix + std::string(kRecordKeySuffix));
  RETURN_IF_ERROR(store->Ping());
  return store;
}

}  // namespace keywarden::store
