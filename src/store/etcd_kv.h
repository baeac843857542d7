// EtcdKv: the etcd v3 KV client the etcd stores share (the KEK store of managed mode, the DEK
// store of user-managed mode): one gRPC channel per member, failover and retries within one
// deadline per operation (src/store/etcd_kv.cc explains why). Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
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

  // Put / DeleteRange run with the same failover. A retry after an attempt whose success was
  // not seen writes the same value (or deletes the same key) again: the state is the same, but
  // etcd's history may hold one more event for it.
  absl::Status Put(const etcdserverpb::PutRequest& request, etcdserverpb::PutResponse* response);
  absl::Status DeleteRange(const etcdserverpb::DeleteRangeRequest& request,
                           etcdserverpb::DeleteRangeResponse* response);
  // Compact discards etcd's history before `revision` (KV.Compact); `physical` waits until the
  // members' databases dropped it. OUT_OF_RANGE (etcd's answer) for a revision already
  // compacted or not yet written.
  absl::Status Compact(int64_t revision, bool physical);

  // WatchHandler receives every WatchResponse that carries events, in revision order; it
  // returns false to end the watch.
  using WatchHandler = std::function<bool(const etcdserverpb::WatchResponse&)>;
  // Watch streams the changes to [key, range_end) from `start_revision` (inclusive) through
  // etcd's Watch service (one bidirectional stream, one watcher) until `stop` is set (checked
  // every 50 ms) or `on_events` returns false; then OK. When the stream breaks (the member
  // died, lost its leader: the stream asks for "hasleader"), Watch moves to another member and
  // resumes after the last revision it delivered, so no event is lost or repeated; UNAVAILABLE
  // when no member takes the watch within the timeout. OUT_OF_RANGE when the history from the
  // revision to resume at was compacted away (the message names etcd's compact revision).
  absl::Status Watch(const std::string& key, const std::string& range_end, int64_t start_revision,
                     const WatchHandler& on_events, const std::atomic<bool>& stop);

  // description is "etcd://host:port,host:port" (no credentials).
  const std::string& description() const { return description_; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 private:
  EtcdKv(std::vector<std::string> endpoints, std::vector<std::shared_ptr<grpc::Channel>> channels,
         std::chrono::milliseconds timeout);
  template <typename Rpc>
  absl::Status Call(std::string_view operation, Rpc&& rpc);
  struct WatchAttempt;
  WatchAttempt WatchOnce(size_t index, const std::string& key, const std::string& range_end,
                         int64_t start_revision, bool wait_for_ready,
                         std::chrono::steady_clock::time_point connect_deadline,
                         const WatchHandler& on_events, const std::atomic<bool>& stop);

  const std::vector<std::string> endpoints_;
  const std::string description_;
  const std::vector<std::shared_ptr<grpc::Channel>> channels_;
  std::vector<std::unique_ptr<etcdserverpb::KV::Stub>> stubs_;           // written only in the ctor
  std::vector<std::unique_ptr<etcdserverpb::Watch::Stub>> watch_stubs_;  // written only in the ctor
  const std::chrono::milliseconds timeout_;
  // preferred_ is the member that answered last; calls start there.
  std::atomic<size_t> preferred_{0};
};

// Wipe helpers for responses that carry secret values.
void WipeEtcdRange(etcdserverpb::RangeResponse* response);
void WipeEtcdTxn(etcdserverpb::TxnResponse* response);

}  // namespace keywarden::store
