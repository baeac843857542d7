// Unit tests of user-managed keys' logic: the wrapped-DEK format and its binding, URIs and the
// registry, the SQLite DEK store, and UserManagedKeys over in-memory providers and stores (real
// providers are tested against their peers in tests/byok_*_test.cc).
#include "keywarden/byok/byok.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "keywarden/byok/user_managed.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/key_wrap.h"
#include "keywarden/crypto/random.h"
#include "keywarden/service/audit.h"
#include "keywarden/status.h"
#include "tests/subprocess.h"

namespace keywarden::byok {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Str(std::span<const uint8_t> bytes) {
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}
std::string Str(const SecretBytes& secret) {
  return Str(secret.Reveal(InsecureSecretAccess::Get()));
}
std::string Message(const absl::Status& status) { return StatusMessage(status); }

// KwpProvider wraps with AES-KWP (RFC 5649) under a key it shares with its copies: an
// authenticated provider, like PKCS#11's CKM_AES_KEY_WRAP_PAD. `down` makes every call
// UNAVAILABLE.
class KwpProvider : public KekProvider {
 public:
  KwpProvider(std::string kek_id, std::shared_ptr<crypto::AesKeyWrap> wrap)
      : kek_id_(std::move(kek_id)), wrap_(std::move(wrap)) {}
  static std::shared_ptr<crypto::AesKeyWrap> NewKey() {
    auto kek = crypto::RandomSecret(32);
    return std::shared_ptr<crypto::AesKeyWrap>(
        crypto::AesKeyWrap::New(*kek, crypto::AesKeyWrap::Padding::kRfc5649).value().release());
  }

  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    if (down) return UnavailableError("provider down");
    ++wraps;
    return wrap_->Wrap(plaintext.Reveal(InsecureSecretAccess::Get()));
  }
  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    if (down) return UnavailableError("provider down");
    ++unwraps;
    auto plain = wrap_->Unwrap(wrapped);
    if (!plain.ok()) return PermissionDeniedError("refused");
    return plain;
  }
  std::string kek_id() const override { return kek_id_; }
  std::string Describe() const override { return "test KWP " + kek_id_; }

  std::atomic<bool> down{false};
  std::atomic<int> wraps{0};
  std::atomic<int> unwraps{0};

 private:
  std::string kek_id_;
  std::shared_ptr<crypto::AesKeyWrap> wrap_;
};

// XorProvider "encrypts" with a fixed pad: malleable like an unauthenticated cipher (CTR, or
// CBC's last block), to show that the binding's digest catches modified ciphertexts.
class XorProvider : public KekProvider {
 public:
  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    const auto bytes = plaintext.Reveal(InsecureSecretAccess::Get());
    std::vector<uint8_t> out(bytes.begin(), bytes.end());
    for (size_t i = 0; i < out.size(); ++i) out[i] ^= static_cast<uint8_t>(0x5a + i);
    return out;
  }
  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    std::vector<uint8_t> out(wrapped.begin(), wrapped.end());
    for (size_t i = 0; i < out.size(); ++i) out[i] ^= static_cast<uint8_t>(0x5a + i);
    SecretBytes plain(out);
    SecureWipe(out);
    return plain;
  }
  std::string kek_id() const override { return "xor:test"; }
  std::string Describe() const override { return "xor"; }
};

