// Integration tests of the etcd KekStore against real etcd clusters that the tests start
// (tests/etcd_cluster.h). No test asserts on timing; waits are bounded generously and only to
// turn a hang into a failure.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <chrono>
#include <iostream>
#include <latch>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "etcd.grpc.pb.h"
#include "keywarden/status.h"
#include "keywarden/store/etcd_kek_store.h"
#include "keywarden/store/kek_store.h"
#include "tests/etcd_cluster.h"

namespace keywarden::store {
namespace {

using keywarden::testing::EtcdCluster;
using keywarden::testing::EtcdClusterOptions;
using keywarden::testing::ReservedPort;
using std::chrono::milliseconds;
using std::chrono::seconds;
using Clock = std::chrono::steady_clock;

// A bound for "returns within a bounded time": far above any timeout used here, so it only
// turns a hang into a failure.
constexpr auto kHangBound = seconds(60);

KekRecord MakeRecord(uint8_t tag) {
  std::array<uint8_t, kKekSize> kek;
  for (size_t i = 0; i < kek.size(); ++i) kek[i] = static_cast<uint8_t>(tag * 31 + i);
  KekRecord record;
  record.kek = SecretBytes(kek);
  record.measurement_salt.assign(kMeasurementSaltSize, static_cast<uint8_t>(0x80 ^ tag));
  return record;
}

EtcdOptions OptionsFor(const EtcdCluster& cluster, std::string prefix = "/keywarden/") {
  EtcdOptions options;
  options.endpoints = cluster.endpoints();
  options.prefix = std::move(prefix);
  if (cluster.tls()) {
    options.ca_file = cluster.tls_files().ca_cert;
    options.cert_file = cluster.tls_files().client_cert;
    options.key_file = cluster.tls_files().client_key;
  }
  return options;
}

std::unique_ptr<KekStore> MustOpen(const EtcdOptions& options) {
  absl::StatusOr<std::unique_ptr<KekStore>> store = NewEtcdKekStore(options);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

// RawGet reads `key` from the first running member that answers, bypassing the store.
std::optional<etcdserverpb::KeyValue> RawGet(EtcdCluster& cluster, const std::string& key) {
  for (size_t i = 0; i < cluster.size(); ++i) {
    if (cluster.pid(i) == 0) continue;
    auto stub = etcdserverpb::KV::NewStub(cluster.MemberChannel(i));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + seconds(5));
    etcdserverpb::RangeRequest request;
    request.set_key(key);
    etcdserverpb::RangeResponse response;
    if (!stub->Range(&context, request, &response).ok()) continue;
    if (response.kvs_size() == 0) return etcdserverpb::KeyValue();
    return response.kvs(0);
  }
  ADD_FAILURE() << "no etcd member answered a Range of " << key;
  return std::nullopt;
}

std::string ShortError(const absl::Status& status) {
  std::string text = absl::StatusCodeToString(status.code()) + ": " + StatusMessage(status);
  if (text.size() > 600) text = text.substr(0, 600) + "...";
  return text;
}

// LoadEventually polls Load until it succeeds or `bound` passes; returns the last result.
absl::StatusOr<KekRecord> LoadEventually(KekStore& store, Clock::duration bound = kHangBound) {
  const auto deadline = Clock::now() + bound;
  absl::StatusOr<KekRecord> result = store.Load();
  while (!result.ok() && Clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(200));
    result = store.Load();
  }
  return result;
}

// ---- Options (no cluster needed) ----

TEST(EtcdKekStoreOptionsTest, RejectsBadOptions) {
  EtcdOptions options;
  EXPECT_EQ(NewEtcdKekStore(options).status().code(), absl::StatusCode::kInvalidArgument);
  for (const char* bad : {"", "127.0.0.1", "127.0.0.1:", ":2379", "127.0.0.1:0", "127.0.0.1:65536",
                          "127.0.0.1:23x9", "http://127.0.0.1:2379", "a b:2379", "a,b:2379"}) {
    options.endpoints = {bad};
    EXPECT_EQ(NewEtcdKekStore(options).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  options.endpoints = {"127.0.0.1:2379"};
  options.store.timeout = milliseconds(0);
  EXPECT_EQ(NewEtcdKekStore(options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EtcdKekStoreOptionsTest, RejectsBadTlsFiles) {
  keywarden::testing::TempDir dir("kw-etcd-opts");
  const auto not_pem = dir.WriteFile("not.pem", "hello");
  const auto cert = dir.WriteFile("c.pem",
                                  "-----BEGIN CERTIFICATE-----\nAA==\n"
                                  "-----END CERTIFICATE-----\n");
  EtcdOptions options;
  options.endpoints = {"127.0.0.1:2379"};

  options.ca_file = (dir / "missing.pem").string();
  auto s = NewEtcdKekStore(options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();

  options.ca_file = not_pem.string();
  s = NewEtcdKekStore(options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();

  options.ca_file = cert.string();  // a client certificate without its key
  options.cert_file = cert.string();
  s = NewEtcdKekStore(options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();

  options.key_file = cert.string();  // not a private key
  s = NewEtcdKekStore(options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();

  options.ca_file.clear();  // a client certificate without TLS
  options.key_file.clear();
  s = NewEtcdKekStore(options);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << s.status();
}

// ---- (5) Nothing listening ----

TEST(EtcdKekStoreTest, NothingListeningIsUnavailable) {
  // Reserved ports: bound, never listening, so every connection is refused.
  const ReservedPort a = ReservedPort::Reserve();
  const ReservedPort b = ReservedPort::Reserve();
  EtcdOptions options;
  options.endpoints = {"127.0.0.1:" + std::to_string(a.port()),
                       "127.0.0.1:" + std::to_string(b.port())};
  options.store.timeout = milliseconds(500);
  const auto start = Clock::now();
  auto store = NewEtcdKekStore(options);
  EXPECT_LT(Clock::now() - start, kHangBound);
  ASSERT_EQ(store.status().code(), absl::StatusCode::kUnavailable) << store.status();
  const std::string message = StatusMessage(store.status());
  EXPECT_NE(message.find(options.endpoints[0] + "," + options.endpoints[1]), std::string::npos)
      << message;
  std::cout << "NewEtcdKekStore with nothing listening: " << message << "\n";
}

// ---- (1) (2) Basic behaviour ----

TEST(EtcdKekStoreTest, EmptyStoreLoadIsNotFound) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto store = MustOpen(OptionsFor(cluster));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Describe(), "etcd://" + cluster.endpoint(0));
  const auto loaded = store->Load();
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound) << loaded.status();
}

TEST(EtcdKekStoreTest, InitializeOrLoadStoresOnceAndKeepsTheFirstRecord) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto store = MustOpen(OptionsFor(cluster));
  ASSERT_NE(store, nullptr);

  const KekRecord first = MakeRecord(1);
  auto stored = store->InitializeOrLoad(first);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_TRUE(SameKekRecord(*stored, first));

  auto loaded = store->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameKekRecord(*loaded, first));

  const KekRecord second = MakeRecord(2);
  ASSERT_FALSE(SameKekRecord(first, second));
  auto again = store->InitializeOrLoad(second);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameKekRecord(*again, first));

  // The record sits at prefix + "v1/kek", written exactly once, as the encoded record.
  const auto kv = RawGet(cluster, "/keywarden/v1/kek");
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->version(), 1);
  const SecretBytes encoded = EncodeKekRecord(first);
  const auto bytes = encoded.Reveal(InsecureSecretAccess::Get());
  EXPECT_TRUE(kv->value() == std::string(bytes.begin(), bytes.end()));

  // A second store object (its own channel) sees the same record.
  auto other = MustOpen(OptionsFor(cluster));
  ASSERT_NE(other, nullptr);
  loaded = other->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameKekRecord(*loaded, first));
}

TEST(EtcdKekStoreTest, PrefixesAreIndependent) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto a = MustOpen(OptionsFor(cluster, "/tenant-a/"));
  auto b = MustOpen(OptionsFor(cluster, "/tenant-b/"));
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_TRUE(a->InitializeOrLoad(MakeRecord(1)).ok());
  EXPECT_EQ(b->Load().status().code(), absl::StatusCode::kNotFound);
  auto rb = b->InitializeOrLoad(MakeRecord(2));
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_TRUE(SameKekRecord(*rb, MakeRecord(2)));
  auto ra = a->Load();
  ASSERT_TRUE(ra.ok()) << ra.status();
  EXPECT_TRUE(SameKekRecord(*ra, MakeRecord(1)));
}

