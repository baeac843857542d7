// KEK rotation and export/import against real parts: a SoftHSM2 token holding the old and the
// new KEK, SQLite DEK stores, and the `keywarden kek rotate` / `dek export|import|recover`
// commands as users run them — including a rotation killed with SIGKILL halfway.
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "keywarden/byok/byok.h"
#include "keywarden/byok/operations.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "tests/softhsm.h"
#include "tests/subprocess.h"

namespace keywarden::byok {
namespace {

using ::keywarden::testing::SoftHsm;
using ::keywarden::testing::TempDir;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

keywarden::testing::RunResult Kw(std::vector<std::string> args) {
  args.insert(args.begin(), KEYWARDEN_BINARY);
  return keywarden::testing::Run(std::move(args));
}

std::string Hex(const SecretBytes& s) {
  return crypto::HexEncode(s.Reveal(InsecureSecretAccess::Get()));
}

struct Fixture {
  Fixture() {
    RegisterAllProviders();
    EXPECT_TRUE(hsm.ok());
    EXPECT_TRUE(hsm.CreateAesKey("old").ok());
    EXPECT_TRUE(hsm.CreateAesKey("new").ok());
    EXPECT_TRUE(hsm.CreateAesKey("third").ok());
  }
  std::string Storage(const std::string& name) const {
    return "storage://sqlite?path=" + (dir / name).string();
  }
  std::unique_ptr<KekProvider> Provider(const std::string& key) {
    auto p = OpenKekProvider(hsm.KmsUri(key));
    EXPECT_TRUE(p.ok()) << p.status();
    return p.ok() ? std::move(*p) : nullptr;
  }
  std::unique_ptr<DekStore> Store(const std::string& name) {
    auto s = OpenDekStore(Storage(name));
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  // Fill stores `n` random DEKs wrapped under `key` and returns id -> DEK hex.
  std::map<std::string, std::string> Fill(const std::string& store_name, const std::string& key,
                                          int n) {
    auto provider = Provider(key);
    auto store = Store(store_name);
    std::map<std::string, std::string> deks;
    for (int i = 0; i < n; ++i) {
      const std::string id = fmt::format("volume-{:05d}", i);
      auto dek = crypto::RandomSecret(32);
      auto blob = WrapDek(*provider, id, *dek);
      EXPECT_TRUE(blob.ok()) << blob.status();
      EXPECT_TRUE(store->CreateIfAbsent(id, *blob).ok());
      deks[id] = Hex(*dek);
    }
    return deks;
  }
  // KekOf returns the KEK id an entry is wrapped under.
  static std::string KekOf(DekStore& store, const std::string& id) {
    auto entry = store.Get(id);
    if (!entry.ok() || !entry->has_value()) return "";
    auto wrapped = DecodeWrappedDek((*entry)->blob);
    return wrapped.ok() ? wrapped->kek_id : "";
  }

  TempDir dir;
  SoftHsm hsm;
};

TEST(KekRotation, AKilledRotationIsFinishedByRerunningAndNoDekChanges) {
  Fixture f;
  constexpr int kDeks = 600;
  const auto deks = f.Fill("deks.db", "old", kDeks);
  auto old_kek = f.Provider("old");
  auto new_kek = f.Provider("new");
  auto store = f.Store("deks.db");
  const std::string watched = std::next(deks.begin(), kDeks / 4)->first;

  // Start the rotation and SIGKILL it once a quarter of the entries moved.
  keywarden::testing::BackgroundOptions options;
  options.log = f.dir / "rotate.log";
  keywarden::testing::Background rotation;
  ASSERT_TRUE(rotation.Start({KEYWARDEN_BINARY, "kek", "rotate", "--kms", f.hsm.KmsUri("old"),
                              "--to", f.hsm.KmsUri("new"), "--storage", f.Storage("deks.db")},
                             options));
  const auto deadline = std::chrono::steady_clock::now() + 120s;
  while (Fixture::KekOf(*store, watched) != new_kek->kek_id() &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(2ms);
  }
  rotation.Kill();
  // Wait gives -1 for a program that a signal ended, else its exit status.
  ASSERT_EQ(rotation.Wait(0ms), -1) << "the rotation ended before it could be killed\n"
                                    << rotation.Log();

  // Halfway: some entries under each KEK, and every one unwraps to its original DEK.
  int under_new = 0;
  for (const auto& [id, hex] : deks) {
    const std::string kek = Fixture::KekOf(*store, id);
    KekProvider& provider = kek == new_kek->kek_id() ? *new_kek : *old_kek;
    under_new += kek == new_kek->kek_id();
    auto entry = store->Get(id);
    ASSERT_TRUE(entry.ok() && entry->has_value());
    auto dek = UnwrapDek(provider, id, (*entry)->blob);
    ASSERT_TRUE(dek.ok()) << id << ": " << dek.status();
    EXPECT_EQ(Hex(*dek), hex) << id;
  }
  EXPECT_GT(under_new, 0);
  EXPECT_LT(under_new, kDeks);

  // Rerun: it finishes, counting what the killed run did.
  auto r = Kw({"kek", "rotate", "--kms", f.hsm.KmsUri("old"), "--to", f.hsm.KmsUri("new"),
               "--storage", f.Storage("deks.db")});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text,
              HasSubstr(fmt::format("rotated {} of {} DEKs", kDeks - under_new, kDeks)));
  for (const auto& [id, hex] : deks) {
    EXPECT_EQ(Fixture::KekOf(*store, id), new_kek->kek_id());
    auto entry = store->Get(id);
    auto dek = UnwrapDek(*new_kek, id, (*entry)->blob);
    ASSERT_TRUE(dek.ok()) << dek.status();
    EXPECT_EQ(Hex(*dek), hex);
    // The old KEK no longer opens it.
    EXPECT_FALSE(UnwrapDek(*old_kek, id, (*entry)->blob).ok());
  }
  // Idempotent: a third run changes nothing.
  r = Kw({"kek", "rotate", "--kms", f.hsm.KmsUri("old"), "--to", f.hsm.KmsUri("new"), "--storage",
          f.Storage("deks.db")});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr(fmt::format("rotated 0 of {} DEKs", kDeks)));
  EXPECT_THAT(r.stdout_text, HasSubstr(fmt::format("({} were already", kDeks)));
  // `dek recover` with the new KEK gives the original DEK.
  const auto& [some_id, some_hex] = *deks.begin();
  r = Kw({"dek", "recover", "--kms", f.hsm.KmsUri("new"), "--storage", f.Storage("deks.db"), "--id",
          some_id});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr(some_hex));
}

