// The AWS KMS provider and the S3 DEK store against moto with SigV4 checking on
// (tests/moto.h). docs/byok-aws.md lists what this covers and what it cannot.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <set>
#include <thread>

#include "keywarden/byok/aws.h"
#include "keywarden/byok/user_managed.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"
#include "src/byok/sigv4.h"
#include "tests/moto.h"

namespace keywarden::byok {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

SecretBytes Secret(std::string_view s) {
  return SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size()));
}

std::vector<uint8_t> Bytes(std::string_view s) { return {s.begin(), s.end()}; }

std::string Message(const absl::Status& status) { return std::string(status.message()); }

class AwsMotoTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_TRUE(moto_.Start()); }

  AwsCredentials Credentials(std::string_view secret = "") const {
    return {moto_.access_key_id(),
            Secret(secret.empty() ? std::string_view(moto_.secret_access_key()) : secret), ""};
  }

  std::unique_ptr<KekProvider> Provider(
      const std::string& key_id, std::string_view secret = "",
      std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto provider = NewAwsKmsProvider({.key_id = key_id,
                                       .region = "us-east-1",
                                       .credentials = Credentials(secret),
                                       .endpoint = moto_.endpoint()},
                                      {.timeout = timeout});
    EXPECT_TRUE(provider.ok()) << provider.status();
    return provider.ok() ? *std::move(provider) : nullptr;
  }

  std::unique_ptr<DekStore> Store(std::string_view prefix = "keywarden/deks/", int page_size = 1000,
                                  std::string_view secret = "") {
    S3Config config{.bucket = "kw-deks",
                    .region = "us-east-1",
                    .credentials = Credentials(secret),
                    .endpoint = moto_.endpoint(),
                    .prefix = std::string(prefix),
                    .list_page_size = page_size};
    auto store = NewS3DekStore(std::move(config), {.timeout = std::chrono::seconds(10)});
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? *std::move(store) : nullptr;
  }

  void MakeBucket() { ASSERT_TRUE(moto_.CreateBucket("kw-deks").ok()); }

  keywarden::testing::Moto moto_;
};

