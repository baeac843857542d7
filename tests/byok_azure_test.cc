// The Azure Blob DEK store against Azurite (SharedKey enforced): conditional creation decides
// races, If-Match refuses stale versions, listing pages in order, a wrong key is refused, an
// unreachable endpoint is UNAVAILABLE, and the URI form opens it.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <thread>

#include "keywarden/byok/azure.h"
#include "keywarden/crypto/encoding.h"
#include "tests/azurite.h"

namespace keywarden::byok {
namespace {

using ::keywarden::testing::Azurite;
using namespace std::chrono_literals;

std::vector<uint8_t> Blob(std::string_view text) { return {text.begin(), text.end()}; }

AzureBlobConfig Config(const Azurite& azurite, std::string container = "deks") {
  AzureBlobConfig config;
  config.account = Azurite::kAccount;
  config.container = std::move(container);
  config.key = *crypto::Base64DecodeSecret(Azurite::kKey);
  config.endpoint = azurite.endpoint();
  return config;
}

std::unique_ptr<DekStore> Open(const Azurite& azurite, std::string container = "deks") {
  const absl::Status created = CreateAzureContainer(Config(azurite, container), RemoteOptions{5s});
  EXPECT_TRUE(created.ok()) << created;
  auto store = NewAzureBlobDekStore(Config(azurite, container), RemoteOptions{5s});
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

#define REQUIRE_AZURITE(azurite)                                                          \
  if (Azurite::Program().empty()) GTEST_SKIP() << "azurite not installed (install-deps)"; \
  ASSERT_TRUE((azurite).Start()) << (azurite).log()

TEST(AzureBlobDekStore, CreateIfAbsentKeepsTheFirstAndReplaceIfComparesEtags) {
  Azurite azurite;
  REQUIRE_AZURITE(azurite);
  auto store = Open(azurite);
  ASSERT_NE(store, nullptr);
  auto absent = store->Get("volume-1");
  ASSERT_TRUE(absent.ok()) << absent.status();
  EXPECT_FALSE(absent->has_value());
  auto first = store->CreateIfAbsent("volume-1", Blob("first"));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = store->CreateIfAbsent("volume-1", Blob("second"));
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->blob, Blob("first"));
  EXPECT_EQ(second->version, first->version);
  ASSERT_TRUE(store->ReplaceIf("volume-1", first->version, Blob("rewrapped")).ok());
  EXPECT_EQ(store->ReplaceIf("volume-1", first->version, Blob("stale")).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(store->ReplaceIf("missing", first->version, Blob("x")).code(),
            absl::StatusCode::kNotFound);
  auto got = store->Get("volume-1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->blob, Blob("rewrapped"));
  for (const std::string& id :
       std::vector<std::string>{"a/b/c", "with space", "ümlaut", "~tilde", "..", "key-x"}) {
    ASSERT_TRUE(store->CreateIfAbsent(id, Blob(id)).ok()) << id;
    auto back = store->Get(id);
    ASSERT_TRUE(back.ok() && back->has_value()) << id;
    EXPECT_EQ((*back)->blob, Blob(id));
  }
}

TEST(AzureBlobDekStore, RacingCreatorsAllSeeOneBlob) {
  Azurite azurite;
  REQUIRE_AZURITE(azurite);
  auto a = Open(azurite), b = Open(azurite);
  ASSERT_TRUE(a && b);
  constexpr int kIds = 10, kThreads = 6;
  std::vector<std::vector<std::vector<uint8_t>>> seen(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      DekStore& store = t % 2 == 0 ? *a : *b;
      for (int i = 0; i < kIds; ++i) {
        auto r = store.CreateIfAbsent("id-" + std::to_string(i), Blob("w" + std::to_string(t)));
        seen[t].push_back(r.ok() ? r->blob : std::vector<uint8_t>{});
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < kIds; ++i) {
    std::set<std::vector<uint8_t>> distinct;
    for (int t = 0; t < kThreads; ++t) distinct.insert(seen[t][i]);
    ASSERT_EQ(distinct.size(), 1u) << "id-" << i;
    EXPECT_FALSE(distinct.begin()->empty());
  }
}

TEST(AzureBlobDekStore, ListsEveryIdInOrderAcrossPages) {
  Azurite azurite;
  REQUIRE_AZURITE(azurite);
  auto store = Open(azurite);
  ASSERT_NE(store, nullptr);
  std::set<std::string> ids;
  for (int i = 0; i < 620; ++i) ids.insert("vol-" + std::to_string(1000 + i));
  for (const std::string& id : ids) ASSERT_TRUE(store->CreateIfAbsent(id, Blob("x")).ok());
  std::vector<std::string> listed;
  ASSERT_TRUE(store
                  ->List([&](std::string_view id) {
                    listed.emplace_back(id);
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(listed, std::vector<std::string>(ids.begin(), ids.end()));
}

TEST(AzureBlobDekStore, AWrongKeyIsRefusedAndADownEndpointIsUnavailable) {
  Azurite azurite;
  REQUIRE_AZURITE(azurite);
  auto store = Open(azurite);
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->CreateIfAbsent("k", Blob("v")).ok());
  AzureBlobConfig wrong = Config(azurite);
  wrong.key = SecretBytes(std::vector<uint8_t>(64, 7));
  auto forged = NewAzureBlobDekStore(std::move(wrong), RemoteOptions{5s});
  ASSERT_TRUE(forged.ok());
  EXPECT_EQ((*forged)->Get("k").status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ((*forged)->CreateIfAbsent("new", Blob("v")).status().code(),
            absl::StatusCode::kPermissionDenied);

  // The URI form (registered by RegisterAzure) opens the same store.
  RegisterAzure();
  std::string key_param;
  for (char c : std::string(Azurite::kKey)) {
    if (c == '+')
      key_param += "%2B";
    else if (c == '/')
      key_param += "%2F";
    else if (c == '=')
      key_param += "%3D";
    else
      key_param.push_back(c);
  }
  auto by_uri =
      OpenDekStore("storage://azure?account=devstoreaccount1&container=deks&key=" + key_param +
                       "&endpoint=" + azurite.endpoint(),
                   RemoteOptions{5s});
  ASSERT_TRUE(by_uri.ok()) << by_uri.status();
  auto got = (*by_uri)->Get("k");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status();
  EXPECT_EQ((*got)->blob, Blob("v"));
  EXPECT_EQ(OpenDekStore("storage://azure?account=devstoreaccount1&container=deks").status().code(),
            absl::StatusCode::kInvalidArgument);

  azurite.Stop();
  EXPECT_EQ(store->Get("k").status().code(), absl::StatusCode::kUnavailable);
}

// The SharedKey string-to-sign, checked against a signature computed independently with the
// openssl CLI over the same canonical text (documented layout, docs/byok.md).
TEST(AzureSharedKey, SignsTheDocumentedCanonicalForm) {
  const SecretBytes key = *crypto::Base64DecodeSecret(Azurite::kKey);
  auto signature = AzureSharedKeySignature(key, "devstoreaccount1", "PUT",
                                           "/devstoreaccount1/deks/keywarden/deks/key-a", {},
                                           {{"x-ms-date", "Sun, 29 Nov 2026 06:00:00 GMT"},
                                            {"x-ms-version", "2021-08-06"},
                                            {"Content-Length", "5"},
                                            {"Content-Type", "application/octet-stream"},
                                            {"If-None-Match", "*"},
                                            {"x-ms-blob-type", "BlockBlob"}});
  ASSERT_TRUE(signature.ok());
  const std::string canonical =
      "PUT\n\n\n5\n\napplication/octet-stream\n\n\n\n*\n\n\n"
      "x-ms-blob-type:BlockBlob\nx-ms-date:Sun, 29 Nov 2026 06:00:00 GMT\n"
      "x-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/deks/keywarden/deks/key-a";
  keywarden::testing::TempDir dir;
  dir.WriteFile("canonical", canonical);
  const std::string hex_key = crypto::HexEncode(key.Reveal(InsecureSecretAccess::Get()));
  const auto r =
      keywarden::testing::Run({"sh", "-c",
                               "openssl dgst -sha256 -mac HMAC -macopt hexkey:" + hex_key +
                                   " -binary " + (dir / "canonical").string() + " | base64 -w0"});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_EQ(*signature, r.stdout_text);
}

}  // namespace
}  // namespace keywarden::byok
