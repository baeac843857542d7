// The PKCS#11 KEK provider against real SoftHSM2 tokens, and `keywarden serve --kms
// kms://pkcs11?... --storage storage://sqlite?...` end to end: GetDataKey, restarts, two
// replicas racing, a provider that is down, tampered blobs, `keywarden dek recover`, the audit
// log.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <thread>

#include "keywarden/byok/byok.h"
#include "keywarden/byok/pkcs11.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/service/audit.h"
#include "keywarden/status.h"
#include "tests/service_process.h"
#include "tests/softhsm.h"
#include "tests/subprocess.h"

namespace keywarden::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string Str(const SecretBytes& secret) {
  const auto bytes = secret.Reveal(InsecureSecretAccess::Get());
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::unique_ptr<byok::KekProvider> OpenProvider(const std::string& uri) {
  byok::RegisterAllProviders();
  auto provider = byok::OpenKekProvider(uri);
  EXPECT_TRUE(provider.ok()) << provider.status();
  return provider.ok() ? *std::move(provider) : nullptr;
}

// Rows returns the ids the SQLite DEK store at `path` holds.
std::vector<std::string> Rows(const std::filesystem::path& path) {
  std::vector<std::string> ids;
  auto store = byok::NewSqliteDekStore(path.string());
  EXPECT_TRUE(store.ok()) << store.status();
  if (!store.ok()) return ids;
  EXPECT_TRUE((*store)
                  ->List([&](std::string_view id) {
                    ids.emplace_back(id);
                    return absl::OkStatus();
                  })
                  .ok());
  return ids;
}

// SqlExec runs one statement on the DEK store file, as an attacker with write access would.
void SqlExec(const std::filesystem::path& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error);
  EXPECT_EQ(rc, SQLITE_OK) << (error ? error : "") << " in " << sql;
  sqlite3_free(error);
  sqlite3_close(db);
}

TEST(Pkcs11Provider, WrapsAndUnwrapsAtTheToken) {
  SoftHsm hsm;
  ASSERT_TRUE(hsm.ok());
  ASSERT_TRUE(hsm.CreateAesKey("kek").ok());
  ASSERT_TRUE(hsm.CreateAesKey("other").ok());
  auto provider = OpenProvider(hsm.KmsUri("kek"));
  ASSERT_NE(provider, nullptr);
  EXPECT_EQ(provider->kek_id(), "pkcs11:kw/kek");
  EXPECT_THAT(provider->Describe(), Not(HasSubstr(SoftHsm::kPin)));

  for (size_t length : {size_t{1}, size_t{32}, byok::kMaxDekSize}) {
    auto dek = crypto::RandomSecret(length);
    auto blob = byok::WrapDek(*provider, "disk-1", *dek);
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto back = byok::UnwrapDek(*provider, "disk-1", *blob);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(Str(*back), Str(*dek));
  }

  auto dek = crypto::RandomSecret(32);
  auto blob = byok::WrapDek(*provider, "disk-1", *dek);
  ASSERT_TRUE(blob.ok());
  // RFC 5649: the 113-byte binding plaintext padded to 120, plus 8.
  EXPECT_EQ(byok::DecodeWrappedDek(*blob)->wrapped.size(), 128u);

  // Copied to another id.
  auto copied = byok::UnwrapDek(*provider, "disk-2", *blob);
  EXPECT_EQ(copied.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(StatusMessage(copied.status()), HasSubstr("another key id"));
  // Tampered ciphertext: the HSM's RFC 5649 check refuses it.
  for (size_t i : {blob->size() - 1, blob->size() - 60, blob->size() - 127}) {
    std::vector<uint8_t> tampered = *blob;
    tampered[i] ^= 0x01;
    EXPECT_EQ(byok::UnwrapDek(*provider, "disk-1", tampered).status().code(),
              absl::StatusCode::kPermissionDenied)
        << i;
  }
  // Made under another KEK (another key label on the same token).
  auto other = OpenProvider(hsm.KmsUri("other"));
  ASSERT_NE(other, nullptr);
  auto refused = byok::UnwrapDek(*other, "disk-1", *blob);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(refused.status()), HasSubstr("pkcs11:kw/kek"));
  auto parsed = byok::DecodeWrappedDek(*blob);
  parsed->kek_id = other->kek_id();
  EXPECT_EQ(byok::UnwrapDek(*other, "disk-1", byok::EncodeWrappedDek(*parsed)).status().code(),
            absl::StatusCode::kPermissionDenied);

  // Many threads share the session pool.
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        const std::string id = fmt::format("t{}-{}", t, i);
        auto key = crypto::RandomSecret(32);
        auto wrapped = byok::WrapDek(*provider, id, *key);
        auto unwrapped = wrapped.ok() ? byok::UnwrapDek(*provider, id, *wrapped)
                                      : absl::StatusOr<SecretBytes>(wrapped.status());
        if (!unwrapped.ok() || Str(*unwrapped) != Str(*key)) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
}

