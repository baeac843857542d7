// Integration tests of the network registry's stores (OpenRegistryStore,
// include/keywarden/net/registry.h): SQLite shared by two connections and by two processes, and
// a real 3-member etcd cluster (tests/etcd_cluster.h) — watch order, a killed member, compaction,
// 10,000 entries. No test asserts on timing; waits are bounded only to turn a hang into a
// failure.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "etcd.grpc.pb.h"
#include "keywarden/net/registry.h"
#include "keywarden/status.h"
#include "tests/etcd_cluster.h"
#include "tests/subprocess.h"

namespace keywarden::net {
namespace {

using keywarden::testing::EtcdCluster;
using keywarden::testing::TempDir;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

constexpr auto kHangBound = seconds(60);

// Collector runs a Watch on its own thread and keeps what it sees.
class Collector {
 public:
  Collector(RegistryStore& store, int64_t after) {
    thread_ = std::thread([this, &store, after] {
      absl::Status status = store.Watch(
          after,
          [this](const RegistryEvent& e) {
            std::lock_guard<std::mutex> lock(mu_);
            events_.push_back(e);
            cv_.notify_all();
            return true;
          },
          stop_);
      std::lock_guard<std::mutex> lock(mu_);
      result_ = status;
      finished_ = true;
      cv_.notify_all();
    });
  }
  ~Collector() { (void)Stop(); }

  // WaitFor waits until `n` events arrived (or the watch ended) and returns a copy.
  std::vector<RegistryEvent> WaitFor(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, kHangBound, [&] { return events_.size() >= n || finished_; });
    return events_;
  }
  // Stop sets the stop flag and returns the watch's status.
  absl::Status Stop() {
    stop_.store(true);
    if (thread_.joinable()) thread_.join();
    return result_;
  }
  bool finished() {
    std::lock_guard<std::mutex> lock(mu_);
    return finished_;
  }

 private:
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<RegistryEvent> events_;
  bool finished_ = false;
  absl::Status result_;
  std::thread thread_;
};

std::unique_ptr<RegistryStore> MustOpen(const std::string& uri, milliseconds timeout = seconds(5)) {
  auto store = OpenRegistryStore(uri, timeout);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

void ExpectEvent(const RegistryEvent& e, RegistryEvent::Type type, std::string_view node,
                 std::string_view record) {
  EXPECT_EQ(e.type, type);
  EXPECT_EQ(e.node, node);
  EXPECT_EQ(e.record, record);
}

void ExpectIncreasing(const std::vector<RegistryEvent>& events, int64_t after) {
  for (const RegistryEvent& e : events) {
    EXPECT_GT(e.revision, after);
    after = e.revision;
  }
}

// ---- SQLite ------------------------------------------------------------------------------------

TEST(SqliteRegistry, TwoConnectionsSeeEachOthersChangesInOrder) {
  TempDir dir;
  const std::string uri = "sqlite://" + (dir / "registry.db").string();
  auto a = MustOpen(uri);
  auto b = MustOpen(uri);
  ASSERT_TRUE(a && b);
  auto snapshot = a->List();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_TRUE(snapshot->records.empty());
  Collector watch(*a, snapshot->revision);
  ASSERT_TRUE(b->Put("node-b", "record-b1").ok());
  ASSERT_TRUE(b->Put("node-a", "record-a1").ok());
  ASSERT_TRUE(b->Delete("node-b").ok());
  ASSERT_TRUE(b->Delete("node-b").ok());  // nothing left to delete: no event
  ASSERT_TRUE(b->Put("node-a", "record-a2").ok());
  const auto events = watch.WaitFor(4);
  ASSERT_EQ(events.size(), 4u);
  ExpectEvent(events[0], RegistryEvent::Type::kPut, "node-b", "record-b1");
  ExpectEvent(events[1], RegistryEvent::Type::kPut, "node-a", "record-a1");
  ExpectEvent(events[2], RegistryEvent::Type::kDelete, "node-b", "");
  ExpectEvent(events[3], RegistryEvent::Type::kPut, "node-a", "record-a2");
  ExpectIncreasing(events, snapshot->revision);
  const auto stop_started = Clock::now();
  EXPECT_TRUE(watch.Stop().ok());
  EXPECT_LT(Clock::now() - stop_started, kHangBound);

  auto after = a->List();
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->records.size(), 1u);
  EXPECT_EQ(after->records[0], std::make_pair(std::string("node-a"), std::string("record-a2")));
  EXPECT_EQ(after->revision, events.back().revision);
  // A watch from the listed revision sees nothing old; one from the start sees everything.
  Collector replay(*b, 0);
  EXPECT_EQ(replay.WaitFor(4).size(), 4u);
}

TEST(SqliteRegistry, AnotherProcessesChangesArriveInOrder) {
  TempDir dir;
  const std::string uri = "sqlite://" + (dir / "registry.db").string();
  auto store = MustOpen(uri);
  ASSERT_TRUE(store);
  auto snapshot = store->List();
  ASSERT_TRUE(snapshot.ok());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child opens its own connection (never the parent's) and writes.
    auto own = OpenRegistryStore(uri, seconds(5));
    if (!own.ok()) _exit(10);
    for (int i = 0; i < 20; ++i) {
      if (!(*own)->Put("node-" + std::to_string(i % 3), "r" + std::to_string(i)).ok()) _exit(11);
      if (i % 5 == 4 && !(*own)->Delete("node-" + std::to_string(i % 3)).ok()) _exit(12);
    }
    _exit(0);
  }
  Collector watch(*store, snapshot->revision);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0) << wstatus;
  const auto events = watch.WaitFor(24);
  ASSERT_EQ(events.size(), 24u);
  ExpectIncreasing(events, snapshot->revision);
  size_t k = 0;
  for (int i = 0; i < 20; ++i) {
    ExpectEvent(events[k++], RegistryEvent::Type::kPut, "node-" + std::to_string(i % 3),
                "r" + std::to_string(i));
    if (i % 5 == 4) {
      ExpectEvent(events[k++], RegistryEvent::Type::kDelete, "node-" + std::to_string(i % 3), "");
    }
  }
  EXPECT_TRUE(watch.Stop().ok());
}

