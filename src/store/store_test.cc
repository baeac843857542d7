#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "keywarden/crypto/random.h"
#include "keywarden/store/kek_store.h"
#include "keywarden/store/sqlite_kek_store.h"
#include "tests/subprocess.h"

namespace keywarden::store {
namespace {

namespace fs = std::filesystem;
using ::keywarden::testing::TempDir;

KekRecord RandomRecord() {
  KekRecord record{*crypto::RandomSecret(kKekSize), std::vector<uint8_t>(kMeasurementSaltSize)};
  EXPECT_TRUE(crypto::RandomFill(record.measurement_salt).ok());
  return record;
}

TEST(KekRecordTest, RoundTripsAndRefusesMalformedBytes) {
  const KekRecord record = RandomRecord();
  const SecretBytes bytes = EncodeKekRecord(record);
  ASSERT_EQ(bytes.size(), kKekRecordSize);
  const auto view = bytes.Reveal(InsecureSecretAccess::Get());
  auto back = DecodeKekRecord(view);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(SameKekRecord(*back, record));

  EXPECT_EQ(DecodeKekRecord(view.first(kKekRecordSize - 1)).status().code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeKekRecord({}).status().code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> bad_magic(view.begin(), view.end());
  bad_magic[0] ^= 1;
  EXPECT_EQ(DecodeKekRecord(bad_magic).status().code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> longer(view.begin(), view.end());
  longer.push_back(0);
  EXPECT_FALSE(DecodeKekRecord(longer).ok());
}

TEST(KekRecordTest, SameKekRecordComparesKekAndSalt) {
  const KekRecord a = RandomRecord();
  KekRecord b{a.kek.Clone(), a.measurement_salt};
  EXPECT_TRUE(SameKekRecord(a, b));
  b.measurement_salt[0] ^= 1;
  EXPECT_FALSE(SameKekRecord(a, b));
  KekRecord c{a.kek.Clone(), a.measurement_salt};
  c.kek.MutableReveal(InsecureSecretAccess::Get())[31] ^= 1;
  EXPECT_FALSE(SameKekRecord(a, c));
}

TEST(KekRecordTest, FingerprintIsStableShortAndNotTheKey) {
  const KekRecord a = RandomRecord();
  const std::string f = KekFingerprint(a.kek);
  EXPECT_EQ(f.size(), 16u);
  EXPECT_EQ(f, KekFingerprint(a.kek.Clone()));
  EXPECT_NE(f, KekFingerprint(RandomRecord().kek));
}

TEST(SqliteKekStoreTest, EmptyThenInitializedThenFirstWriterWins) {
  TempDir dir;
  const fs::path path = dir.path() / "keywarden.db";
  auto store = NewSqliteKekStore(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->Load().status().code(), absl::StatusCode::kNotFound);
  const KekRecord first = RandomRecord();
  auto stored = (*store)->InitializeOrLoad(first);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_TRUE(SameKekRecord(*stored, first));
  auto again = (*store)->InitializeOrLoad(RandomRecord());
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(SameKekRecord(*again, first));
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ((*store)->Describe(), "sqlite://" + path.string());
}

TEST(SqliteKekStoreTest, SurvivesReopen) {
  TempDir dir;
  const fs::path path = dir.path() / "keywarden.db";
  const KekRecord record = RandomRecord();
  {
    auto store = *NewSqliteKekStore(path);
    ASSERT_TRUE(store->InitializeOrLoad(record).ok());
  }
  auto store = *NewSqliteKekStore(path);
  auto loaded = store->Load();
  ASSERT_TRUE(loaded.ok());
  EXPECT_TRUE(SameKekRecord(*loaded, record));
}

TEST(SqliteKekStoreTest, ConcurrentInitializersAcrossConnectionsAgree) {
  TempDir dir;
  const fs::path path = dir.path() / "keywarden.db";
  constexpr int kWriters = 6;
  std::vector<std::unique_ptr<KekStore>> stores;
  std::vector<KekRecord> proposals;
  for (int i = 0; i < kWriters; ++i) {
    stores.push_back(*NewSqliteKekStore(path));
    proposals.push_back(RandomRecord());
  }
  std::vector<absl::StatusOr<KekRecord>> results;
  for (int i = 0; i < kWriters; ++i) results.emplace_back(absl::UnknownError("not run"));
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kWriters; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load()) std::this_thread::yield();
      results[i] = stores[i]->InitializeOrLoad(proposals[i]);
    });
  }
  go = true;
  for (auto& t : threads) t.join();
  int winners = 0;
  for (int i = 0; i < kWriters; ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_TRUE(SameKekRecord(*results[i], *results[0]));
    if (SameKekRecord(*results[i], proposals[i])) ++winners;
  }
  EXPECT_EQ(winners, 1);
}

TEST(SqliteKekStoreTest, RefusesFilesThatAreNotKeywardenDatabases) {
  TempDir dir;
  const fs::path text = dir.path() / "notes.txt";
  { std::ofstream(text) << std::string(4096, 'x'); }
  auto r = NewSqliteKekStore(text);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(std::string(r.status().message()).find("notes.txt"), std::string::npos);
  EXPECT_EQ(NewSqliteKekStore(dir.path() / "missing-dir" / "x.db").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(SqliteKekStoreTest, CorruptRecordIsDataLoss) {
  TempDir dir;
  const fs::path path = dir.path() / "keywarden.db";
  {
    auto store = *NewSqliteKekStore(path);
    ASSERT_TRUE(store->InitializeOrLoad(RandomRecord()).ok());
  }
  // Corrupt the record in the file itself: the record is the only row, and its magic "KWK1"
  // occurs once in the database file (the WAL is checkpointed when the last connection
  // closes).
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  std::string contents((std::istreambuf_iterator<char>(file)), {});
  const size_t at = contents.find("KWK1");
  ASSERT_NE(at, std::string::npos);
  file.seekp(static_cast<std::streamoff>(at));
  file.write("XXXX", 4);
  file.close();
  auto store = *NewSqliteKekStore(path);
  EXPECT_EQ(store->Load().status().code(), absl::StatusCode::kDataLoss);
}

TEST(StoreUriTest, ParsesAndRefuses) {
  TempDir dir;
  auto sqlite = OpenKekStore("sqlite://" + (dir.path() / "k.db").string());
  ASSERT_TRUE(sqlite.ok()) << sqlite.status();
  for (const char* bad :
       {"", "sqlite://", "postgres://x", "etcd://", "etcd://host", "etcd://host:0",
        "etcd://host:99999", "etcd://host:1,", "etcd://:1", "etcd://h:1?ca", "etcd://h:1?bogus=1",
        "etcd://h:1?cert=a", "etcd://h:1?ca=%zz"}) {
    auto r = OpenKekStore(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace keywarden::store