TEST(Pkcs11Provider, ClearErrorsAtStart) {
  SoftHsm hsm;
  ASSERT_TRUE(hsm.ok());
  ASSERT_TRUE(hsm.CreateAesKey("kek").ok());
  EXPECT_EQ(hsm.CreateAesKey("kek").code(), absl::StatusCode::kAlreadyExists);
  byok::RegisterAllProviders();
  const std::string secret_pin = "87654321";

  auto no_module = byok::OpenKekProvider(
      "kms://pkcs11?module=/nonexistent/libnone.so&token=kw&pin=" + secret_pin + "&key=kek");
  EXPECT_EQ(no_module.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(no_module.status()), HasSubstr("/nonexistent/libnone.so"));

  auto not_a_module = byok::OpenKekProvider(
      "kms://pkcs11?module=/usr/lib/x86_64-linux-gnu/"
      "libc.so.6&token=kw&pin=1234&key=kek");
  EXPECT_FALSE(not_a_module.ok());

  auto wrong_pin = byok::OpenKekProvider(hsm.KmsUri("kek", secret_pin));
  EXPECT_EQ(wrong_pin.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(StatusMessage(wrong_pin.status()), HasSubstr("CKR_PIN_INCORRECT"));
  EXPECT_THAT(StatusMessage(wrong_pin.status()), Not(HasSubstr(secret_pin)));

  auto no_token = byok::OpenKekProvider("kms://pkcs11?module=" + SoftHsm::module() +
                                        "&token=missing&pin=1234&key=kek");
  EXPECT_EQ(no_token.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(no_token.status()), HasSubstr("no token labelled \"missing\""));

  auto no_key = byok::OpenKekProvider(hsm.KmsUri("nokey"));
  EXPECT_EQ(no_key.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(no_key.status()), HasSubstr("no secret key labelled \"nokey\""));

  auto missing_param = byok::OpenKekProvider("kms://pkcs11?module=" + SoftHsm::module() +
                                             "&token=kw&pin=" + secret_pin);
  EXPECT_EQ(missing_param.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusMessage(missing_param.status()), HasSubstr("key="));
  EXPECT_THAT(StatusMessage(missing_param.status()), Not(HasSubstr(secret_pin)));

  // After all that, the right configuration still works in this process.
  EXPECT_NE(OpenProvider(hsm.KmsUri("kek")), nullptr);
}

// A user-managed `keywarden serve` on a SoftHSM key and an SQLite DEK store.
class UserManagedServe : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(hsm_.ok());
    ASSERT_TRUE(hsm_.CreateAesKey("kek").ok());
  }

  std::string kms() const { return hsm_.KmsUri("kek"); }
  std::string storage() const { return "storage://sqlite?path=" + db().string(); }
  std::filesystem::path db() const { return dir_ / "deks.db"; }

  std::unique_ptr<ServiceProcess> Serve(const std::string& name,
                                        std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--kms",   kms(),   "--storage",
                                     storage(), "--dir", (dir_ / name).string()};
    args.insert(args.end(), extra.begin(), extra.end());
    auto process = std::make_unique<ServiceProcess>(args, dir_ / (name + ".stderr"));
    EXPECT_TRUE(process->Start()) << process->stderr_text();
    return process;
  }

  RunResult Recover(const std::string& id, std::vector<std::string> extra = {}) {
    std::vector<std::string> argv = {KEYWARDEN_BINARY, "dek",     "recover", "--kms", kms(),
                                     "--storage",      storage(), "--id",    id};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return keywarden::testing::Run(argv);
  }

  TempDir dir_;
  SoftHsm hsm_;
};