TEST(EtcdKekStoreTest, InitializeOrLoadRejectsAMalformedRecord) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto store = MustOpen(OptionsFor(cluster));
  ASSERT_NE(store, nullptr);
  KekRecord short_kek = MakeRecord(1);
  short_kek.kek = SecretBytes(16);
  EXPECT_EQ(store->InitializeOrLoad(short_kek).status().code(), absl::StatusCode::kInvalidArgument);
  KekRecord long_salt = MakeRecord(1);
  long_salt.measurement_salt.push_back(0);
  EXPECT_EQ(store->InitializeOrLoad(long_salt).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Load().status().code(), absl::StatusCode::kNotFound);
}

// ---- (3) Racing writers ----

TEST(EtcdKekStoreTest, ConcurrentInitializeOrLoadAgreesOnOneRecord) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  constexpr int kThreads = 8;
  constexpr int kRounds = 5;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    const std::string prefix = "/race-" + std::to_string(round) + "/";
    // Two store objects, so two channels (two TCP connections) race as well as threads.
    std::array<std::unique_ptr<KekStore>, 2> stores = {MustOpen(OptionsFor(cluster, prefix)),
                                                       MustOpen(OptionsFor(cluster, prefix))};
    ASSERT_NE(stores[0], nullptr);
    ASSERT_NE(stores[1], nullptr);
    std::vector<KekRecord> candidates;
    for (int t = 0; t < kThreads; ++t) candidates.push_back(MakeRecord(10 * round + t + 1));

    std::vector<absl::StatusOr<KekRecord>> results;
    for (int t = 0; t < kThreads; ++t) results.emplace_back(absl::UnknownError("not run"));
    std::latch start(kThreads);
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        start.arrive_and_wait();
        results[t] = stores[t % 2]->InitializeOrLoad(candidates[t]);
      });
    }
    for (std::thread& thread : threads) thread.join();

    for (int t = 0; t < kThreads; ++t) ASSERT_TRUE(results[t].ok()) << results[t].status();
    int winner = -1;
    for (int t = 0; t < kThreads; ++t) {
      if (SameKekRecord(*results[0], candidates[t])) winner = t;
    }
    ASSERT_GE(winner, 0) << "the stored record is none of the candidates";
    for (int t = 1; t < kThreads; ++t) EXPECT_TRUE(SameKekRecord(*results[t], *results[0]));

    const auto kv = RawGet(cluster, prefix + "v1/kek");
    ASSERT_TRUE(kv.has_value());
    EXPECT_EQ(kv->version(), 1) << "the record was written more than once";
    EXPECT_EQ(kv->create_revision(), kv->mod_revision());
    auto stored = DecodeKekRecord(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(kv->value().data()), kv->value().size()));
    ASSERT_TRUE(stored.ok()) << stored.status();
    EXPECT_TRUE(SameKekRecord(*stored, candidates[winner]));
  }
}