// MemoryStore is a DekStore in a map; `down` makes every call UNAVAILABLE.
class MemoryStore : public DekStore {
 public:
  absl::StatusOr<std::optional<StoredDek>> Get(std::string_view id) override {
    if (down) return UnavailableError("store down");
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(std::string(id));
    if (it == entries_.end()) return std::optional<StoredDek>();
    return std::optional<StoredDek>(it->second);
  }
  absl::StatusOr<StoredDek> CreateIfAbsent(std::string_view id,
                                           std::span<const uint8_t> blob) override {
    if (down) return UnavailableError("store down");
    std::lock_guard<std::mutex> lock(mu_);
    auto [it, inserted] =
        entries_.try_emplace(std::string(id), StoredDek{{blob.begin(), blob.end()}, "1"});
    return it->second;
  }
  absl::Status ReplaceIf(std::string_view id, std::string_view version,
                         std::span<const uint8_t> blob) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = entries_.find(std::string(id));
    if (it == entries_.end()) return NotFoundError("none");
    if (it->second.version != version) return absl::AbortedError("changed");
    it->second =
        StoredDek{{blob.begin(), blob.end()}, std::to_string(std::stoi(it->second.version) + 1)};
    return absl::OkStatus();
  }
  absl::Status List(const std::function<absl::Status(std::string_view id)>& visit) override {
    std::vector<std::string> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [id, unused] : entries_) ids.push_back(id);
    }
    for (const auto& id : ids) RETURN_IF_ERROR(visit(id));
    return absl::OkStatus();
  }
  std::string Describe() const override { return "memory"; }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu_);
    return entries_.size();
  }
  void Set(const std::string& id, std::vector<uint8_t> blob) {
    std::lock_guard<std::mutex> lock(mu_);
    entries_[id] = StoredDek{std::move(blob), "9"};
  }

  std::atomic<bool> down{false};

 private:
  std::mutex mu_;
  std::map<std::string, StoredDek> entries_;
};

// --- The wrapped-DEK format (docs/formats/wrapped-dek.md).

TEST(WrappedDekFormat, ExactBytesAndRoundTrip) {
  const WrappedDek dek{"ab", {1, 2, 3}};
  const std::vector<uint8_t> encoded = EncodeWrappedDek(dek);
  const std::vector<uint8_t> expected = {'K', 'W', 'D', '1', 0, 2, 'a', 'b', 0, 3, 1, 2, 3};
  EXPECT_EQ(encoded, expected);
  auto decoded = DecodeWrappedDek(encoded);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->kek_id, "ab");
  EXPECT_EQ(decoded->wrapped, dek.wrapped);
}

TEST(WrappedDekFormat, EveryMalformedVariantIsDataLoss) {
  const std::vector<uint8_t> good =
      EncodeWrappedDek({"pkcs11:kw/kek", std::vector<uint8_t>(40, 7)});
  std::vector<std::pair<std::string, std::vector<uint8_t>>> cases;
  cases.push_back({"empty", {}});
  cases.push_back({"wrong magic", {'K', 'W', 'D', '2', 0, 1, 'a', 0, 1, 9}});
  cases.push_back({"lower-case magic", {'k', 'w', 'd', '1', 0, 1, 'a', 0, 1, 9}});
  cases.push_back({"empty KEK id", {'K', 'W', 'D', '1', 0, 0, 0, 1, 9}});
  cases.push_back({"KEK id too long", {'K', 'W', 'D', '1', 0x02, 0x01}});
  cases.push_back({"non-printable KEK id", {'K', 'W', 'D', '1', 0, 1, 0x01, 0, 1, 9}});
  cases.push_back({"KEK id with DEL", {'K', 'W', 'D', '1', 0, 1, 0x7f, 0, 1, 9}});
  cases.push_back({"empty ciphertext", {'K', 'W', 'D', '1', 0, 1, 'a', 0, 0}});
  cases.push_back(
      {"ciphertext length over the limit", {'K', 'W', 'D', '1', 0, 1, 'a', 0x10, 0x01}});
  for (size_t cut = 0; cut < good.size(); ++cut) {
    cases.push_back({fmt::format("truncated to {}", cut), {good.begin(), good.begin() + cut}});
  }
  std::vector<uint8_t> trailing = good;
  trailing.push_back(0);
  cases.push_back({"trailing byte", trailing});
  std::vector<uint8_t> longer_kek = good;
  longer_kek[5] += 1;  // KEK id length runs into the ciphertext length
  cases.push_back({"KEK id length off by one", longer_kek});
  std::vector<uint8_t> longer_wrapped = good;
  longer_wrapped[4 + 2 + 13 + 1] += 1;
  cases.push_back({"ciphertext length off by one", longer_wrapped});
  for (const auto& [name, bytes] : cases) {
    auto decoded = DecodeWrappedDek(bytes);
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kDataLoss) << name;
  }
  EXPECT_TRUE(DecodeWrappedDek(good).ok());
}

