// The etcd DEK store against a real etcd: conditional creation decides races, rotation's
// compare-and-swap refuses stale versions, listing pages through every id in order, an
// unreachable cluster is UNAVAILABLE, and the URI form opens it.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "keywarden/byok/etcd.h"
#include "tests/etcd_cluster.h"

namespace keywarden::byok {
namespace {

using ::keywarden::testing::EtcdCluster;
using namespace std::chrono_literals;

std::vector<uint8_t> Blob(std::string_view text) { return {text.begin(), text.end()}; }

std::unique_ptr<DekStore> Open(const EtcdCluster& cluster, std::string prefix = "") {
  store::EtcdOptions options;
  options.endpoints = cluster.endpoints();
  options.prefix = std::move(prefix);
  options.store.timeout = 3s;
  auto opened = NewEtcdDekStore(options);
  EXPECT_TRUE(opened.ok()) << opened.status();
  return opened.ok() ? std::move(*opened) : nullptr;
}

TEST(EtcdDekStore, CreateIfAbsentKeepsTheFirstAndReplaceIfComparesVersions) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto store = Open(cluster);
  ASSERT_NE(store, nullptr);
  EXPECT_THAT(store->Describe(), ::testing::HasSubstr("/keywarden/deks/"));

  auto absent = store->Get("volume-1");
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_FALSE(absent->has_value());

  auto first = store->CreateIfAbsent("volume-1", Blob("first"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->blob, Blob("first"));
  auto second = store->CreateIfAbsent("volume-1", Blob("second"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->blob, Blob("first"));
  EXPECT_EQ(second->version, first->version);
  auto got = store->Get("volume-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->blob, Blob("first"));
  EXPECT_EQ((*got)->version, first->version);

  // Rotation: the right version replaces, a stale one is ABORTED, a missing id NOT_FOUND.
  ASSERT_TRUE(store->ReplaceIf("volume-1", first->version, Blob("rewrapped")).ok());
  EXPECT_EQ(store->ReplaceIf("volume-1", first->version, Blob("stale")).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(store->ReplaceIf("nope", first->version, Blob("x")).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->ReplaceIf("volume-1", "not-a-version", Blob("x")).code(),
            absl::StatusCode::kInvalidArgument);
  got = store->Get("volume-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->blob, Blob("rewrapped"));
  EXPECT_NE((*got)->version, first->version);

  // Ids are bytes: separators, spaces and UTF-8 round-trip.
  for (const std::string& id :
       std::vector<std::string>{"a/b/c", "with space", "ümlaut-ключ", std::string(1024, 'x')}) {
    auto created = store->CreateIfAbsent(id, Blob(id));
    ASSERT_TRUE(created.ok()) << created.status();
    auto back = store->Get(id);
    ASSERT_TRUE(back.ok() && back->has_value());
    EXPECT_EQ((*back)->blob, Blob(id));
  }
  EXPECT_EQ(store->Get("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Get(std::string(1025, 'x')).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EtcdDekStore, RacingCreatorsOnSeveralClientsAllSeeOneBlob) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  // Two "replicas": separate clients (separate channels) on one cluster.
  auto a = Open(cluster), b = Open(cluster);
  ASSERT_TRUE(a && b);
  constexpr int kIds = 20, kThreads = 8;
  std::vector<std::vector<std::vector<uint8_t>>> seen(kThreads);
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      DekStore& store = t % 2 == 0 ? *a : *b;
      for (int i = 0; i < kIds; ++i) {
        auto r =
            store.CreateIfAbsent("id-" + std::to_string(i), Blob("writer-" + std::to_string(t)));
        if (!r.ok()) {
          ++errors;
          seen[t].emplace_back();
        } else {
          seen[t].push_back(r->blob);
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  for (int i = 0; i < kIds; ++i) {
    std::set<std::vector<uint8_t>> distinct;
    for (int t = 0; t < kThreads; ++t) distinct.insert(seen[t][i]);
    EXPECT_EQ(distinct.size(), 1u) << "id-" << i;
    auto stored = a->Get("id-" + std::to_string(i));
    ASSERT_TRUE(stored.ok() && stored->has_value());
    EXPECT_EQ((*stored)->blob, *distinct.begin());
  }
}

TEST(EtcdDekStore, ListPagesThroughEveryIdInOrderAndOnlyItsPrefix) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  auto store = Open(cluster, "/tenant-a/");
  auto other = Open(cluster, "/tenant-b/");
  ASSERT_TRUE(store && other);
  std::set<std::string> ids;
  for (int i = 0; i < 1100; ++i) ids.insert(fmt::format("vol-{:05d}", i));
  ids.insert("a");
  ids.insert("zz/z");
  for (const std::string& id : ids) ASSERT_TRUE(store->CreateIfAbsent(id, Blob("x")).ok());
  ASSERT_TRUE(other->CreateIfAbsent("foreign", Blob("y")).ok());
  std::vector<std::string> listed;
  ASSERT_TRUE(store
                  ->List([&](std::string_view id) {
                    listed.emplace_back(id);
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(listed, std::vector<std::string>(ids.begin(), ids.end()));
  // A visitor's error stops the listing and is returned.
  int visited = 0;
  const absl::Status stopped = store->List([&](std::string_view) {
    return ++visited == 3 ? absl::CancelledError("enough") : absl::OkStatus();
  });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(visited, 3);
}

TEST(EtcdDekStore, AnUnreachableClusterIsUnavailableAndTheUriOpensIt) {
  EtcdCluster cluster;
  ASSERT_TRUE(cluster.Start());
  RegisterAllProviders();
  RegisterEtcd();
  const std::string uri = "storage://etcd?endpoints=" + cluster.endpoints()[0] + "&prefix=/uri";
  auto store = OpenDekStore(uri, RemoteOptions{2s});
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->CreateIfAbsent("k", Blob("v")).ok());
  EXPECT_THAT((*store)->Describe(), ::testing::HasSubstr("/uri/"));
  EXPECT_EQ(OpenDekStore("storage://etcd?prefix=/x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenDekStore("storage://etcd?endpoints=nohostport").status().code(),
            absl::StatusCode::kInvalidArgument);

  ASSERT_TRUE(cluster.KillMember(0));
  const auto start = std::chrono::steady_clock::now();
  auto down = (*store)->Get("k");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);  // bounded by the timeout, roughly
  EXPECT_EQ((*store)->CreateIfAbsent("new", Blob("v")).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace keywarden::byok