TEST_F(AwsMotoTest, KmsWrapUnwrapRoundTrip) {
  auto key_id = moto_.CreateKmsKey();
  ASSERT_TRUE(key_id.ok()) << key_id.status();
  auto provider = Provider(*key_id);
  ASSERT_NE(provider, nullptr);
  EXPECT_EQ(provider->kek_id(), "aws-kms:" + *key_id);
  for (size_t size : {1, 32, 64, 512}) {
    auto dek = crypto::RandomSecret(size);
    ASSERT_TRUE(dek.ok());
    auto wrapped = provider->Wrap(*dek);
    ASSERT_TRUE(wrapped.ok()) << wrapped.status();
    auto unwrapped = provider->Unwrap(*wrapped);
    ASSERT_TRUE(unwrapped.ok()) << unwrapped.status();
    const InsecureSecretAccess access = InsecureSecretAccess::Get();
    EXPECT_TRUE(std::ranges::equal(unwrapped->Reveal(access), dek->Reveal(access)));
  }
  EXPECT_EQ(provider->Wrap(SecretBytes()).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AwsMotoTest, KmsWrongSecretIsRefusedBySignatureCheck) {
  auto key_id = moto_.CreateKmsKey();
  ASSERT_TRUE(key_id.ok()) << key_id.status();
  const std::string wrong = "wrong-secret-access-key-0000000000000000";
  auto provider = Provider(*key_id, wrong);
  ASSERT_NE(provider, nullptr);
  auto dek = crypto::RandomSecret(32);
  ASSERT_TRUE(dek.ok());
  const auto status = provider->Wrap(*dek).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_THAT(Message(status), HasSubstr("Signature"));
  EXPECT_THAT(Message(status), Not(HasSubstr(wrong)));
  EXPECT_THAT(Message(status), Not(HasSubstr(moto_.secret_access_key())));

  // An access key id IAM does not know.
  auto unknown = NewAwsKmsProvider({.key_id = *key_id,
                                    .region = "us-east-1",
                                    .credentials = {"AKIDUNKNOWN000000000", Secret(wrong), ""},
                                    .endpoint = moto_.endpoint()},
                                   {});
  ASSERT_TRUE(unknown.ok());
  EXPECT_EQ((*unknown)->Wrap(*dek).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(AwsMotoTest, KmsRefusesBlobOfAnotherKeyAndTamperedBlob) {
  auto key1 = moto_.CreateKmsKey();
  auto key2 = moto_.CreateKmsKey();
  ASSERT_TRUE(key1.ok() && key2.ok());
  auto p1 = Provider(*key1);
  auto p2 = Provider(*key2);
  ASSERT_TRUE(p1 && p2);
  auto dek = crypto::RandomSecret(32);
  ASSERT_TRUE(dek.ok());
  auto wrapped = p1->Wrap(*dek);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  const auto other = p2->Unwrap(*wrapped).status();
  EXPECT_EQ(other.code(), absl::StatusCode::kPermissionDenied) << other;

  for (size_t i : {size_t{0}, wrapped->size() / 2, wrapped->size() - 1}) {
    auto tampered = *wrapped;
    tampered[i] ^= 0x01;
    const auto status = p1->Unwrap(tampered).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << i << ": " << status;
  }
  auto truncated = *wrapped;
  truncated.resize(truncated.size() / 2);
  EXPECT_EQ(p1->Unwrap(truncated).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(p1->Unwrap({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(AwsMotoTest, KmsUnreachableIsUnavailable) {
  auto key_id = moto_.CreateKmsKey();
  ASSERT_TRUE(key_id.ok());
  auto provider = Provider(*key_id, "", std::chrono::milliseconds(500));
  ASSERT_NE(provider, nullptr);
  auto dek = crypto::RandomSecret(32);
  ASSERT_TRUE(dek.ok());
  auto wrapped = provider->Wrap(*dek);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();

  moto_.Stop();  // connection refused
  EXPECT_EQ(provider->Wrap(*dek).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(provider->Unwrap(*wrapped).status().code(), absl::StatusCode::kUnavailable);

  // A peer that accepts connections but never answers: the timeout ends the call.
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 16), 0);
  ASSERT_EQ(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  auto silent =
      NewAwsKmsProvider({.key_id = *key_id,
                         .region = "us-east-1",
                         .credentials = Credentials(),
                         .endpoint = "http://127.0.0.1:" + std::to_string(ntohs(addr.sin_port))},
                        {.timeout = std::chrono::milliseconds(300)});
  ASSERT_TRUE(silent.ok());
  const auto start = std::chrono::steady_clock::now();
  const auto status = (*silent)->Unwrap(*wrapped).status();
  // A hang guard, not a performance assertion: the call must come back at all.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  close(fd);
}

TEST_F(AwsMotoTest, S3GetAbsentCreateTwiceReplace) {
  MakeBucket();
  auto store = Store();
  ASSERT_NE(store, nullptr);
  auto absent = store->Get("id-1");
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_FALSE(absent->has_value());

  auto first = store->CreateIfAbsent("id-1", Bytes("blob one"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->blob, Bytes("blob one"));
  EXPECT_FALSE(first->version.empty());
  auto second = store->CreateIfAbsent("id-1", Bytes("blob two"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->blob, Bytes("blob one"));
  EXPECT_EQ(second->version, first->version);

  auto got = store->Get("id-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->blob, Bytes("blob one"));
  EXPECT_EQ((*got)->version, first->version);

  // ReplaceIf with the current version succeeds; with the old (stale) one it is ABORTED.
  ASSERT_TRUE(store->ReplaceIf("id-1", first->version, Bytes("blob rewrapped")).ok());
  const auto stale = store->ReplaceIf("id-1", first->version, Bytes("blob lost"));
  EXPECT_EQ(stale.code(), absl::StatusCode::kAborted) << stale;
  got = store->Get("id-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->blob, Bytes("blob rewrapped"));
  EXPECT_NE((*got)->version, first->version);
  EXPECT_EQ(store->ReplaceIf("id-none", first->version, Bytes("x")).code(),
            absl::StatusCode::kNotFound);
}

TEST_F(AwsMotoTest, S3WrongSecretAndMissingBucketAndDown) {
  MakeBucket();
  auto wrong = Store("keywarden/deks/", 1000, "wrong-secret-access-key-0000000000000000");
  ASSERT_NE(wrong, nullptr);
  const auto status = wrong->Get("id").status();
  EXPECT_EQ(status.code(), absl::StatusCode::kPermissionDenied) << status;
  EXPECT_EQ(wrong->CreateIfAbsent("id", Bytes("b")).status().code(),
            absl::StatusCode::kPermissionDenied);

  S3Config missing;
  missing.bucket = "kw-missing";
  missing.region = "us-east-1";
  missing.credentials = Credentials();
  missing.endpoint = moto_.endpoint();
  auto no_bucket = NewS3DekStore(std::move(missing), {});
  ASSERT_TRUE(no_bucket.ok());
  EXPECT_EQ((*no_bucket)->Get("id").status().code(), absl::StatusCode::kFailedPrecondition);

  auto store = Store();
  ASSERT_NE(store, nullptr);
  moto_.Stop();
  EXPECT_EQ(store->Get("id").status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(store->CreateIfAbsent("id", Bytes("b")).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(store->List([](std::string_view) { return absl::OkStatus(); }).code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(AwsMotoTest, S3OddIdsRoundTripAndListInOrderAcrossPages) {
  MakeBucket();
  // A prefix without '/': moto verifies signatures over the URL werkzeug rebuilds, whose query
  // has %2F decoded to '/', so a ListObjectsV2 whose prefix holds '/' (signed, as AWS requires,
  // with %2F) fails moto's check. AWS S3 is not affected (docs/byok-aws.md).
  auto store = Store("kwdeks-", 2);
  ASSERT_NE(store, nullptr);
  const std::vector<std::string> ids = {"plain",
                                        "with/slash",
                                        "a/../b",
                                        "with space",
                                        "unicode-\xc3\xa9\xe2\x82\xac-\xf0\x9f\x94\x91",
                                        "100%",
                                        "a+b=c&d?e",
                                        "~tilde",
                                        "!",
                                        "Z",
                                        "key-looking",
                                        "..",
                                        "x\ty"};
  for (const std::string& id : ids) {
    auto created = store->CreateIfAbsent(id, Bytes("blob:" + id));
    ASSERT_TRUE(created.ok()) << keywarden::Printable(id) << ": " << created.status();
  }
  for (const std::string& id : ids) {
    auto got = store->Get(id);
    ASSERT_TRUE(got.ok() && got->has_value()) << keywarden::Printable(id);
    EXPECT_EQ((*got)->blob, Bytes("blob:" + id));
  }
  // An object under the prefix that this store did not name is skipped; another prefix's
  // objects are not listed.
  auto other = Store("kwother-");
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(other->CreateIfAbsent("elsewhere", Bytes("x")).ok());
  auto foreign = Store("kwdeks-key-~");  // names "kwdeks-key-~key-x": not an encoded id
  ASSERT_NE(foreign, nullptr);
  ASSERT_TRUE(foreign->CreateIfAbsent("x", Bytes("x")).ok());

  std::vector<std::string> listed;
  ASSERT_TRUE(store
                  ->List([&](std::string_view id) {
                    listed.emplace_back(id);
                    return absl::OkStatus();
                  })
                  .ok());
  std::vector<std::string> expected = ids;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(listed, expected);

  // A visitor's error stops the listing and is returned.
  int visited = 0;
  const auto stopped = store->List([&](std::string_view) {
    return ++visited == 3 ? absl::CancelledError("enough") : absl::OkStatus();
  });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(visited, 3);
  EXPECT_EQ(store->Get("").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Get(std::string(400, '/')).status().code(), absl::StatusCode::kInvalidArgument);
}

// Replicas racing the first write of one id: every caller must end with the same blob. moto
// checks If-None-Match and stores in separate steps (see docs/byok-aws.md); on AWS S3 the
// conditional PUT is atomic.
TEST_F(AwsMotoTest, S3RacingCreateIfAbsentAgreeOnOneBlob) {
  MakeBucket();
  constexpr int kThreads = 8;
  constexpr int kRounds = 10;
  std::vector<std::unique_ptr<DekStore>> replicas;
  for (int i = 0; i < kThreads; ++i) replicas.push_back(Store());
  for (int round = 0; round < kRounds; ++round) {
    const std::string id = "race-" + std::to_string(round);
    std::vector<absl::StatusOr<StoredDek>> results(kThreads, absl::UnknownError("not run"));
    std::barrier start(kThreads);
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        results[i] =
            replicas[i]->CreateIfAbsent(id, Bytes("blob from replica " + std::to_string(i)));
      });
    }
    for (auto& t : threads) t.join();
    std::set<std::vector<uint8_t>> blobs;
    for (const auto& r : results) {
      ASSERT_TRUE(r.ok()) << r.status();
      blobs.insert(r->blob);
    }
    auto stored = replicas[0]->Get(id);
    ASSERT_TRUE(stored.ok() && stored->has_value());
    EXPECT_EQ(blobs.size(), 1u) << "round " << round;
    EXPECT_EQ(*blobs.begin(), (*stored)->blob) << "round " << round;
  }
}

// The whole path: URIs through byok's registry, WrapDek into S3, UnwrapDek back, and the
// user-managed GetDataKey on top (cache off, so every request unwraps at KMS).
TEST_F(AwsMotoTest, UrisThroughRegistryAndUserManagedKeys) {
  MakeBucket();
  auto key_id = moto_.CreateKmsKey();
  ASSERT_TRUE(key_id.ok()) << key_id.status();
  RegisterAws();
  const auto enc = [](std::string_view v) { return sigv4::UriEncode(v, false); };
  const std::string creds = "&region=us-east-1&accessKeyID=" + enc(moto_.access_key_id()) +
                            "&accessKey=" + enc(moto_.secret_access_key()) +
                            "&endpoint=" + enc(moto_.endpoint());
  const std::string kms_uri = "kms://aws?keyID=" + enc(*key_id) + creds;
  const std::string storage_uri = "storage://aws?bucket=kw-deks" + creds;
  EXPECT_THAT(RedactUri(kms_uri), Not(HasSubstr(enc(moto_.secret_access_key()))));

  auto provider = OpenKekProvider(kms_uri);
  ASSERT_TRUE(provider.ok()) << provider.status();
  auto store = OpenDekStore(storage_uri);
  ASSERT_TRUE(store.ok()) << store.status();
  auto dek = crypto::RandomSecret(32);
  ASSERT_TRUE(dek.ok());
  auto blob = WrapDek(**provider, "volume/1", *dek);
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto stored = (*store)->CreateIfAbsent("volume/1", *blob);
  ASSERT_TRUE(stored.ok()) << stored.status();
  auto unwrapped = UnwrapDek(**provider, "volume/1", stored->blob);
  ASSERT_TRUE(unwrapped.ok()) << unwrapped.status();
  const InsecureSecretAccess access = InsecureSecretAccess::Get();
  EXPECT_TRUE(std::ranges::equal(unwrapped->Reveal(access), dek->Reveal(access)));
  // A blob copied to another id does not unwrap there (the binding inside the KMS plaintext).
  EXPECT_EQ(UnwrapDek(**provider, "volume/2", stored->blob).status().code(),
            absl::StatusCode::kPermissionDenied);

  auto keys = UserManagedKeys::New(
      *std::move(provider), *std::move(store),
      UserManagedOptions{
          .cache_entries = 0, .cache_ttl = std::chrono::minutes(5), .audit = nullptr});
  ASSERT_TRUE(keys.ok()) << keys.status();
  auto first = (*keys)->GetDataKey("disk-a", 32);
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = (*keys)->GetDataKey("disk-a", 32);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE(std::ranges::equal(first->Reveal(access), again->Reveal(access)));
  auto existing = (*keys)->GetDataKey("volume/1", 32);
  ASSERT_TRUE(existing.ok()) << existing.status();
  EXPECT_TRUE(std::ranges::equal(existing->Reveal(access), dek->Reveal(access)));
}

}  // namespace
}  // namespace keywarden::byok