TEST_F(UserManagedServe, AnswersGetDataKeyAcrossRestartsAndRecoverPrintsTheSameKey) {
  std::string key;
  {
    auto serve = Serve("a");
    KmsClient client(serve->endpoint());
    EXPECT_EQ(client.HealthStatus("kms.API"), 1);
    const CallResult first = client.GetDataKey("disk-1", 32);
    ASSERT_TRUE(first.ok()) << first.message;
    ASSERT_EQ(first.key.size(), 32u);
    key = first.key;
    EXPECT_EQ(client.GetDataKey("disk-1", 32).key, key);
    const CallResult wrong_length = client.GetDataKey("disk-1", 64);
    EXPECT_EQ(wrong_length.code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(client.GetDataKey("", 32).code, grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_EQ(client.GetDataKey("x", 300).code, grpc::StatusCode::INVALID_ARGUMENT);
    const CallResult other = client.GetDataKey("disk-2", 64);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(other.key.size(), 64u);
    EXPECT_EQ(serve->Stop(), 0) << serve->stderr_text();
    EXPECT_THAT(serve->stderr_text(), Not(HasSubstr("pin=1234")));
    EXPECT_THAT(serve->stderr_text(), HasSubstr("pin=***"));
  }
  {
    auto serve = Serve("a");
    KmsClient client(serve->endpoint());
    EXPECT_EQ(client.GetDataKey("disk-1", 32).key, key);
  }
  const RunResult recovered = Recover("disk-1");
  ASSERT_TRUE(recovered.ok()) << recovered;
  EXPECT_EQ(recovered.stdout_text, HexOf(key) + "\n");
  EXPECT_FALSE(Recover("disk-1", {"--length", "16"}).ok());
  const RunResult missing = Recover("never-made");
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_THAT(missing.stderr_text, HasSubstr("holds no DEK"));
  EXPECT_EQ(Rows(db()), (std::vector<std::string>{"disk-1", "disk-2"}));

  // The audit log records the decisions and holds no key bytes.
  const std::string audit = ReadFile(dir_ / "a" / "audit.log").value_or("");
  EXPECT_THAT(audit, HasSubstr("\"create\""));
  EXPECT_THAT(audit, HasSubstr("\"unwrap\""));
  EXPECT_THAT(audit, HasSubstr("disk-1"));
  EXPECT_THAT(audit, Not(HasSubstr(HexOf(key))));
  EXPECT_THAT(audit, Not(HasSubstr(key)));
  EXPECT_TRUE(service::VerifyAuditLog(dir_ / "a" / "audit.log").ok());
}

TEST_F(UserManagedServe, TwoReplicasRacingFirstRequestsGetOneDekPerId) {
  auto a = Serve("a", {"--dek-cache-entries", "0"});
  auto b = Serve("b", {"--dek-cache-entries", "0"});
  constexpr int kIds = 40;
  constexpr int kThreads = 4;
  std::vector<std::vector<std::string>> seen(kThreads, std::vector<std::string>(kIds));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      KmsClient client(t % 2 == 0 ? a->endpoint() : b->endpoint());
      for (int i = 0; i < kIds; ++i) {
        const CallResult result = client.GetDataKey(fmt::format("vol-{}", i), 32);
        if (!result.ok()) {
          ++failures;
          ADD_FAILURE() << result.message;
        }
        seen[t][i] = result.key;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]) << "thread " << t;
  for (int i = 0; i < kIds; ++i) EXPECT_EQ(seen[0][i].size(), 32u);
  EXPECT_EQ(Rows(db()).size(), static_cast<size_t>(kIds));
  // Both replicas keep answering the same keys afterwards.
  KmsClient ca(a->endpoint()), cb(b->endpoint());
  for (int i = 0; i < kIds; i += 7) {
    EXPECT_EQ(ca.GetDataKey(fmt::format("vol-{}", i), 32).key, seen[0][i]);
    EXPECT_EQ(cb.GetDataKey(fmt::format("vol-{}", i), 32).key, seen[0][i]);
  }
}

// A KEK rotation while the service keeps answering: `serve --kms NEW --kms-previous OLD` serves
// every DEK, under whichever KEK its blob is at that moment, while `keywarden kek rotate` moves
// them; no answer changes, and new ids made during the rotation are wrapped under NEW.
TEST_F(UserManagedServe, ServesEveryDekUnchangedWhileAKekRotationRuns) {
  constexpr int kIds = 150;
  std::vector<std::string> keys(kIds);
  {
    auto serve = Serve("old");
    KmsClient client(serve->endpoint());
    for (int i = 0; i < kIds; ++i) {
      const CallResult r = client.GetDataKey(fmt::format("vol-{}", i), 32);
      ASSERT_TRUE(r.ok()) << r.message;
      keys[i] = r.key;
    }
  }
  ASSERT_TRUE(hsm_.CreateAesKey("new").ok());
  const std::string new_kms = hsm_.KmsUri("new");

  // Without --kms-previous, a DEK still under the old KEK is refused, naming that KEK.
  {
    std::vector<std::string> args = {"--kms",   new_kms, "--storage",
                                     storage(), "--dir", (dir_ / "new-only").string()};
    ServiceProcess serve(args, dir_ / "new-only.stderr");
    ASSERT_TRUE(serve.Start()) << serve.stderr_text();
    const CallResult r = KmsClient(serve.endpoint()).GetDataKey("vol-0", 32);
    EXPECT_EQ(r.code, grpc::StatusCode::FAILED_PRECONDITION) << r.message;
    EXPECT_THAT(r.message, HasSubstr("pkcs11:kw/kek"));
  }

  std::vector<std::string> args = {"--kms",
                                   new_kms,
                                   "--kms-previous",
                                   kms(),
                                   "--storage",
                                   storage(),
                                   "--dir",
                                   (dir_ / "both").string(),
                                   "--dek-cache-entries",
                                   "0"};
  ServiceProcess serve(args, dir_ / "both.stderr");
  ASSERT_TRUE(serve.Start()) << serve.stderr_text();
  std::atomic<bool> rotating{true};
  std::atomic<int> answers{0}, wrong{0}, failed{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      KmsClient client(serve.endpoint());
      // Round and round the ids until the rotation has ended, then one more request.
      for (int n = t;; n += 3) {
        const bool last = !rotating.load();
        const int i = n % kIds;
        const CallResult r = client.GetDataKey(fmt::format("vol-{}", i), 32);
        if (!r.ok()) {
          ++failed;
          ADD_FAILURE() << r.message;
        } else if (r.key != keys[i]) {
          ++wrong;
        }
        ++answers;
        if (last) break;
      }
    });
  }
  // A new id made during the rotation.
  const CallResult fresh = KmsClient(serve.endpoint()).GetDataKey("made-during-rotation", 32);
  ASSERT_TRUE(fresh.ok()) << fresh.message;
  const RunResult rotated = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "kek", "rotate", "--kms", kms(), "--to", new_kms, "--storage", storage()});
  rotating = false;
  for (auto& reader : readers) reader.join();
  ASSERT_TRUE(rotated.ok()) << rotated;
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(wrong.load(), 0) << "a DEK changed during the rotation";
  EXPECT_GT(answers.load(), kIds);

  // Every blob is under the new KEK now, the fresh one from the start.
  auto store = byok::NewSqliteDekStore(db().string()).value();
  for (const std::string& id : Rows(db())) {
    auto entry = store->Get(id).value();
    ASSERT_TRUE(entry.has_value());
    EXPECT_EQ(byok::DecodeWrappedDek(entry->blob).value().kek_id, "pkcs11:kw/new") << id;
  }
  // The audit log says which KEK each unwrap used.
  const std::string audit = ReadFile(dir_ / "both" / "audit.log").value_or("");
  EXPECT_THAT(audit, HasSubstr("unwrapped under the previous KEK pkcs11:kw/kek"));
  EXPECT_THAT(audit, HasSubstr("wrapped a new 32-byte DEK under KEK pkcs11:kw/new"));
  EXPECT_EQ(serve.Stop(), 0) << serve.stderr_text();

  // After the rotation the old KEK is no longer needed: the same keys from NEW alone.
  std::vector<std::string> after_args = {"--kms",   new_kms, "--storage",
                                         storage(), "--dir", (dir_ / "after").string()};
  ServiceProcess after(after_args, dir_ / "after.stderr");
  ASSERT_TRUE(after.Start()) << after.stderr_text();
  KmsClient client(after.endpoint());
  for (int i = 0; i < kIds; i += 5) {
    EXPECT_EQ(client.GetDataKey(fmt::format("vol-{}", i), 32).key, keys[i]) << i;
  }
  EXPECT_EQ(client.GetDataKey("made-during-rotation", 32).key, fresh.key);
}

