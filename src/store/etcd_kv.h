// EtcdKv: the etcd v3 KV client the etcd stores share (the KEK store of managed mode, the DEK
// store of user-managed mode): one gRPC channel per member, failover and retries within one
// deadline per operation (src/store/etcd_kv.cc explains why). Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "etcd.grpc.pb.h"
#include "keywarden/store/etcd_kek_store.h"

namespace keywarden::store {

class EtcdKv {
 public:
  // Connect validates `options` and creates the channels (it does not wait for a member:
  // call Ping). INVALID_ARGUMENT for bad options or unreadable TLS files.
  static absl::StatusOr<std::unique_ptr<EtcdKv>> Connect(const EtcdOptions& options);

  // Range / Txn / DeleteRange run the RPC with failover within the timeout; UNAVAILABLE when no
  // member answers in time; etcd's own refusals with their code. Retrying is safe only for
  // idempotent requests (reads, and transactions guarded by a compare).
  absl::Status Range(const etcdserverpb::RangeRequest& request,
                     etcdserverpb::RangeResponse* response);
  absl::Status Txn(const etcdserverpb::TxnRequest& request, etcdserverpb::TxnResponse* response);
  // Ping checks that some member answers (a serializable, count-only Range of `key`).
  absl::Status Ping(const std::string& key);

  // description is "etcd://host:port,host:port" (no credentials).
  const std::string& description() const { return description_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 private:
  EtcdKv(std::vector<std::string> endpoints, std::vector<std::shared_ptr<grpc::Channel>> channels,
         std::chrono::milliseconds timeout);
  template <typename Rpc>
  absl::Status Call(std::string_view operation, Rpc&& rpc);

  const std::vector<std::string> endpoints_;
  const std::string description_;
  const std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> stubs_;  // written only in the ctor
  const std::chrono::milliseconds timeout_;
  // preferred_ is the member that answered last; calls start there.
  std::atomic<size_t> preferred_{0};
};

// Wipe helpers for responses that carry secret values.
void WipeEtcdRange(etcdserverpb::RangeResponse* response);
void WipeEtcdTxn(etcdserverpb::TxnResponse* response);

}  // namespace keywarden::store