TEST(KekRotation, StopsAtABlobUnderAnotherKekAndSameKekIsRefused) {
  Fixture f;
  auto deks = f.Fill("deks.db", "old", 5);
  auto third = f.Provider("third");
  auto store = f.Store("deks.db");
  auto blob = WrapDek(*third, "zzz-foreign", *crypto::RandomSecret(32));
  ASSERT_TRUE(store->CreateIfAbsent("zzz-foreign", *blob).ok());
  auto r = Kw({"kek", "rotate", "--kms", f.hsm.KmsUri("old"), "--to", f.hsm.KmsUri("new"),
               "--storage", f.Storage("deks.db")});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("zzz-foreign"));
  EXPECT_THAT(r.stderr_text, HasSubstr("5 of 6 done"));
  r = Kw({"kek", "rotate", "--kms", f.hsm.KmsUri("old"), "--to", f.hsm.KmsUri("old"), "--storage",
          f.Storage("deks.db")});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("same"));
}

TEST(DekMigration, ExportImportMovesWrappedDeksAndRefusesConflicts) {
  Fixture f;
  const auto deks = f.Fill("source.db", "old", 40);
  auto r = Kw({"dek", "export", "--storage", f.Storage("source.db"), "--out",
               (f.dir / "export.jsonl").string()});
  ASSERT_TRUE(r.ok()) << r;
  const std::string exported = keywarden::testing::ReadFile(f.dir / "export.jsonl").value_or("");
  // Wrapped only: no plaintext DEK appears in the export.
  for (const auto& [id, hex] : deks) {
    EXPECT_EQ(exported.find(hex), std::string::npos);
    const auto dek_bytes = crypto::HexDecode(hex);
    EXPECT_EQ(exported.find(crypto::Base64Encode(*dek_bytes)), std::string::npos);
  }
  r = Kw({"dek", "import", "--storage", f.Storage("target.db"), "--in",
          (f.dir / "export.jsonl").string()});
  ASSERT_TRUE(r.ok()) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("imported 40 wrapped DEKs"));
  // Same KEK + a copy of the store = the same keys.
  for (const auto& [id, hex] : deks) {
    r = Kw({"dek", "recover", "--kms", f.hsm.KmsUri("old"), "--storage", f.Storage("target.db"),
            "--id", id});
    ASSERT_TRUE(r.ok()) << r;
    EXPECT_THAT(r.stdout_text, HasSubstr(hex));
    break;  // one through the CLI; the rest in process below
  }
  auto provider = f.Provider("old");
  auto target = f.Store("target.db");
  for (const auto& [id, hex] : deks) {
    auto entry = target->Get(id);
    ASSERT_TRUE(entry.ok() && entry->has_value());
    auto dek = UnwrapDek(*provider, id, (*entry)->blob);
    ASSERT_TRUE(dek.ok());
    EXPECT_EQ(Hex(*dek), hex);
  }
  // Rerunning the import is safe.
  r = Kw({"dek", "import", "--storage", f.Storage("target.db"), "--in",
          (f.dir / "export.jsonl").string()});
  EXPECT_TRUE(r.ok()) << r;
  // A target holding another DEK for an id: the import stops and names it.
  f.Fill("other.db", "old", 1);
  r = Kw({"dek", "import", "--storage", f.Storage("other.db"), "--in",
          (f.dir / "export.jsonl").string()});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("volume-00000"));
  EXPECT_THAT(r.stderr_text, HasSubstr("different DEK"));
  // Malformed input: the line is named, nothing after it is imported.
  f.dir.WriteFile("bad.jsonl", "{\"id\": \"x\", \"blob\": \"AAAA\"}\n");
  r = Kw({"dek", "import", "--storage", f.Storage("fresh.db"), "--in",
          (f.dir / "bad.jsonl").string()});
  EXPECT_EQ(r.exit_code, 1) << r;
  EXPECT_THAT(r.stderr_text, HasSubstr("line 1"));
}

}  // namespace
}  // namespace keywarden::byok