TEST_F(UserManagedServe, ProviderDownAtStartIsAClearErrorAndCreatesNothing) {
  const std::string pin = "87654321";
  for (const std::string& uri :
       {std::string("kms://pkcs11?module=/nonexistent/libnone.so&token=kw&pin=") + pin + "&key=kek",
        hsm_.KmsUri("kek", pin), hsm_.KmsUri("missing")}) {
    const RunResult r =
        keywarden::testing::Run({KEYWARDEN_BINARY, "serve", "--kms", uri, "--storage", storage(),
                                 "--dir", (dir_ / "s").string(), "--listen", "127.0.0.1:0"});
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_THAT(r.stderr_text, HasSubstr("cannot open the KEK provider")) << r;
    EXPECT_THAT(r.stderr_text, Not(HasSubstr(pin))) << r;
    EXPECT_THAT(r.stdout_text, Not(HasSubstr("listening"))) << r;
  }
  EXPECT_FALSE(std::filesystem::exists(db()));
}

TEST_F(UserManagedServe, TokenRemovedAtRunTimeIsUnavailableAndCreatesNothing) {
  auto serve = Serve("a", {"--dek-cache-entries", "0"});
  KmsClient client(serve->endpoint());
  ASSERT_TRUE(client.GetDataKey("before", 32).ok());
  const RunResult deleted = hsm_.DeleteToken();
  ASSERT_TRUE(deleted.ok()) << deleted;
  const CallResult after = client.GetDataKey("after", 32);
  EXPECT_EQ(after.code, grpc::StatusCode::UNAVAILABLE) << after.message;
  const CallResult old = client.GetDataKey("before", 32);
  EXPECT_EQ(old.code, grpc::StatusCode::UNAVAILABLE) << old.message;
  EXPECT_EQ(Rows(db()), std::vector<std::string>{"before"});
}