// ---- (6) Malformed stored value ----

TEST(EtcdKekStoreTest, MalformedValueIsDataLoss) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto store = MustOpen(OptionsFor(cluster));
  ASSERT_NE(store, nullptr);
  const std::string key = "/keywarden/v1/kek";

  const std::string garbage = "not-a-kek-record-SENTINEL";
  auto put = cluster.Etcdctl({"put", key, garbage});
  ASSERT_TRUE(put.ok()) << put;
  auto loaded = store->Load();
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
  EXPECT_EQ(StatusMessage(loaded.status()).find("SENTINEL"), std::string::npos);
  auto init = store->InitializeOrLoad(MakeRecord(1));
  EXPECT_EQ(init.status().code(), absl::StatusCode::kDataLoss) << init.status();

  // Right size, wrong magic.
  const std::string wrong_magic = "KWK9" + std::string(kKekSize + kMeasurementSaltSize, 'a');
  put = cluster.Etcdctl({"put", key, wrong_magic});
  ASSERT_TRUE(put.ok()) << put;
  loaded = store->Load();
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
  EXPECT_EQ(StatusMessage(loaded.status()).find("aaaa"), std::string::npos);

  // And a well-formed record written by another tool is read as such.
  const std::string valid =
      "KWK1" + std::string(kKekSize, 'k') + std::string(kMeasurementSaltSize, 's');
  put = cluster.Etcdctl({"put", key, valid});
  ASSERT_TRUE(put.ok()) << put;
  loaded = store->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const auto kek = loaded->kek.Reveal(InsecureSecretAccess::Get());
  EXPECT_EQ(std::string(kek.begin(), kek.end()), std::string(kKekSize, 'k'));
  EXPECT_EQ(loaded->measurement_salt, std::vector<uint8_t>(kMeasurementSaltSize, 's'));
}

