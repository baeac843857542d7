// KeyService logic with an in-memory store (a fake is fine here: this is the unit test of the
// freshness and validation rules; tests/service_test.cc runs the real process on real stores).
#include "keywarden/service/key_service.h"

#include <gtest/gtest.h>

#include <mutex>
#include <thread>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/keys/cluster.h"
#include "keywarden/status.h"

namespace keywarden::service {
namespace {

using namespace std::chrono_literals;

class MemoryStore : public store::KekStore {
 public:
  explicit MemoryStore(const store::KekRecord& record) { Put(record); }
  absl::StatusOr<store::KekRecord> Load() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (!reachable_) return UnavailableError("memory store switched off");
    if (bytes_.empty()) return NotFoundError("empty");
    return store::DecodeKekRecord(bytes_.Reveal(InsecureSecretAccess::Get()));
  }
  absl::StatusOr<store::KekRecord> InitializeOrLoad(const store::KekRecord& record) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bytes_.empty()) bytes_ = store::EncodeKekRecord(record);
    }
    return Load();
  }
  std::string Describe() const override { return "memory://"; }
  void SetReachable(bool reachable) {
    std::lock_guard<std::mutex> lock(mu_);
    reachable_ = reachable;
  }
  void Put(const store::KekRecord& record) {
    std::lock_guard<std::mutex> lock(mu_);
    bytes_ = store::EncodeKekRecord(record);
  }

 private:
  std::mutex mu_;
  SecretBytes bytes_;
  bool reachable_ = true;
};

store::KekRecord RecordFrom(const keys::MasterSecret& secret, std::vector<uint8_t> salt) {
  auto kek = *keys::Kek::FromMasterSecret(secret);
  return store::KekRecord{kek->bytes().Clone(), std::move(salt)};
}

class KeyServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    secret_ = *keys::MasterSecret::Generate();
    salt_.resize(32);
    ASSERT_TRUE(crypto::RandomFill(salt_).ok());
    auto store = std::make_unique<MemoryStore>(RecordFrom(secret_, salt_));
    store_ = store.get();
    KeyService::Options options;
    options.check_interval = 1h;  // the test drives CheckStoreNow itself
    options.stale_after = 50ms;
    options.on_health_change = [this](StoreHealth h, const absl::Status&) {
      changes_.push_back(h);
    };
    service_ = *KeyService::Start(std::move(store), RecordFrom(secret_, salt_), options);
  }

  std::string Hex(const SecretBytes& s) {
    return crypto::HexEncode(s.Reveal(InsecureSecretAccess::Get()));
  }

  keys::MasterSecret secret_;
  std::vector<uint8_t> salt_;
  MemoryStore* store_ = nullptr;
  std::vector<StoreHealth> changes_;
  std::unique_ptr<KeyService> service_;
};

TEST_F(KeyServiceTest, ServesTheHierarchysDeks) {
  auto kek = *keys::Kek::FromMasterSecret(secret_);
  for (uint64_t n : {1u, 16u, 32u, 64u, 8160u}) {
    auto key = service_->GetDataKey("disk-1", n);
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(Hex(*key), Hex(*kek->DeriveDek("disk-1", n)));
  }
  auto info = *keys::ComputeClusterInfo(secret_, salt_);
  EXPECT_EQ(service_->cluster_id(), info.cluster_id);
}

TEST_F(KeyServiceTest, RefusesBadRequests) {
  EXPECT_EQ(service_->GetDataKey("", 32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_->GetDataKey("a", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_->GetDataKey("a", kMaxDataKeyLength + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_->GetDataKey("a", uint64_t{1} << 40).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(service_->GetDataKey(std::string(kMaxDataKeyIdSize + 1, 'x'), 32).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(service_->GetDataKey(std::string(kMaxDataKeyIdSize, 'x'), 32).ok());
}

TEST_F(KeyServiceTest, UnreachableStoreMakesRequestsUnavailableUntilItReturns) {
  store_->SetReachable(false);
  std::this_thread::sleep_for(100ms);  // longer than stale_after
  service_->CheckStoreNow();
  EXPECT_EQ(service_->health(), StoreHealth::kStale);
  auto refused = service_->GetDataKey("a", 32);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  store_->SetReachable(true);
  service_->CheckStoreNow();
  EXPECT_EQ(service_->health(), StoreHealth::kConfirmed);
  EXPECT_TRUE(service_->GetDataKey("a", 32).ok());
  EXPECT_EQ(changes_, (std::vector<StoreHealth>{StoreHealth::kStale, StoreHealth::kConfirmed}));
}

TEST_F(KeyServiceTest, RequestsFailOnceConfirmationIsOlderThanStaleAfter) {
  // Even without a check, an old confirmation is not trusted.
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(service_->GetDataKey("a", 32).status().code(), absl::StatusCode::kUnavailable);
  service_->CheckStoreNow();
  EXPECT_TRUE(service_->GetDataKey("a", 32).ok());
}

TEST_F(KeyServiceTest, ADifferentKekInTheStoreStopsServiceForGood) {
  auto other = *keys::MasterSecret::Generate();
  store_->Put(RecordFrom(other, salt_));
  service_->CheckStoreNow();
  EXPECT_EQ(service_->health(), StoreHealth::kMismatch);
  auto refused = service_->GetDataKey("a", 32);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  // Putting the right record back does not resume service: an operator must restart.
  store_->Put(RecordFrom(secret_, salt_));
  service_->CheckStoreNow();
  EXPECT_EQ(service_->health(), StoreHealth::kMismatch);
}

TEST(KeyServiceStartTest, RefusesMalformedRecord) {
  auto secret = *keys::MasterSecret::Generate();
  auto kek = *keys::Kek::FromMasterSecret(secret);
  store::KekRecord record{kek->bytes().Clone(), std::vector<uint8_t>(31)};
  auto store = std::make_unique<MemoryStore>(
      store::KekRecord{kek->bytes().Clone(), std::vector<uint8_t>(32)});
  EXPECT_FALSE(KeyService::Start(std::move(store), std::move(record), {}).ok());
}

}  // namespace
}  // namespace keywarden::service