TEST_F(UserManagedServe, TamperedOrSwappedBlobInSqliteIsRefused) {
  auto serve = Serve("a", {"--dek-cache-entries", "0"});
  KmsClient client(serve->endpoint());
  for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(client.GetDataKey(id, 32).ok());
  // a: last ciphertext byte flipped; b: c's blob.
  SqlExec(db(),
          "UPDATE keywarden_deks SET blob = substr(blob, 1, length(blob) - 1) || "
          "x'00' WHERE id = 'a' AND substr(blob, length(blob), 1) != x'00';"
          "UPDATE keywarden_deks SET blob = substr(blob, 1, length(blob) - 1) || "
          "x'01' WHERE id = 'a' AND substr(blob, length(blob), 1) = x'00';");
  SqlExec(db(),
          "UPDATE keywarden_deks SET blob = (SELECT blob FROM keywarden_deks WHERE id = "
          "'c') WHERE id = 'b'");
  const CallResult a = client.GetDataKey("a", 32);
  EXPECT_EQ(a.code, grpc::StatusCode::PERMISSION_DENIED) << a.message;
  EXPECT_TRUE(a.key.empty());
  const CallResult b = client.GetDataKey("b", 32);
  EXPECT_EQ(b.code, grpc::StatusCode::PERMISSION_DENIED) << b.message;
  EXPECT_THAT(b.message, HasSubstr("another key id"));
  EXPECT_TRUE(client.GetDataKey("c", 32).ok());
  EXPECT_FALSE(Recover("b").ok());
}

TEST_F(UserManagedServe, RefusesManagedModeOptions) {
  const std::string state = (dir_ / "s").string();
  const std::vector<std::vector<std::string>> cases = {
      {"--kms", kms(), "--storage", storage(), "--measurements", "m.json", "--ek-ca", "ca.pem"},
      {"--kms", kms(), "--storage", storage(), "--store", "sqlite:///tmp/x.db"},
      {"--kms", kms()},
      {"--storage", storage()},
  };
  for (const auto& extra : cases) {
    std::vector<std::string> argv = {KEYWARDEN_BINARY, "serve",      "--dir", state,
                                     "--listen",       "127.0.0.1:0"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    const RunResult r = keywarden::testing::Run(argv);
    EXPECT_EQ(r.exit_code, 1) << r;
    EXPECT_THAT(r.stderr_text, Not(HasSubstr("pin=1234"))) << r;
  }
  const RunResult join = keywarden::testing::Run(
      {KEYWARDEN_BINARY, "serve", "--dir", state, "--listen", "127.0.0.1:0", "--kms", kms(),
       "--storage", storage(), "--measurements", "m.json", "--ek-ca", "ca.pem"});
  EXPECT_THAT(join.stderr_text, HasSubstr("cannot run with --kms"));
  EXPECT_FALSE(std::filesystem::exists(db()));
}

}  // namespace
}  // namespace keywarden::testing