// ---- (4) Leader failover ----

struct CallStats {
  std::mutex mu;
  int ok = 0;
  int failed = 0;
  int different = 0;
  Clock::duration slowest{};
  std::map<std::string, int> errors;

  void Record(const absl::StatusOr<KekRecord>& result, const KekRecord& expected,
              Clock::duration took) {
    std::lock_guard<std::mutex> lock(mu);
    slowest = std::max(slowest, took);
    if (!result.ok()) {
      ++failed;
      ++errors[ShortError(result.status())];
    } else if (SameKekRecord(*result, expected)) {
      ++ok;
    } else {
      ++different;
    }
  }
  void Print(const std::string& what) {
    std::lock_guard<std::mutex> lock(mu);
    std::cout << what << ": " << ok << " ok, " << failed << " failed, " << different
              << " different record; slowest call "
              << std::chrono::duration_cast<milliseconds>(slowest).count() << " ms\n";
    for (const auto& [error, count] : errors) std::cout << "  " << count << "x " << error << "\n";
  }
};

TEST(EtcdKekStoreTest, SurvivesKillingTheLeader) {
  EtcdCluster cluster({.members = 3});
  ASSERT_TRUE(cluster.Start());
  auto store = MustOpen(OptionsFor(cluster));
  ASSERT_NE(store, nullptr);
  const KekRecord record = MakeRecord(7);
  const KekRecord intruder = MakeRecord(8);
  ASSERT_TRUE(store->InitializeOrLoad(record).ok());

  CallStats loads;
  CallStats writes;
  std::atomic<bool> stop{false};
  std::thread loader([&] {
    while (!stop.load()) {
      const auto start = Clock::now();
      const auto result = store->Load();
      loads.Record(result, record, Clock::now() - start);
    }
  });
  std::thread writer([&] {
    while (!stop.load()) {
      const auto start = Clock::now();
      const auto result = store->InitializeOrLoad(intruder);
      writes.Record(result, record, Clock::now() - start);
      std::this_thread::sleep_for(milliseconds(20));
    }
  });
  auto stop_threads = [&] {
    stop.store(true);
    if (loader.joinable()) loader.join();
    if (writer.joinable()) writer.join();
  };

  std::this_thread::sleep_for(milliseconds(500));
  int leader = -1;
  for (const auto deadline = Clock::now() + kHangBound; leader < 0 && Clock::now() < deadline;) {
    leader = cluster.LeaderIndex();
    if (leader < 0) std::this_thread::sleep_for(milliseconds(100));
  }
  if (leader < 0) {
    stop_threads();
    FAIL() << "no leader found\n" << cluster.LogTails();
  }
  std::cout << "killing leader m" << leader << " (" << cluster.endpoint(leader) << ", pid "
            << cluster.pid(leader) << ")\n";
  const auto kill_ok = cluster.KillMember(leader);
  std::this_thread::sleep_for(seconds(4));
  stop_threads();
  ASSERT_TRUE(kill_ok);

  loads.Print("Load while the leader was killed");
  writes.Print("InitializeOrLoad while the leader was killed");
  EXPECT_EQ(loads.different, 0);
  EXPECT_EQ(writes.different, 0);
  EXPECT_GT(loads.ok, 0);

  // After failover: the same record, and it is still the only write.
  auto after = LoadEventually(*store);
  ASSERT_TRUE(after.ok()) << after.status() << "\n" << cluster.LogTails();
  EXPECT_TRUE(SameKekRecord(*after, record));
  auto again = store->InitializeOrLoad(intruder);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(SameKekRecord(*again, record));
  const auto kv = RawGet(cluster, "/keywarden/v1/kek");
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->version(), 1);
  const int new_leader = cluster.LeaderIndex();
  std::cout << "new leader: m" << new_leader << "\n";
  EXPECT_NE(new_leader, leader);

  // The old leader comes back and catches up; the store keeps working.
  ASSERT_TRUE(cluster.RestartMember(leader));
  ASSERT_TRUE(cluster.WaitHealthy());
  after = LoadEventually(*store);
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_TRUE(SameKekRecord(*after, record));
}