TEST(SqliteRegistry, RefusesBadNamesAndRecords) {
  TempDir dir;
  auto store = MustOpen("sqlite://" + (dir / "r.db").string());
  ASSERT_TRUE(store);
  EXPECT_EQ(store->Put("Node", "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Put("node", "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Put("node", std::string(kMaxRecordSize + 1, 'x')).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Delete("../x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Describe(), "sqlite://" + (dir / "r.db").string());
  EXPECT_EQ(OpenRegistryStore("nosuch://x").status().code(), absl::StatusCode::kInvalidArgument);
  const auto not_db = dir.WriteFile("not.db", std::string(4096, 'x'));
  EXPECT_EQ(OpenRegistryStore("sqlite://" + not_db.string()).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(SqliteRegistry, StoredRecordsVerify) {
  TempDir dir;
  auto store = MustOpen("sqlite://" + (dir / "r.db").string());
  ASSERT_TRUE(store);
  auto authority = NewAuthorityFromSeed(SecretBytes(std::vector<uint8_t>(32, 7)));
  ASSERT_TRUE(authority.ok());
  auto key = GenerateNodeSigningKey();
  ASSERT_TRUE(key.ok());
  NodeCredential c;
  c.node = "node-a";
  c.signing_key = key->public_key();
  c.cluster_id = std::string(64, '1');
  c.ek_fingerprint = std::string(64, '2');
  c.not_after = std::chrono::system_clock::now() + std::chrono::hours(1);
  auto credential = (*authority)->Issue(c);
  ASSERT_TRUE(credential.ok());
  auto signer = NewNodeSigner(*credential, std::move(*key));
  ASSERT_TRUE(signer.ok());
  NodeEntry entry;
  entry.node = "node-a";
  entry.public_key.fill(9);
  entry.endpoint = *Endpoint::Parse("10.0.0.1:51820");
  entry.allowed_ips = {*Cidr::Parse("10.78.0.1/32")};
  entry.issued_at = std::chrono::floor<seconds>(std::chrono::system_clock::now());
  auto record = (*signer)->Record(entry);
  ASSERT_TRUE(record.ok());
  ASSERT_TRUE(store->Put("node-a", *record).ok());
  auto snapshot = store->List();
  ASSERT_TRUE(snapshot.ok());
  ASSERT_EQ(snapshot->records.size(), 1u);
  auto verifier = NewEntryVerifier((*authority)->public_key(), c.cluster_id);
  ASSERT_TRUE(verifier.ok());
  auto verified = (*verifier)->Verify(snapshot->records[0].first, snapshot->records[0].second);
  ASSERT_TRUE(verified.ok()) << verified.status();
  EXPECT_EQ(verified->entry, entry);
}

// ---- etcd --------------------------------------------------------------------------------------

std::string EtcdUri(const EtcdCluster& cluster, std::string_view prefix = "/kwtest/") {
  std::string uri = "etcd://";
  for (const std::string& e : cluster.endpoints()) {
    if (uri.size() > 7) uri += ',';
    uri += e;
  }
  return uri + "?prefix=" + std::string(prefix);
}

// RawKv returns a KV stub on the first running member.
std::unique_ptr<etcdserverpb::KV::Stub> RawKv(EtcdCluster& cluster) {
  for (size_t i = 0; i < cluster.size(); ++i) {
    if (cluster.pid(i) != 0) return etcdserverpb::KV::NewStub(cluster.MemberChannel(i));
  }
  return nullptr;
}

class EtcdRegistry : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    cluster_ = new EtcdCluster({.members = 3});
    const auto started = cluster_->Start();
    if (!started) {
      ADD_FAILURE() << started.message();
      delete cluster_;
      cluster_ = nullptr;
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(cluster_, nullptr);
    ASSERT_TRUE(cluster_->WaitHealthy());
  }
  static EtcdCluster* cluster_;
};
EtcdCluster* EtcdRegistry::cluster_ = nullptr;

TEST_F(EtcdRegistry, WatchSeesPutsAndDeletesInOrder) {
  auto store = MustOpen(EtcdUri(*cluster_, "/order/"));
  auto writer = MustOpen(EtcdUri(*cluster_, "/order/"));
  auto neighbour = MustOpen(EtcdUri(*cluster_, "/other/"));
  ASSERT_TRUE(store && writer && neighbour);
  auto snapshot = store->List();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_TRUE(snapshot->records.empty());
  EXPECT_GT(snapshot->revision, 0);
  Collector watch(*store, snapshot->revision);
  ASSERT_TRUE(writer->Put("node-a", "a1").ok());
  ASSERT_TRUE(neighbour->Put("node-x", "not ours").ok());  // another prefix: not seen
  ASSERT_TRUE(writer->Put("node-b", "b1").ok());
  ASSERT_TRUE(writer->Delete("node-a").ok());
  ASSERT_TRUE(writer->Put("node-b", "b2").ok());
  const auto events = watch.WaitFor(4);
  ASSERT_EQ(events.size(), 4u);
  ExpectEvent(events[0], RegistryEvent::Type::kPut, "node-a", "a1");
  ExpectEvent(events[1], RegistryEvent::Type::kPut, "node-b", "b1");
  ExpectEvent(events[2], RegistryEvent::Type::kDelete, "node-a", "");
  ExpectEvent(events[3], RegistryEvent::Type::kPut, "node-b", "b2");
  ExpectIncreasing(events, snapshot->revision);
  EXPECT_TRUE(watch.Stop().ok());

  auto after = store->List();
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->records.size(), 1u);
  EXPECT_EQ(after->records[0].second, "b2");
  EXPECT_GE(after->revision, events.back().revision);
  EXPECT_EQ(store->Describe().rfind("etcd://", 0), 0u);

  // A handler that returns false ends the watch with OK.
  std::atomic<bool> never{false};
  int seen = 0;
  EXPECT_TRUE(store
                  ->Watch(
                      snapshot->revision,
                      [&](const RegistryEvent&) {
                        ++seen;
                        return false;
                      },
                      never)
                  .ok());
  EXPECT_EQ(seen, 1);
}

TEST_F(EtcdRegistry, WatchResumesAfterAKilledMember) {
  auto store = MustOpen(EtcdUri(*cluster_, "/kill/"), seconds(10));
  auto writer = MustOpen(EtcdUri(*cluster_, "/kill/"), seconds(10));
  ASSERT_TRUE(store && writer);
  auto snapshot = store->List();
  ASSERT_TRUE(snapshot.ok());
  Collector watch(*store, snapshot->revision);
  ASSERT_TRUE(writer->Put("node-0", "before").ok());
  ASSERT_EQ(watch.WaitFor(1).size(), 1u);
  // Kill each member in turn (whichever one serves the watch dies at some point), writing
  // while it is down; the watch must go on without losing or repeating an event.
  for (size_t i = 0; i < cluster_->size(); ++i) {
    ASSERT_TRUE(cluster_->KillMember(i));
    ASSERT_TRUE(
        writer->Put("node-" + std::to_string(i + 1), "while " + std::to_string(i) + " was down")
            .ok());
    ASSERT_TRUE(cluster_->RestartMember(i));
    ASSERT_TRUE(cluster_->WaitHealthy());
  }
  ASSERT_TRUE(writer->Delete("node-0").ok());
  const auto events = watch.WaitFor(5);
  ASSERT_EQ(events.size(), 5u) << "watch finished early: " << watch.finished();
  ExpectEvent(events[0], RegistryEvent::Type::kPut, "node-0", "before");
  for (size_t i = 0; i < 3; ++i) {
    ExpectEvent(events[i + 1], RegistryEvent::Type::kPut, "node-" + std::to_string(i + 1),
                "while " + std::to_string(i) + " was down");
  }
  ExpectEvent(events[4], RegistryEvent::Type::kDelete, "node-0", "");
  ExpectIncreasing(events, snapshot->revision);
  EXPECT_FALSE(watch.finished());
  EXPECT_TRUE(watch.Stop().ok());
}

TEST_F(EtcdRegistry, WatchFromACompactedRevisionIsOutOfRange) {
  auto store = MustOpen(EtcdUri(*cluster_, "/compact/"));
  ASSERT_TRUE(store);
  auto start = store->List();
  ASSERT_TRUE(start.ok());
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store->Put("node-a", "v" + std::to_string(i)).ok());
  auto now = store->List();
  ASSERT_TRUE(now.ok());
  auto kv = RawKv(*cluster_);
  ASSERT_TRUE(kv);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(10));
  etcdserverpb::CompactionRequest request;
  request.set_revision(now->revision);
  request.set_physical(true);
  etcdserverpb::CompactionResponse response;
  ASSERT_TRUE(kv->Compact(&context, request, &response).ok());

  std::atomic<bool> stop{false};
  const absl::Status status = store->Watch(
      start->revision, [](const RegistryEvent&) { return true; }, stop);
  EXPECT_EQ(status.code(), absl::StatusCode::kOutOfRange) << status;
  // From the compacted revision itself the history is whole: the caller relists and resumes.
  Collector watch(*store, now->revision);
  ASSERT_TRUE(store->Put("node-a", "after").ok());
  const auto events = watch.WaitFor(1);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].record, "after");
  EXPECT_TRUE(watch.Stop().ok());
}