// --- WrapDek / UnwrapDek and the id binding.

TEST(WrapDek, RoundTripsEveryLength) {
  KwpProvider provider("test:a", KwpProvider::NewKey());
  for (size_t length : {size_t{1}, size_t{16}, size_t{32}, size_t{64}, kMaxDekSize}) {
    auto dek = crypto::RandomSecret(length);
    ASSERT_TRUE(dek.ok());
    auto blob = WrapDek(provider, "disk-1", *dek);
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto parsed = DecodeWrappedDek(*blob);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->kek_id, "test:a");
    auto back = UnwrapDek(provider, "disk-1", *blob);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(Str(*back), Str(*dek));
  }
  for (size_t bad : {size_t{0}, kMaxDekSize + 1}) {
    EXPECT_EQ(WrapDek(provider, "x", SecretBytes(bad)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
}

TEST(WrapDek, BlobCopiedToAnotherIdIsRefused) {
  KwpProvider provider("test:a", KwpProvider::NewKey());
  auto dek = crypto::RandomSecret(32);
  auto blob = WrapDek(provider, "volume-a", *dek);
  ASSERT_TRUE(blob.ok());
  for (std::string other : {"volume-b", "volume-a ", "Volume-a", "", "volume-"}) {
    auto stolen = UnwrapDek(provider, other, *blob);
    EXPECT_EQ(stolen.status().code(), absl::StatusCode::kPermissionDenied) << other;
    EXPECT_THAT(Message(stolen.status()), HasSubstr("another key id"));
  }
}

TEST(WrapDek, BlobMadeUnderAnotherKekIsRefused) {
  KwpProvider a("test:a", KwpProvider::NewKey());
  KwpProvider b("test:b", KwpProvider::NewKey());
  auto dek = crypto::RandomSecret(32);
  auto blob = WrapDek(a, "id", *dek);
  ASSERT_TRUE(blob.ok());
  auto other = UnwrapDek(b, "id", *blob);
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(other.status()), HasSubstr("test:a"));
  EXPECT_THAT(Message(other.status()), HasSubstr("test:b"));
  // The header rewritten to name b's KEK: b's provider refuses the ciphertext.
  auto parsed = DecodeWrappedDek(*blob);
  parsed->kek_id = "test:b";
  auto forged = UnwrapDek(b, "id", EncodeWrappedDek(*parsed));
  EXPECT_EQ(forged.status().code(), absl::StatusCode::kPermissionDenied);
}

TEST(WrapDek, EveryFlippedBitIsRefused) {
  // Authenticated provider: its own check refuses; malleable provider: the binding's digest.
  KwpProvider kwp("test:a", KwpProvider::NewKey());
  XorProvider xor_provider;
  for (KekProvider* provider : std::initializer_list<KekProvider*>{&kwp, &xor_provider}) {
    auto dek = crypto::RandomSecret(32);
    auto blob = WrapDek(*provider, "id", *dek);
    ASSERT_TRUE(blob.ok());
    const size_t header = 4 + 2 + provider->kek_id().size() + 2;
    for (size_t i = header; i < blob->size(); ++i) {
      for (int bit = 0; bit < 8; ++bit) {
        std::vector<uint8_t> tampered = *blob;
        tampered[i] ^= static_cast<uint8_t>(1 << bit);
        auto result = UnwrapDek(*provider, "id", tampered);
        ASSERT_EQ(result.status().code(), absl::StatusCode::kPermissionDenied)
            << provider->Describe() << " byte " << i << " bit " << bit;
        // One answer for all of them: no oracle on where the damage is.
        EXPECT_THAT(Message(result.status()), Not(HasSubstr("another key id")));
      }
    }
  }
}

TEST(WrapDek, ProviderErrorsPassThrough) {
  KwpProvider provider("test:a", KwpProvider::NewKey());
  auto dek = crypto::RandomSecret(32);
  auto blob = WrapDek(provider, "id", *dek);
  provider.down = true;
  EXPECT_EQ(WrapDek(provider, "id", *dek).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(UnwrapDek(provider, "id", *blob).status().code(), absl::StatusCode::kUnavailable);
}

// --- URIs and the registry.

TEST(ByokUri, ParsesAndPercentDecodes) {
  auto uri = ParseByokUri("kms://pkcs11?module=%2Fusr%2Flib%2Fm.so&pin=a%2Bb+c&token=kw&empty=");
  ASSERT_TRUE(uri.ok()) << uri.status();
  EXPECT_EQ(uri->scheme, "kms");
  EXPECT_EQ(uri->name, "pkcs11");
  EXPECT_EQ(uri->params.at("module"), "/usr/lib/m.so");
  EXPECT_EQ(uri->params.at("pin"), "a+b+c");  // '+' is not a space
  EXPECT_EQ(uri->params.at("token"), "kw");
  EXPECT_EQ(uri->params.at("empty"), "");
  auto bare = ParseByokUri("storage://sqlite");
  ASSERT_TRUE(bare.ok());
  EXPECT_TRUE(bare->params.empty());
}

TEST(ByokUri, MalformedIsInvalidArgumentWithoutSecrets) {
  for (std::string bad : {"pkcs11?pin=SECRET1", "kms://", "kms://a/b?pin=SECRET1",
                          "kms://a?pin=SECRET1%zz", "kms://a?pin=SECRET1%4",
                          "kms://a?pin=1&pin=SECRET1", "kms://a?=SECRET1", "://a?pin=SECRET1"}) {
    auto uri = ParseByokUri(bad);
    EXPECT_EQ(uri.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(Message(uri.status()), Not(HasSubstr("SECRET1"))) << bad;
  }
}

TEST(ByokUri, UnknownProviderNamesTheKnownOnes) {
  RegisterAllProviders();
  auto provider = OpenKekProvider("kms://nope?pin=1");
  EXPECT_EQ(provider.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(provider.status()), HasSubstr("kms://pkcs11"));
  auto store = OpenDekStore("storage://nope");
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Message(store.status()), HasSubstr("storage://sqlite"));
  EXPECT_EQ(OpenKekProvider("storage://sqlite?path=x").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OpenDekStore("kms://pkcs11").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ByokUri, ProviderErrorsNeverQuoteThePin) {
  RegisterAllProviders();
  for (std::string uri :
       {"kms://pkcs11?module=/nonexistent/m.so&token=t&pin=SECRETPIN&key=k",
        "kms://pkcs11?module=/nonexistent/m.so&token=t&pin=SECRETPIN",
        "kms://pkcs11?module=/nonexistent/m.so&token=t&pin=SECRETPIN&key=k&extra=1"}) {
    auto provider = OpenKekProvider(uri);
    EXPECT_FALSE(provider.ok());
    EXPECT_THAT(Message(provider.status()), Not(HasSubstr("SECRETPIN"))) << uri;
  }
}

TEST(ByokUri, CheckUriParamsNamesTheParameter) {
  UriParams params{{"path", "x"}, {"typo", "1"}};
  auto status = CheckUriParams(params, {"path"}, {"timeout"}, "storage://sqlite");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(status), HasSubstr("typo"));
  status = CheckUriParams({{"path", ""}}, {"path"}, {}, "storage://sqlite");
  EXPECT_THAT(Message(status), HasSubstr("path="));
  EXPECT_TRUE(CheckUriParams({{"path", "x"}}, {"path"}, {}, "s").ok());
}

TEST(ByokUri, RedactUriHidesSecretValues) {
  EXPECT_EQ(RedactUri("kms://pkcs11?module=/m.so&token=kw&pin=1234&key=kek"),
            "kms://pkcs11?module=/m.so&token=kw&pin=***&key=***");
  EXPECT_EQ(RedactUri("storage://aws?bucket=b&accessKeyID=AKIA&accessKey=s3cr3t&region=r"),
            "storage://aws?bucket=b&accessKeyID=AKIA&accessKey=***&region=r");
  EXPECT_EQ(RedactUri("kms://azure?clientSecret=x&ClientSecret=y&PIN=z&p%69n=w"),
            "kms://azure?clientSecret=***&ClientSecret=***&PIN=***&p%69n=***");
  EXPECT_EQ(RedactUri("storage://sqlite?path=/a"), "storage://sqlite?path=/a");
  EXPECT_EQ(RedactUri("storage://sqlite"), "storage://sqlite");
}

// --- The SQLite DEK store.

std::unique_ptr<DekStore> OpenSqlite(const std::filesystem::path& path) {
  auto store = NewSqliteDekStore(path.string());
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

std::vector<uint8_t> Bytes(std::string_view text) { return {text.begin(), text.end()}; }

TEST(SqliteDekStore, ConditionalWrites) {
  testing::TempDir dir;
  auto store = OpenSqlite(dir / "deks.db");
  ASSERT_NE(store, nullptr);
  EXPECT_FALSE(store->Get("a").value().has_value());
  auto first = store->CreateIfAbsent("a", Bytes("one"));
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->blob, Bytes("one"));
  auto second = store->CreateIfAbsent("a", Bytes("two"));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->blob, Bytes("one"));  // the first writer's entry stays
  EXPECT_EQ(second->version, first->version);

  EXPECT_TRUE(store->ReplaceIf("a", first->version, Bytes("three")).ok());
  EXPECT_EQ(store->ReplaceIf("a", first->version, Bytes("four")).code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(store->ReplaceIf("b", "1", Bytes("x")).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->ReplaceIf("a", "not-a-number", Bytes("x")).code(),
            absl::StatusCode::kInvalidArgument);
  auto now = store->Get("a");
  ASSERT_TRUE(now.ok() && now->has_value());
  EXPECT_EQ((*now)->blob, Bytes("three"));
  EXPECT_NE((*now)->version, first->version);

  // Survives reopening; the file is private.
  store.reset();
  store = OpenSqlite(dir / "deks.db");
  EXPECT_EQ(store->Get("a").value()->blob, Bytes("three"));
  EXPECT_EQ(std::filesystem::status(dir / "deks.db").permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_read | std::filesystem::perms::owner_write);
}

TEST(SqliteDekStore, ListIsOrderedPagedAndStoppable) {
  testing::TempDir dir;
  auto store = OpenSqlite(dir / "deks.db");
  std::set<std::string> ids;
  for (int i = 0; i < 600; ++i) ids.insert(fmt::format("id-{}", i * 7919 % 600));
  for (const auto& id : ids) ASSERT_TRUE(store->CreateIfAbsent(id, Bytes("x")).ok());
  std::vector<std::string> listed;
  ASSERT_TRUE(store
                  ->List([&](std::string_view id) {
                    listed.emplace_back(id);
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(listed, std::vector<std::string>(ids.begin(), ids.end()));
  int seen = 0;
  auto stopped = store->List([&](std::string_view) {
    return ++seen == 3 ? absl::CancelledError("stop") : absl::OkStatus();
  });
  EXPECT_EQ(stopped.code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(seen, 3);
}

TEST(SqliteDekStore, RefusesAFileThatIsNotAKeywardenDatabase) {
  testing::TempDir dir;
  dir.WriteFile("text.db", "this is not SQLite, it is plain text and long enough to matter....");
  EXPECT_FALSE(NewSqliteDekStore((dir / "text.db").string()).ok());
  RegisterAllProviders();
  EXPECT_EQ(OpenDekStore("storage://sqlite").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SqliteDekStore, TwoConnectionsRacingCreateOneWinnerPerId) {
  testing::TempDir dir;
  auto a = OpenSqlite(dir / "deks.db");
  auto b = OpenSqlite(dir / "deks.db");
  constexpr int kIds = 40;
  std::vector<std::string> winner_a(kIds), winner_b(kIds);
  std::thread ta([&] {
    for (int i = 0; i < kIds; ++i) {
      winner_a[i] = Str(a->CreateIfAbsent(fmt::format("{}", i), Bytes("a")).value().blob);
    }
  });
  std::thread tb([&] {
    for (int i = 0; i < kIds; ++i) {
      winner_b[i] = Str(b->CreateIfAbsent(fmt::format("{}", i), Bytes("b")).value().blob);
    }
  });
  ta.join();
  tb.join();
  EXPECT_EQ(winner_a, winner_b);
}

// --- UserManagedKeys.

UserManagedOptions Options(size_t entries, std::chrono::milliseconds ttl = std::chrono::minutes(5),
                           service::AuditLog* audit = nullptr) {
  UserManagedOptions options;
  options.cache_entries = entries;
  options.cache_ttl = ttl;
  options.audit = audit;
  return options;
}

struct Fixture {
  std::shared_ptr<crypto::AesKeyWrap> key = KwpProvider::NewKey();
  KwpProvider* provider = nullptr;
  MemoryStore* store = nullptr;
  std::unique_ptr<UserManagedKeys> keys;

  explicit Fixture(UserManagedOptions options = {}) {
    auto p = std::make_unique<KwpProvider>("test:kek", key);
    auto s = std::make_unique<MemoryStore>();
    provider = p.get();
    store = s.get();
    keys = UserManagedKeys::New(std::move(p), std::move(s), options).value();
  }
};

TEST(UserManagedKeys, FirstRequestCreatesLaterOnesReturnTheSameKey) {
  Fixture f;
  auto first = f.keys->GetDataKey("disk", 32);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(first->size(), 32u);
  EXPECT_EQ(f.store->size(), 1u);
  auto again = f.keys->GetDataKey("disk", 32);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(Str(*again), Str(*first));
  auto other = f.keys->GetDataKey("disk2", 32);
  EXPECT_NE(Str(*other), Str(*first));
  // Another instance (a replica; no cache) unwraps the stored DEK.
  auto blob = f.store->Get("disk").value()->blob;
  auto replica_store = std::make_unique<MemoryStore>();
  replica_store->Set("disk", blob);
  auto replica = UserManagedKeys::New(std::make_unique<KwpProvider>("test:kek", f.key),
                                      std::move(replica_store))
                     .value();
  EXPECT_EQ(Str(replica->GetDataKey("disk", 32).value()), Str(*first));
}

TEST(UserManagedKeys, RejectsBadRequests) {
  Fixture f;
  EXPECT_EQ(f.keys->GetDataKey("", 32).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.keys->GetDataKey(std::string(1025, 'a'), 32).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.keys->GetDataKey("a", 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.keys->GetDataKey("a", kMaxDekSize + 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store->size(), 0u);
  ASSERT_TRUE(f.keys->GetDataKey("a", 32).ok());
  auto wrong_length = f.keys->GetDataKey("a", 64);
  EXPECT_EQ(wrong_length.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Message(wrong_length.status()), HasSubstr("32 bytes"));
}

TEST(UserManagedKeys, ProviderDownIsUnavailableAndCreatesNothing) {
  Fixture f;
  f.provider->down = true;
  EXPECT_EQ(f.keys->GetDataKey("new", 32).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(f.store->size(), 0u);
  f.provider->down = false;
  EXPECT_TRUE(f.keys->GetDataKey("new", 32).ok());
  EXPECT_EQ(f.store->size(), 1u);
}

TEST(UserManagedKeys, StoreDownIsUnavailable) {
  Fixture f;
  f.store->down = true;
  EXPECT_EQ(f.keys->GetDataKey("new", 32).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(f.provider->wraps.load(), 0);
}

TEST(UserManagedKeys, TamperedOrSwappedBlobIsRefused) {
  Fixture f(Options(0));
  ASSERT_TRUE(f.keys->GetDataKey("a", 32).ok());
  ASSERT_TRUE(f.keys->GetDataKey("b", 32).ok());
  auto blob_a = f.store->Get("a").value()->blob;
  auto blob_b = f.store->Get("b").value()->blob;
  f.store->Set("a", blob_b);
  f.store->Set("b", blob_a);
  EXPECT_EQ(f.keys->GetDataKey("a", 32).status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(f.keys->GetDataKey("b", 32).status().code(), absl::StatusCode::kPermissionDenied);
  blob_a.back() ^= 1;
  f.store->Set("a", blob_a);
  EXPECT_EQ(f.keys->GetDataKey("a", 32).status().code(), absl::StatusCode::kPermissionDenied);
  f.store->Set("a", {1, 2, 3});
  EXPECT_EQ(f.keys->GetDataKey("a", 32).status().code(), absl::StatusCode::kDataLoss);
}

TEST(UserManagedKeys, PreviousKekUnwrapsOldBlobsWhileNewDeksUseTheCurrentOne) {
  // Blobs made under the old KEK ("a") and one under a KEK the service does not know ("x").
  const auto old_key = KwpProvider::NewKey();
  const auto new_key = KwpProvider::NewKey();
  const auto unknown_key = KwpProvider::NewKey();
  auto old_provider = std::make_unique<KwpProvider>("test:old", old_key);
  const SecretBytes dek_a = crypto::RandomSecret(32).value();
  auto store = std::make_unique<MemoryStore>();
  store->Set("a", WrapDek(*old_provider, "a", dek_a).value());
  KwpProvider unknown("test:unknown", unknown_key);
  store->Set("x", WrapDek(unknown, "x", dek_a).value());
  MemoryStore* raw_store = store.get();

  std::vector<std::unique_ptr<KekProvider>> previous;
  previous.push_back(std::move(old_provider));
  auto keys = UserManagedKeys::New(std::make_unique<KwpProvider>("test:new", new_key),
                                   std::move(store), Options(0), std::move(previous))
                  .value();
  EXPECT_THAT(keys->Describe(), HasSubstr("previous KEK test:old"));
  // The old blob unwraps at the previous KEK, to the same DEK.
  EXPECT_EQ(Str(keys->GetDataKey("a", 32).value()), Str(dek_a));
  // A new id is wrapped under the current KEK.
  ASSERT_TRUE(keys->GetDataKey("b", 32).ok());
  EXPECT_EQ(DecodeWrappedDek(raw_store->Get("b").value()->blob).value().kek_id, "test:new");
  // Rewrapped under the new KEK (what `kek rotate` does), "a" still gives the same DEK.
  KwpProvider new_provider("test:new", new_key);
  raw_store->Set("a", WrapDek(new_provider, "a", dek_a).value());
  EXPECT_EQ(Str(keys->GetDataKey("a", 32).value()), Str(dek_a));
  // A blob under a KEK that is neither is refused, naming the KEKs.
  auto x = keys->GetDataKey("x", 32);
  EXPECT_EQ(x.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(Message(x.status()), HasSubstr("test:unknown"));
  // The current KEK cannot also be a previous one.
  std::vector<std::unique_ptr<KekProvider>> same;
  same.push_back(std::make_unique<KwpProvider>("test:new", new_key));
  EXPECT_EQ(UserManagedKeys::New(std::make_unique<KwpProvider>("test:new", new_key),
                                 std::make_unique<MemoryStore>(), {}, std::move(same))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UserManagedKeys, CacheIsBoundedAndExpires) {
  Fixture none(Options(0));
  ASSERT_TRUE(none.keys->GetDataKey("a", 32).ok());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(none.keys->GetDataKey("a", 32).ok());
  EXPECT_EQ(none.provider->unwraps.load(), 3);

  Fixture two(Options(2));
  for (std::string id : {"a", "b", "c"}) ASSERT_TRUE(two.keys->GetDataKey(id, 32).ok());
  EXPECT_EQ(two.provider->unwraps.load(), 0);  // made here: cached without an unwrap
  ASSERT_TRUE(two.keys->GetDataKey("c", 32).ok());
  ASSERT_TRUE(two.keys->GetDataKey("b", 32).ok());
  EXPECT_EQ(two.provider->unwraps.load(), 0);
  ASSERT_TRUE(two.keys->GetDataKey("a", 32).ok());  // evicted (least recently used)
  EXPECT_EQ(two.provider->unwraps.load(), 1);

  Fixture ttl(Options(4096, std::chrono::milliseconds(50)));
  ASSERT_TRUE(ttl.keys->GetDataKey("a", 32).ok());
  ASSERT_TRUE(ttl.keys->GetDataKey("a", 32).ok());
  EXPECT_EQ(ttl.provider->unwraps.load(), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(120));
  ASSERT_TRUE(ttl.keys->GetDataKey("a", 32).ok());
  EXPECT_EQ(ttl.provider->unwraps.load(), 1);
}

TEST(UserManagedKeys, ReplicasRacingFirstRequestsGetOneDekPerId) {
  // Two replicas (two UserManagedKeys, two SQLite connections to one file, no cache) and four
  // threads each, all asking for the same fresh ids at once.
  testing::TempDir dir;
  auto key = KwpProvider::NewKey();
  std::vector<std::unique_ptr<UserManagedKeys>> replicas;
  for (int r = 0; r < 2; ++r) {
    replicas.push_back(UserManagedKeys::New(std::make_unique<KwpProvider>("test:kek", key),
                                            OpenSqlite(dir / "deks.db"), Options(0))
                           .value());
  }
  constexpr int kIds = 30;
  constexpr int kThreads = 8;
  std::vector<std::vector<std::string>> seen(kThreads, std::vector<std::string>(kIds));
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIds; ++i) {
        auto dek = replicas[t % 2]->GetDataKey(fmt::format("id-{}", i), 32);
        if (!dek.ok()) {
          ++errors;
          continue;
        }
        seen[t][i] = Str(*dek);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]) << "thread " << t;
  auto store = OpenSqlite(dir / "deks.db");
  int rows = 0;
  ASSERT_TRUE(store
                  ->List([&](std::string_view) {
                    ++rows;
                    return absl::OkStatus();
                  })
                  .ok());
  EXPECT_EQ(rows, kIds);
}

TEST(UserManagedKeys, AuditRecordsDecisionsWithoutKeyBytes) {
  testing::TempDir dir;
  auto audit = service::AuditLog::Open(dir / "audit.log").value();
  Fixture f(Options(0, std::chrono::minutes(5), audit.get()));
  auto dek = f.keys->GetDataKey("vol-1", 32);
  ASSERT_TRUE(dek.ok());
  ASSERT_TRUE(f.keys->GetDataKey("vol-1", 32).ok());
  auto blob = f.store->Get("vol-1").value()->blob;
  f.store->Set("vol-2", blob);  // copied to another id
  EXPECT_FALSE(f.keys->GetDataKey("vol-2", 32).ok());
  audit.reset();
  const std::string text = testing::ReadFile(dir / "audit.log").value();
  EXPECT_THAT(text, HasSubstr("\"wrap\""));
  EXPECT_THAT(text, HasSubstr("\"create\""));
  EXPECT_THAT(text, HasSubstr("\"unwrap\""));
  EXPECT_THAT(text, HasSubstr("another key id"));
  EXPECT_THAT(text, Not(HasSubstr(crypto::HexEncode(dek->Reveal(InsecureSecretAccess::Get())))));
  EXPECT_THAT(text, Not(HasSubstr(crypto::Base64Encode(dek->Reveal(InsecureSecretAccess::Get())))));
  EXPECT_THAT(text, Not(HasSubstr(Str(*dek))));
  EXPECT_EQ(service::VerifyAuditLog(dir / "audit.log").value(), 4u);
}

}  // namespace
}  // namespace keywarden::byok