// ---- (5) Members down ----

TEST(EtcdKekStoreTest, LostQuorumAndAllMembersDownAreUnavailable) {
  EtcdCluster cluster({.members = 3});
  ASSERT_TRUE(cluster.Start());
  EtcdOptions options = OptionsFor(cluster);
  options.store.timeout = milliseconds(1000);
  auto store = MustOpen(options);
  ASSERT_NE(store, nullptr);
  const KekRecord record = MakeRecord(3);
  ASSERT_TRUE(store->InitializeOrLoad(record).ok());
  // The same cluster by name (DNS-resolved channels reconnect differently from addresses).
  EtcdOptions by_name = options;
  for (std::string& endpoint : by_name.endpoints) endpoint.replace(0, 9, "localhost");
  auto named_store = MustOpen(by_name);
  ASSERT_NE(named_store, nullptr);
  // And a store with a generous timeout, for "reconnects within one operation's timeout".
  EtcdOptions patient_options = options;
  patient_options.store.timeout = seconds(15);
  auto patient = MustOpen(patient_options);
  ASSERT_NE(patient, nullptr);

  // Two of three down: the survivor answers, but cannot serve a linearizable read or a write.
  ASSERT_TRUE(cluster.KillMember(0));
  ASSERT_TRUE(cluster.KillMember(1));
  auto start = Clock::now();
  auto loaded = store->Load();
  EXPECT_LT(Clock::now() - start, kHangBound);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kUnavailable) << loaded.status();
  std::cout << "Load without quorum: " << ShortError(loaded.status()) << "\n";
  auto init = store->InitializeOrLoad(MakeRecord(4));
  EXPECT_EQ(init.status().code(), absl::StatusCode::kUnavailable) << init.status();
  auto reopened = NewEtcdKekStore(options);
  EXPECT_TRUE(reopened.ok()) << "a member answers, so the store opens: " << reopened.status();

  // All down.
  ASSERT_TRUE(cluster.KillMember(2));
  start = Clock::now();
  loaded = store->Load();
  EXPECT_LT(Clock::now() - start, kHangBound);
  ASSERT_EQ(loaded.status().code(), absl::StatusCode::kUnavailable) << loaded.status();
  const std::string message = StatusMessage(loaded.status());
  for (const std::string& endpoint : cluster.endpoints()) {
    EXPECT_NE(message.find(endpoint), std::string::npos) << message;
  }
  std::cout << "Load with every member down: " << message << "\n";
  start = Clock::now();
  init = store->InitializeOrLoad(MakeRecord(4));
  EXPECT_LT(Clock::now() - start, kHangBound);
  EXPECT_EQ(init.status().code(), absl::StatusCode::kUnavailable) << init.status();
  reopened = NewEtcdKekStore(options);
  EXPECT_EQ(reopened.status().code(), absl::StatusCode::kUnavailable) << reopened.status();

  // Everything back: the same store object reconnects and finds the record.
  for (size_t i = 0; i < cluster.size(); ++i) ASSERT_TRUE(cluster.RestartMember(i));
  ASSERT_TRUE(cluster.WaitHealthy());
  loaded = patient->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameKekRecord(*loaded, record));
  for (KekStore* s : {store.get(), named_store.get()}) {
    start = Clock::now();
    loaded = LoadEventually(*s);
    ASSERT_TRUE(loaded.ok()) << s->Describe() << ": " << loaded.status();
    EXPECT_TRUE(SameKekRecord(*loaded, record));
    std::cout << s->Describe() << " answered again "
              << std::chrono::duration_cast<milliseconds>(Clock::now() - start).count()
              << " ms after the cluster was healthy\n";
  }
}