TEST_F(EtcdRegistry, StopEndsAnIdleWatch) {
  auto store = MustOpen(EtcdUri(*cluster_, "/idle/"));
  ASSERT_TRUE(store);
  auto snapshot = store->List();
  ASSERT_TRUE(snapshot.ok());
  Collector watch(*store, snapshot->revision);
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_FALSE(watch.finished());
  const auto t0 = Clock::now();
  EXPECT_TRUE(watch.Stop().ok());
  EXPECT_LT(Clock::now() - t0, kHangBound);
}

TEST_F(EtcdRegistry, ListsTenThousandEntries) {
  constexpr int kEntries = 10000;
  const std::string prefix = "/many/";
  // Written in transactions of 100 puts straight to etcd (one Put per entry would take minutes
  // of fsyncs); values of 1 KiB make the listing ~10 MiB, more than one gRPC message may hold.
  auto kv = RawKv(*cluster_);
  ASSERT_TRUE(kv);
  const std::string value(1024, 'v');
  for (int batch = 0; batch < kEntries / 100; ++batch) {
    etcdserverpb::TxnRequest txn;
    for (int i = 0; i < 100; ++i) {
      auto* put = txn.add_success()->mutable_request_put();
      put->set_key(prefix + "net/nodes/" + fmt::format("node-{:05}", batch * 100 + i));
      put->set_value(value);
    }
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + seconds(10));
    etcdserverpb::TxnResponse response;
    ASSERT_TRUE(kv->Txn(&context, txn, &response).ok());
  }
  // A key under the directory that is no node name is skipped.
  {
    etcdserverpb::PutRequest put;
    put.set_key(prefix + "net/nodes/Not_A_Name");
    put.set_value("x");
    grpc::ClientContext context;
    etcdserverpb::PutResponse response;
    ASSERT_TRUE(kv->Put(&context, put, &response).ok());
  }
  auto store = MustOpen(EtcdUri(*cluster_, prefix), seconds(20));
  ASSERT_TRUE(store);
  auto snapshot = store->List();
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  ASSERT_EQ(snapshot->records.size(), static_cast<size_t>(kEntries));
  for (int i = 0; i < kEntries; ++i) {
    ASSERT_EQ(snapshot->records[i].first, fmt::format("node-{:05}", i));
    ASSERT_EQ(snapshot->records[i].second, value);
  }
}

}  // namespace
}  // namespace keywarden::net