// ---- (7) TLS ----

TEST(EtcdKekStoreTlsTest, MutualTlsWorks) {
  EtcdCluster cluster({.members = 1, .tls = true});
  ASSERT_TRUE(cluster.Start());
  auto store = MustOpen(OptionsFor(cluster));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->Load().status().code(), absl::StatusCode::kNotFound);
  auto stored = store->InitializeOrLoad(MakeRecord(5));
  ASSERT_TRUE(stored.ok()) << stored.status();
  auto loaded = store->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameKekRecord(*loaded, MakeRecord(5)));

  // By name: the server certificate's DNS:localhost is checked instead of its IP address.
  EtcdOptions by_name = OptionsFor(cluster);
  by_name.endpoints = {"localhost:" + cluster.endpoint(0).substr(10)};
  auto named = MustOpen(by_name);
  ASSERT_NE(named, nullptr);
  loaded = named->Load();
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameKekRecord(*loaded, MakeRecord(5)));
}

TEST(EtcdKekStoreTlsTest, RejectsMissingOrForeignCredentials) {
  EtcdCluster cluster({.members = 1, .tls = true});
  ASSERT_TRUE(cluster.Start());
  const auto& files = cluster.tls_files();
  struct Case {
    std::string name;
    std::string ca, cert, key;
  };
  const std::vector<Case> cases = {
      {"no client certificate", files.ca_cert, "", ""},
      {"wrong CA", files.other_ca_cert, files.client_cert, files.client_key},
      {"client certificate from another CA", files.ca_cert, files.other_client_cert,
       files.other_client_key},
      {"plaintext to a TLS port", "", "", ""},
  };
  for (const Case& c : cases) {
    EtcdOptions options = OptionsFor(cluster);
    options.ca_file = c.ca;
    options.cert_file = c.cert;
    options.key_file = c.key;
    options.store.timeout = milliseconds(1000);
    const auto start = Clock::now();
    auto store = NewEtcdKekStore(options);
    EXPECT_LT(Clock::now() - start, kHangBound);
    EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable)
        << c.name << ": " << store.status();
    std::cout << c.name << ": " << ShortError(store.status()) << "\n";
  }
}

}  // namespace
}  // namespace keywarden::store
