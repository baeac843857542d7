// Integration tests of the `keywarden` command line: they run the real binary as a subprocess
// and check its output against Constellation's vectors and the library, its exit codes (0
// success, 1 error, 2 usage), its files (mastersecret.json, cluster.json) and that no secret
// ever appears in what it prints.
#include <gmock/gmock.h>
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/cluster.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/status.h"
#include "tests/subprocess.h"
#include "tests/vectors.h"

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

// The exit codes the CLI documents.
constexpr int kExitOk = 0;
constexpr int kExitError = 1;
constexpr int kExitUsage = 2;

constexpr char kVectorFile[] = "constellation/constellation_vectors.json";
constexpr char kErrorPrefix[] = "keywarden: error: ";

// ---------------------------------------------------------------------------------------------
// Running the binary and checking what it printed.

// Binary returns the keywarden binary under test: $KEYWARDEN_BINARY if set, else the one CMake
// built beside this test.
std::string Binary() {
  if (const char* env = std::getenv("KEYWARDEN_BINARY"); env != nullptr && *env != '\0') {
    return env;
  }
  return KEYWARDEN_BINARY;
}

// Keywarden runs `keywarden args...`.
RunResult Keywarden(std::vector<std::string> args) {
  args.insert(args.begin(), Binary());
  return Run(std::move(args));
}

bool IsLowerHex(std::string_view text) {
  return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
  });
}

// HexValue checks that `r` succeeded silently and printed exactly one line holding `bytes`
// bytes of lowercase hex, and returns that hex ("" after a failure).
std::string HexValue(const RunResult& r, size_t bytes) {
  EXPECT_EQ(r.exit_code, kExitOk) << r;
  EXPECT_THAT(r.stderr_text, IsEmpty()) << r;
  const std::string& out = r.stdout_text;
  if (out.empty() || out.find('\n') != out.size() - 1) {
    ADD_FAILURE() << "stdout is not exactly one line: " << r;
    return "";
  }
  const std::string value = out.substr(0, out.size() - 1);
  EXPECT_TRUE(IsLowerHex(value)) << "not lowercase hex: " << r;
  EXPECT_EQ(value.size(), 2 * bytes) << r;
  return value;
}

// Redact returns `text` with every occurrence of `what` replaced by `by`.
std::string Redact(std::string text, std::string_view what, std::string_view by) {
  if (what.empty()) return text;
  for (size_t pos = 0; (pos = text.find(what, pos)) != std::string::npos; pos += by.size()) {
    text.replace(pos, what.size(), by);
  }
  return text;
}

// ExpectError checks the shape of a failed command: exit 1, nothing on stdout, and one line on
// stderr that starts with "keywarden: error: " and matches `pattern` (ECMAScript, searched)
// once the test's own path `redact` is taken out of it (so that a path cannot match).
void ExpectError(const RunResult& r, const std::string& pattern, std::string_view redact = "") {
  EXPECT_EQ(r.exit_code, kExitError) << r;
  EXPECT_THAT(r.stdout_text, IsEmpty()) << r;
  EXPECT_THAT(r.stderr_text, StartsWith(kErrorPrefix)) << r;
  EXPECT_EQ(std::count(r.stderr_text.begin(), r.stderr_text.end(), '\n'), 1)
      << "want one line on stderr: " << r;
  EXPECT_TRUE(std::regex_search(Redact(r.stderr_text, redact, "<path>"), std::regex(pattern)))
      << "stderr does not match /" << pattern << "/: " << r;
}

// ExpectUsageError checks a usage error: exit 2, nothing on stdout, an explanation on stderr.
void ExpectUsageError(const RunResult& r) {
  EXPECT_EQ(r.exit_code, kExitUsage) << r;
  EXPECT_THAT(r.stdout_text, IsEmpty()) << r;
  EXPECT_THAT(r.stderr_text, Not(IsEmpty())) << r;
}

// ---------------------------------------------------------------------------------------------
// Secrets, computed through the library.

std::string HexOf(const SecretBytes& secret) {
  return crypto::HexEncode(secret.Reveal(InsecureSecretAccess::Get()));
}

std::string ToUpper(std::string text) {
  for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return text;
}

// MasterSecretJson formats a mastersecret.json as Constellation's CLI writes it.
std::string MasterSecretJson(std::string_view key_b64, std::string_view salt_b64) {
  return "{\n\t\"key\": \"" + std::string(key_b64) + "\",\n\t\"salt\": \"" + std::string(salt_b64) +
         "\"\n}";
}

keys::MasterSecret ParseSecret(std::string_view json) {
  auto secret = keys::ParseMasterSecretJson(Bytes(json));
  if (!secret.ok()) {
    ADD_FAILURE() << "the library rejects a master secret: " << StatusMessage(secret.status());
    return {};
  }
  return *std::move(secret);
}

std::unique_ptr<keys::Kek> KekOf(const keys::MasterSecret& secret) {
  auto kek = keys::Kek::FromMasterSecret(secret);
  if (!kek.ok()) {
    ADD_FAILURE() << "Kek::FromMasterSecret: " << StatusMessage(kek.status());
    return nullptr;
  }
  return *std::move(kek);
}

// LibraryDek returns the hex of DEK(id, length) as the library derives it.
std::string LibraryDek(const keys::MasterSecret& secret, std::string_view id, size_t length) {
  auto kek = KekOf(secret);
  if (kek == nullptr) return "";
  auto dek = kek->DeriveDek(id, length);
  if (!dek.ok()) {
    ADD_FAILURE() << "DeriveDek: " << StatusMessage(dek.status());
    return "";
  }
  return HexOf(*dek);
}

// SecretText is one printable form of a secret that the CLI must never print unasked.
struct SecretText {
  std::string label;
  std::string text;
};

// SecretTexts returns every printable form of `secret`'s key and of the keys derived from it:
// the master key in base64 and hex, the KEK, the measurement secret, and DEK(id, 32) for each
// of `dek_ids`.
std::vector<SecretText> SecretTexts(const keys::MasterSecret& secret,
                                    const std::vector<std::string>& dek_ids = {}) {
  const auto key = secret.key.Reveal(InsecureSecretAccess::Get());
  std::vector<SecretText> texts = {
      {"master key (base64)", crypto::Base64Encode(key)},
      {"master key (hex)", crypto::HexEncode(key)},
      {"master key (HEX)", ToUpper(crypto::HexEncode(key))},
  };
  auto kek = KekOf(secret);
  if (kek == nullptr) return texts;
  texts.push_back({"KEK (hex)", HexOf(kek->bytes())});
  if (auto m = kek->MeasurementSecret(); m.ok()) {
    texts.push_back({"measurement secret (hex)", HexOf(*m)});
  }
  for (const std::string& id : dek_ids) {
    if (auto dek = kek->DeriveDek(id, 32); dek.ok()) {
      texts.push_back({"DEK(" + id + ") (hex)", HexOf(*dek)});
    }
  }
  return texts;
}

// kLeakWindow is how many consecutive characters of a secret's text count as a leak: a part of
// a key is as bad as all of it (e.g. a parser error that quotes "the last token read").
constexpr size_t kLeakWindow = 16;

// ExpectNoLeak fails if any kLeakWindow-character piece of any of `secrets` occurs in `output`.
void ExpectNoLeak(std::string_view output, const std::vector<SecretText>& secrets,
                  const RunResult& r) {
  for (const SecretText& secret : secrets) {
    const size_t window = std::min(kLeakWindow, secret.text.size());
    for (size_t i = 0; i + window <= secret.text.size(); ++i) {
      if (output.find(secret.text.substr(i, window)) != std::string_view::npos) {
        ADD_FAILURE() << "output contains part of the " << secret.label << " (from character " << i
                      << "): " << r;
        break;
      }
    }
  }
}

void ExpectNoLeak(const RunResult& r, const std::vector<SecretText>& secrets) {
  ExpectNoLeak(r.stdout_text, secrets, r);
  ExpectNoLeak(r.stderr_text, secrets, r);
}

// ---------------------------------------------------------------------------------------------
// Vectors.

std::string StringField(const nlohmann::json& object, const char* name) {
  if (!object.is_object() || !object.contains(name) || !object[name].is_string()) {
    ADD_FAILURE() << "vector field \"" << name << "\" missing or not a string";
    return "";
  }
  return object[name].get<std::string>();
}

// ClusterExample is the "cluster_example" of Constellation's vectors.
struct ClusterExample {
  std::string mastersecret_json;
  std::string key_b64;
  std::string salt_b64;
  std::string measurement_salt;
  std::string measurement_secret;
  std::string cluster_id;
  std::string pcr15;
  std::string disk_uuid;
  std::string disk_key;
};

ClusterExample LoadClusterExample() {
  const nlohmann::json doc = LoadJson(kVectorFile);
  const nlohmann::json example =
      doc.is_object() ? doc.value("cluster_example", nlohmann::json()) : nlohmann::json();
  ClusterExample ex;
  ex.mastersecret_json = StringField(example, "mastersecret_json");
  ex.measurement_salt = StringField(example, "measurement_salt");
  ex.measurement_secret = StringField(example, "measurement_secret");
  ex.cluster_id = StringField(example, "cluster_id");
  ex.pcr15 = StringField(example, "pcr15_after_bootstrap");
  const nlohmann::json disk =
      example.is_object() ? example.value("disk_key", nlohmann::json()) : nlohmann::json();
  ex.disk_uuid = StringField(disk, "uuid");
  ex.disk_key = StringField(disk, "key");
  const nlohmann::json secret = nlohmann::json::parse(ex.mastersecret_json, nullptr, false);
  ex.key_b64 = StringField(secret, "key");
  ex.salt_b64 = StringField(secret, "salt");
  return ex;
}

// JsonTemplate replaces the values of "key" and "salt" in a mastersecret.json's text by a
// placeholder, leaving its layout (indentation, spacing, field order, trailing bytes).
std::string JsonTemplate(const std::string& text) {
  static const std::regex kValue(R"re("(key|salt)": "[A-Za-z0-9+/=]*")re");
  return std::regex_replace(text, kValue, "\"$1\": \"...\"");
}

// ---------------------------------------------------------------------------------------------
// Files.

// FileState is what a command must not change about a file: its bytes and metadata.
struct FileState {
  bool exists = false;
  bool is_dir = false;
  std::string contents;
  ino_t inode = 0;
  mode_t mode = 0;
  timespec mtime{};

  bool operator==(const FileState& o) const {
    return exists == o.exists && is_dir == o.is_dir && contents == o.contents && inode == o.inode &&
           mode == o.mode && mtime.tv_sec == o.mtime.tv_sec && mtime.tv_nsec == o.mtime.tv_nsec;
  }
};

std::ostream& operator<<(std::ostream& os, const FileState& s) {
  return os << "{exists=" << s.exists << " dir=" << s.is_dir << " inode=" << s.inode
            << " mode=" << std::oct << s.mode << std::dec << " mtime=" << s.mtime.tv_sec << "."
            << s.mtime.tv_nsec << " size=" << s.contents.size() << "}";
}

FileState Snapshot(const fs::path& path) {
  FileState s;
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return s;
  s.exists = true;
  s.is_dir = S_ISDIR(st.st_mode);
  s.inode = st.st_ino;
  s.mode = st.st_mode;
  s.mtime = st.st_mtim;
  if (!s.is_dir) s.contents = ReadFile(path).value_or("<unreadable>");
  return s;
}

mode_t PermissionBits(const fs::path& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

std::set<std::string> Listing(const fs::path& dir) {
  std::set<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    names.insert(entry.path().filename().string());
  }
  return names;
}

// ScopedUmask sets the process umask and restores it when destroyed.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : old_(umask(mask)) {}
  ~ScopedUmask() { umask(old_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t old_;
};

// CliTest gives each test a scratch directory and Constellation's cluster example.
class CliTest : public ::testing::Test {
 protected:
  // WriteVectorSecret writes the vector's mastersecret.json bytes to a file and returns it.
  std::string WriteVectorSecret() {
    return temp_.WriteFile("vector/mastersecret.json", example_.mastersecret_json).string();
  }

  // InitCluster runs `keywarden init --dir DIR` for a new DIR and returns the clusterID.
  std::string InitCluster(const fs::path& dir) {
    return HexValue(Keywarden({"init", "--dir", dir.string()}), keys::kDigestSize);
  }

  TempDir temp_;
  ClusterExample example_ = LoadClusterExample();
};

// ---------------------------------------------------------------------------------------------
// Constellation's vectors through the CLI.

TEST_F(CliTest, ClusterIdMatchesConstellationVector) {
  const std::string secret = WriteVectorSecret();
  EXPECT_EQ(HexValue(Keywarden({"derive", "cluster-id", "--master-secret", secret,
                                "--measurement-salt", example_.measurement_salt}),
                     32),
            example_.cluster_id);
  // The salt is hex; upper case is the same salt.
  EXPECT_EQ(HexValue(Keywarden({"derive", "cluster-id", "--master-secret", secret,
                                "--measurement-salt", ToUpper(example_.measurement_salt)}),
                     32),
            example_.cluster_id);
}

TEST_F(CliTest, Pcr15MatchesConstellationVector) {
  EXPECT_EQ(HexValue(Keywarden({"derive", "pcr15", "--cluster-id", example_.cluster_id}), 32),
            example_.pcr15);
  EXPECT_EQ(
      HexValue(Keywarden({"derive", "pcr15", "--cluster-id", ToUpper(example_.cluster_id)}), 32),
      example_.pcr15);
}

TEST_F(CliTest, DiskKeyMatchesConstellationVector) {
  const std::string secret = WriteVectorSecret();
  EXPECT_EQ(HexValue(Keywarden({"derive", "disk-key", "--master-secret", secret, "--uuid",
                                example_.disk_uuid}),
                     32),
            example_.disk_key);
  EXPECT_EQ(HexValue(Keywarden({"derive", "disk-key", "--master-secret", secret, "--uuid",
                                ToUpper(example_.disk_uuid)}),
                     32),
            example_.disk_key);
}

TEST_F(CliTest, MeasurementSecretIsDekOfMeasurementSecret) {
  const std::string secret = WriteVectorSecret();
  EXPECT_EQ(
      HexValue(Keywarden({"derive", "dek", "--master-secret", secret, "--id", "measurementSecret"}),
               32),
      example_.measurement_secret);
}

// Every HKDF vector of the form HKDF(secret, salt, "key-" || id, n) is DEK(id, n) of the master
// secret {key: secret, salt: salt}, if secret and salt are sizes a master secret may have.
TEST_F(CliTest, HkdfVectorsAsDeks) {
  const nlohmann::json doc = LoadJson(kVectorFile);
  ASSERT_TRUE(doc.is_object() && doc.contains("hkdf_sha256") && doc["hkdf_sha256"].is_array());
  int used = 0, skipped = 0;
  for (const nlohmann::json& v : doc["hkdf_sha256"]) {
    const std::string name = StringField(v, "name");
    SCOPED_TRACE(name);
    const std::string info = StringField(v, "info");
    const std::vector<uint8_t> secret = Hex(StringField(v, "secret"));
    const std::vector<uint8_t> salt = Hex(StringField(v, "salt"));
    if (info.rfind("key-", 0) != 0 || secret.size() < keys::kMinMasterKeySize ||
        salt.size() < keys::kMinSaltSize) {
      ++skipped;
      continue;
    }
    ASSERT_TRUE(v.contains("length") && v["length"].is_number_unsigned());
    const size_t length = v["length"].get<size_t>();
    const std::string file =
        temp_
            .WriteFile(name + "/mastersecret.json",
                       MasterSecretJson(crypto::Base64Encode(secret), crypto::Base64Encode(salt)))
            .string();
    EXPECT_EQ(HexValue(Keywarden({"derive", "dek", "--master-secret", file, "--id", info.substr(4),
                                  "--length", std::to_string(length)}),
                       length),
              StringField(v, "output"));
    ++used;
  }
  RecordProperty("used", used);
  RecordProperty("skipped", skipped);
  EXPECT_GT(used, 0) << "no HKDF vector was usable as a DEK";
}

// ---------------------------------------------------------------------------------------------
// derive dek / disk-key against the library.

TEST_F(CliTest, DekDefaultLengthIs32Bytes) {
  const std::string file = WriteVectorSecret();
  const keys::MasterSecret secret = ParseSecret(example_.mastersecret_json);
  const std::string dek =
      HexValue(Keywarden({"derive", "dek", "--master-secret", file, "--id", "volume-1"}), 32);
  EXPECT_EQ(dek, LibraryDek(secret, "volume-1", 32));
  EXPECT_EQ(dek, HexValue(Keywarden({"derive", "dek", "--master-secret", file, "--id", "volume-1",
                                     "--length", "32"}),
                          32));
}

TEST_F(CliTest, DekLengthBoundsAndPrefixProperty) {
  const std::string file = WriteVectorSecret();
  const keys::MasterSecret secret = ParseSecret(example_.mastersecret_json);
  auto dek = [&](size_t length) {
    return HexValue(Keywarden({"derive", "dek", "--master-secret", file, "--id", "volume-1",
                               "--length", std::to_string(length)}),
                    length);
  };
  const std::string dek1 = dek(1);
  const std::string dek16 = dek(16);
  const std::string dek32 = dek(32);
  const std::string dek_max = dek(keys::kMaxDekSize);
  EXPECT_EQ(keys::kMaxDekSize, 8160u);
  EXPECT_EQ(dek_max, LibraryDek(secret, "volume-1", keys::kMaxDekSize));
  // HKDF-Expand's output for a shorter length is a prefix of the longer one (RFC 5869 §2.3).
  EXPECT_EQ(dek32.substr(0, dek16.size()), dek16);
  EXPECT_EQ(dek_max.substr(0, dek32.size()), dek32);
  EXPECT_EQ(dek32.substr(0, dek1.size()), dek1);
}

TEST_F(CliTest, DekLengthOutOfRangeIsUsageError) {
  const std::string file = WriteVectorSecret();
  for (const char* length : {"0", "8161", "-1", "abc", "", "32x", "99999999999999999999999"}) {
    SCOPED_TRACE(length);
    ExpectUsageError(Keywarden(
        {"derive", "dek", "--master-secret", file, "--id", "volume-1", "--length", length}));
  }
}

TEST_F(CliTest, DekIdsAreCaseSensitiveAndDistinct) {
  const std::string file = WriteVectorSecret();
  auto dek = [&](const std::string& id) {
    return HexValue(Keywarden({"derive", "dek", "--master-secret", file, "--id", id}), 32);
  };
  const std::string lower = dek("volume-a");
  EXPECT_NE(lower, dek("VOLUME-A"));
  EXPECT_NE(lower, dek("volume-b"));
  // The "key-" prefix is the CLI's, not the caller's.
  EXPECT_NE(lower, dek("key-volume-a"));
}

TEST_F(CliTest, DiskKeyIsDekOfLowercaseUuidInAnyCase) {
  const std::string file = WriteVectorSecret();
  const keys::MasterSecret secret = ParseSecret(example_.mastersecret_json);
  const std::string uuid = "0b1c2d3e-aaaa-4bbb-8ccc-00000000abcd";
  const std::string expected = LibraryDek(secret, uuid, 32);
  for (const std::string& form :
       {uuid, ToUpper(uuid), std::string("0B1c2D3e-AaAa-4BbB-8cCc-00000000AbCd")}) {
    SCOPED_TRACE(form);
    EXPECT_EQ(
        HexValue(Keywarden({"derive", "disk-key", "--master-secret", file, "--uuid", form}), 32),
        expected);
  }
  EXPECT_EQ(HexValue(Keywarden({"derive", "dek", "--master-secret", file, "--id", uuid}), 32),
            expected);
}

TEST_F(CliTest, DiskKeyRejectsNonUuid) {
  const std::string file = WriteVectorSecret();
  const keys::MasterSecret secret = ParseSecret(example_.mastersecret_json);
  const std::vector<SecretText> secrets = SecretTexts(secret, {example_.disk_uuid});
  for (const std::string uuid : {
           "not-a-uuid",
           "00000000-0000-0000-000000000000",        // a group missing
           "00000000-0000-0000-0000",                // the last group missing
           "00000000-0000-0000-0000-00000000000",    // last group one digit short
           "00000000-0000-0000-0000-0000000000000",  // last group one digit long
           "0000000g-0000-0000-0000-000000000000",   // not hex
           "{00000000-0000-0000-0000-000000000000}",
           "00000000000000000000000000000000",  // no dashes
           " 00000000-0000-0000-0000-000000000000",
           "00000000-0000-0000-0000-000000000000 ",
           "",
       }) {
    SCOPED_TRACE(uuid);
    const RunResult r = Keywarden({"derive", "disk-key", "--master-secret", file, "--uuid", uuid});
    ExpectError(r, "8-4-4-4-12");
    ExpectNoLeak(r, secrets);
  }
}

// An error message that repeats an argument must not pass control characters through to the
// terminal: a newline would forge a second line, an escape sequence would drive the terminal.
TEST_F(CliTest, ErrorMessagesDoNotEchoControlCharacters) {
  const std::string file = WriteVectorSecret();
  for (const std::string uuid :
       {"00000000-0000-0000-0000-000000000000\n", "\x1b]0;owned\x07", "abc\rkeywarden: ok"}) {
    SCOPED_TRACE(::testing::PrintToString(uuid));
    const RunResult r = Keywarden({"derive", "disk-key", "--master-secret", file, "--uuid", uuid});
    ExpectError(r, "8-4-4-4-12");
    EXPECT_FALSE(std::any_of(r.stderr_text.begin(), r.stderr_text.end() - 1, [](char c) {
      return std::iscntrl(static_cast<unsigned char>(c));
    })) << r;
  }
}

// ---------------------------------------------------------------------------------------------
// init and status.

TEST_F(CliTest, InitCreatesStateThatDeriveAndStatusAgreeWith) {
  const fs::path dir = temp_ / "state";
  const RunResult init = Keywarden({"init", "--dir", dir.string()});
  const std::string cluster_id = HexValue(init, 32);

  const fs::path secret_path = dir / "mastersecret.json";
  const fs::path cluster_path = dir / "cluster.json";
  EXPECT_EQ(PermissionBits(dir), 0700u);
  EXPECT_TRUE(fs::is_regular_file(secret_path));
  EXPECT_EQ(PermissionBits(secret_path), 0600u);
  ASSERT_TRUE(fs::is_regular_file(cluster_path));
  EXPECT_EQ(Listing(dir), (std::set<std::string>{"mastersecret.json", "cluster.json"}));

  const nlohmann::json cluster =
      nlohmann::json::parse(ReadFile(cluster_path).value_or(""), nullptr, false);
  ASSERT_TRUE(cluster.is_object()) << ReadFile(cluster_path).value_or("<unreadable>");
  const std::string salt = StringField(cluster, "measurementSalt");
  EXPECT_TRUE(IsLowerHex(salt) && salt.size() == 64) << salt;
  EXPECT_EQ(StringField(cluster, "clusterID"), cluster_id);

  EXPECT_EQ(HexValue(Keywarden({"derive", "cluster-id", "--master-secret", secret_path.string(),
                                "--measurement-salt", salt}),
                     32),
            cluster_id);

  const std::string pcr15 =
      HexValue(Keywarden({"derive", "pcr15", "--cluster-id", cluster_id}), 32);
  EXPECT_EQ(pcr15, crypto::HexEncode(keys::ExpectedPcr15(Hex(cluster_id))));
  const RunResult status = Keywarden({"status", "--dir", dir.string()});
  EXPECT_EQ(status.exit_code, kExitOk) << status;
  EXPECT_EQ(status.stdout_text, "cluster-id " + cluster_id + "\npcr15 " + pcr15 + "\n");
  EXPECT_THAT(status.stderr_text, IsEmpty());

  // Neither command shows the master secret.
  const keys::MasterSecret secret = ParseSecret(ReadFile(secret_path).value_or(""));
  const std::vector<SecretText> secrets = SecretTexts(secret);
  ExpectNoLeak(init, secrets);
  ExpectNoLeak(status, secrets);
}

TEST_F(CliTest, InitWritesMasterSecretInConstellationFormat) {
  const fs::path dir = temp_ / "state";
  InitCluster(dir);
  const std::string text = ReadFile(dir / "mastersecret.json").value_or("");
  // Same layout as the vector's file: tab indent, "key" then "salt", no trailing newline.
  EXPECT_EQ(JsonTemplate(text), JsonTemplate(example_.mastersecret_json)) << text;
  EXPECT_EQ(JsonTemplate(text), "{\n\t\"key\": \"...\",\n\t\"salt\": \"...\"\n}");

  const nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  ASSERT_TRUE(doc.is_object());
  EXPECT_EQ(doc.size(), 2u);
  for (const char* field : {"key", "salt"}) {
    SCOPED_TRACE(field);
    auto bytes = crypto::Base64Decode(StringField(doc, field));
    ASSERT_TRUE(bytes.ok()) << StatusMessage(bytes.status());
    EXPECT_EQ(bytes->size(), 32u);
  }
  EXPECT_TRUE(keys::ReadMasterSecretFile(dir / "mastersecret.json").ok());
}

TEST_F(CliTest, InitRefusesExistingClusterAndChangesNothing) {
  const fs::path dir = temp_ / "state";
  const std::string cluster_id = InitCluster(dir);
  const FileState secret_before = Snapshot(dir / "mastersecret.json");
  const FileState cluster_before = Snapshot(dir / "cluster.json");
  const std::set<std::string> listing_before = Listing(dir);

  const RunResult again = Keywarden({"init", "--dir", dir.string()});
  ExpectError(again, "already");
  EXPECT_THAT(again.stderr_text, HasSubstr(dir.string()));

  EXPECT_EQ(Snapshot(dir / "mastersecret.json"), secret_before);
  EXPECT_EQ(Snapshot(dir / "cluster.json"), cluster_before);
  EXPECT_EQ(Listing(dir), listing_before);
  const RunResult status = Keywarden({"status", "--dir", dir.string()});
  EXPECT_THAT(status.stdout_text, StartsWith("cluster-id " + cluster_id + "\n")) << status;
}

TEST_F(CliTest, InitRefusesDirHoldingEitherFile) {
  for (const char* present : {"mastersecret.json", "cluster.json"}) {
    SCOPED_TRACE(present);
    const fs::path dir = temp_ / (std::string("only-") + present);
    const fs::path file = temp_.WriteFile(dir.filename() / present, "placeholder\n");
    const FileState before = Snapshot(file);
    ExpectError(Keywarden({"init", "--dir", dir.string()}), "already");
    EXPECT_EQ(Snapshot(file), before);
    EXPECT_EQ(Listing(dir), std::set<std::string>{present});
  }
}

TEST_F(CliTest, InitsOfDifferentDirsMakeDifferentClusters) {
  const std::string a = InitCluster(temp_ / "a");
  const std::string b = InitCluster(temp_ / "b");
  EXPECT_NE(a, b);
  EXPECT_NE(ReadFile(temp_ / "a" / "mastersecret.json"),
            ReadFile(temp_ / "b" / "mastersecret.json"));
  const keys::MasterSecret secret_a = ParseSecret(ReadFile(temp_ / "a/mastersecret.json").value());
  const keys::MasterSecret secret_b = ParseSecret(ReadFile(temp_ / "b/mastersecret.json").value());
  EXPECT_NE(HexOf(secret_a.key), HexOf(secret_b.key));
  EXPECT_NE(HexOf(secret_a.salt), HexOf(secret_b.salt));
}

TEST_F(CliTest, InitIntoExistingEmptyDir) {
  const fs::path dir = temp_ / "empty";
  ASSERT_TRUE(fs::create_directory(dir));
  const std::string cluster_id = InitCluster(dir);
  EXPECT_EQ(Listing(dir), (std::set<std::string>{"mastersecret.json", "cluster.json"}));
  EXPECT_EQ(PermissionBits(dir / "mastersecret.json"), 0600u);
  const RunResult status = Keywarden({"status", "--dir", dir.string()});
  EXPECT_EQ(status.exit_code, kExitOk) << status;
  EXPECT_THAT(status.stdout_text, StartsWith("cluster-id " + cluster_id + "\n")) << status;
}

TEST_F(CliTest, InitWhereDirIsAFileFails) {
  const fs::path file = temp_.WriteFile("regular", "not a directory\n", 0644);
  const FileState before = Snapshot(file);
  ExpectError(Keywarden({"init", "--dir", file.string()}), "not a directory");
  EXPECT_EQ(Snapshot(file), before);
  EXPECT_EQ(Listing(temp_.path()), std::set<std::string>{"regular"});
}

TEST_F(CliTest, InitWhereParentIsMissingFailsAndCreatesNothing) {
  const fs::path dir = temp_ / "missing" / "state";
  const RunResult r = Keywarden({"init", "--dir", dir.string()});
  ExpectError(r, "No such file or directory");
  EXPECT_THAT(Listing(temp_.path()), IsEmpty());
}

// The modes are the CLI's, not the caller's umask's.
TEST_F(CliTest, InitModesIgnorePermissiveUmask) {
  const fs::path dir = temp_ / "state";
  {
    ScopedUmask permissive(0);
    InitCluster(dir);
  }
  EXPECT_EQ(PermissionBits(dir), 0700u);
  EXPECT_EQ(PermissionBits(dir / "mastersecret.json"), 0600u);
}

TEST_F(CliTest, InitWithoutDirUsesKeywardenStateInWorkingDir) {
  RunOptions options;
  options.working_dir = temp_.path();
  const RunResult r = keywarden::testing::Run({Binary(), "init"}, options);
  const std::string cluster_id = HexValue(r, 32);
  EXPECT_TRUE(fs::is_regular_file(temp_ / "keywarden-state" / "mastersecret.json"));
  const nlohmann::json cluster = nlohmann::json::parse(
      ReadFile(temp_ / "keywarden-state" / "cluster.json").value_or(""), nullptr, false);
  EXPECT_EQ(StringField(cluster, "clusterID"), cluster_id);
}

TEST_F(CliTest, StatusWithoutClusterFails) {
  ExpectError(Keywarden({"status", "--dir", temp_.path().string()}), "init");
  ExpectError(Keywarden({"status", "--dir", (temp_ / "nonexistent").string()}), "init");
}

TEST_F(CliTest, StatusRefusesClusterJsonOfAnotherSecret) {
  InitCluster(temp_ / "a");
  InitCluster(temp_ / "b");
  const std::string foreign = ReadFile(temp_ / "b" / "cluster.json").value_or("");
  const fs::path cluster_a = temp_ / "a" / "cluster.json";
  fs::remove(cluster_a);
  temp_.WriteFile("a/cluster.json", foreign, 0644);
  const keys::MasterSecret secret_a = ParseSecret(ReadFile(temp_ / "a/mastersecret.json").value());
  const RunResult r = Keywarden({"status", "--dir", (temp_ / "a").string()});
  ExpectError(r, "does not match");
  ExpectNoLeak(r, SecretTexts(secret_a));
}

// Every truncation of a real master secret file is an error, and none shows a piece of the
// key (a JSON parser's message may quote the token it stopped in).
TEST_F(CliTest, EveryTruncationOfMasterSecretFails) {
  const fs::path dir = temp_ / "state";
  InitCluster(dir);
  const std::string full = ReadFile(dir / "mastersecret.json").value_or("");
  ASSERT_FALSE(full.empty());
  const keys::MasterSecret secret = ParseSecret(full);
  const std::vector<SecretText> secrets = SecretTexts(secret, {"volume-1"});
  for (size_t n = 0; n < full.size(); ++n) {
    SCOPED_TRACE("first " + std::to_string(n) + " bytes");
    const std::string file =
        temp_.WriteFile("cut/mastersecret.json", std::string_view(full).substr(0, n)).string();
    const RunResult r = Keywarden({"derive", "dek", "--master-secret", file, "--id", "volume-1"});
    EXPECT_EQ(r.exit_code, kExitError) << r;
    EXPECT_THAT(r.stdout_text, IsEmpty()) << r;
    EXPECT_THAT(r.stderr_text, StartsWith(kErrorPrefix)) << r;
    ExpectNoLeak(r, secrets);
    if (HasFailure()) break;  // One failing length explains the rest.
  }
}

// ---------------------------------------------------------------------------------------------
// Invalid master secret files.

// BadSecret is one way a master secret file can be wrong.
struct BadSecret {
  const char* name;
  enum Kind { kFile, kMissing, kDirectory } kind;
  // contents returns the file's bytes (kFile only), made from the vector's valid file.
  std::string (*contents)(const ClusterExample& ex);
  // pattern is the characteristic part of the error message (ECMAScript regex, searched).
  const char* pattern;
};

std::string ReplaceAt(std::string text, size_t pos, char c) {
  text.at(pos) = c;
  return text;
}

std::string ShortKey(const ClusterExample& ex) {
  const std::vector<uint8_t> key =
      crypto::Base64Decode(ex.key_b64).value_or(std::vector<uint8_t>());
  return MasterSecretJson(crypto::Base64Encode(std::span(key).first(keys::kMinMasterKeySize - 1)),
                          ex.salt_b64);
}

std::string ShortSalt(const ClusterExample& ex) {
  const std::vector<uint8_t> salt =
      crypto::Base64Decode(ex.salt_b64).value_or(std::vector<uint8_t>());
  return MasterSecretJson(ex.key_b64,
                          crypto::Base64Encode(std::span(salt).first(keys::kMinSaltSize - 1)));
}

const BadSecret kBadSecrets[] = {
    {"KeyShorterThan16Bytes", BadSecret::kFile, ShortKey, R"(key.*15 bytes.*16)"},
    {"SaltShorterThan32Bytes", BadSecret::kFile, ShortSalt, R"(salt.*31 bytes.*32)"},
    {"BadBase64InKey", BadSecret::kFile,
     [](const ClusterExample& ex) {
       return MasterSecretJson(ReplaceAt(ex.key_b64, 10, '*'), ex.salt_b64);
     },
     R"("key".*base64)"},
    {"BadBase64InSalt", BadSecret::kFile,
     [](const ClusterExample& ex) {
       return MasterSecretJson(ex.key_b64, ReplaceAt(ex.salt_b64, 10, '*'));
     },
     R"("salt".*base64)"},
    {"MissingKey", BadSecret::kFile,
     [](const ClusterExample& ex) { return "{\n\t\"salt\": \"" + ex.salt_b64 + "\"\n}"; },
     R"(missing.*"key")"},
    {"MissingSalt", BadSecret::kFile,
     [](const ClusterExample& ex) { return "{\n\t\"key\": \"" + ex.key_b64 + "\"\n}"; },
     R"(missing.*"salt")"},
    // YAML, not JSON: a parser error that quoted its input would show the key.
    {"NotJson", BadSecret::kFile,
     [](const ClusterExample& ex) {
       return "key: " + ex.key_b64 + "\nsalt: " + ex.salt_b64 + "\n";
     },
     R"(not valid JSON)"},
    {"JsonNotAnObject", BadSecret::kFile,
     [](const ClusterExample& ex) { return "[\"" + ex.key_b64 + "\", \"" + ex.salt_b64 + "\"]"; },
     R"(not an object)"},
    {"NonexistentPath", BadSecret::kMissing, nullptr, R"(No such file or directory)"},
    {"DirectoryAsFile", BadSecret::kDirectory, nullptr, R"(not a regular file|[Ii]s a directory)"},
    {"EmptyFile", BadSecret::kFile, [](const ClusterExample&) { return std::string(); },
     R"([Ee]mpty)"},
    {"TruncatedFile", BadSecret::kFile,
     [](const ClusterExample& ex) {
       return ex.mastersecret_json.substr(0, ex.mastersecret_json.size() / 2);
     },
     R"([Tt]runcated|[Ii]ncomplete|end of (input|file|data))"},
};

void PrintTo(const BadSecret& bad, std::ostream* os) { *os << bad.name; }

// MakeBadSecret lays out `bad` as DIR/mastersecret.json (DIR = temp / subdir), beside a
// cluster.json that belongs to the vector's master secret, and returns its path. The subdir
// name is neutral: a path must not be able to match a message pattern.
fs::path MakeBadSecret(const TempDir& temp, const std::string& subdir, const BadSecret& bad,
                       const ClusterExample& ex) {
  const nlohmann::json cluster = {{"measurementSalt", ex.measurement_salt},
                                  {"clusterID", ex.cluster_id}};
  temp.WriteFile(fs::path(subdir) / "cluster.json", cluster.dump(2) + "\n", 0644);
  const fs::path path = temp / subdir / "mastersecret.json";
  switch (bad.kind) {
    case BadSecret::kFile:
      temp.WriteFile(fs::path(subdir) / "mastersecret.json", bad.contents(ex));
      break;
    case BadSecret::kMissing:
      break;
    case BadSecret::kDirectory:
      EXPECT_TRUE(fs::create_directory(path));
      break;
  }
  return path;
}

class BadMasterSecretTest : public CliTest, public ::testing::WithParamInterface<BadSecret> {
 protected:
  // Make lays out the bad master secret in DIR/<case>/mastersecret.json, beside a cluster.json
  // that belongs to the vector's master secret, and returns its path.
  fs::path Make(const BadSecret& bad) { return MakeBadSecret(temp_, "case", bad, example_); }
};

// Every command that reads a master secret fails with the case's own message, prints nothing
// on stdout, shows no secret, and leaves the file as it was.
TEST_P(BadMasterSecretTest, EveryCommandRejectsItCleanly) {
  const BadSecret& bad = GetParam();
  const fs::path path = Make(bad);
  const FileState before = Snapshot(path);
  const std::set<std::string> listing_before = Listing(path.parent_path());
  const std::vector<SecretText> secrets =
      SecretTexts(ParseSecret(example_.mastersecret_json),
                  {"volume-1", "measurementSecret", example_.disk_uuid});

  const std::string file = path.string();
  const std::vector<std::vector<std::string>> commands = {
      {"derive", "dek", "--master-secret", file, "--id", "volume-1"},
      {"derive", "disk-key", "--master-secret", file, "--uuid", example_.disk_uuid},
      {"derive", "cluster-id", "--master-secret", file, "--measurement-salt",
       example_.measurement_salt},
      {"status", "--dir", path.parent_path().string()},
  };
  for (const auto& command : commands) {
    SCOPED_TRACE(command[0] + " " + command[1]);
    const RunResult r = Keywarden(command);
    ExpectError(r, bad.pattern, temp_.path().string());
    EXPECT_THAT(r.stderr_text, HasSubstr(file)) << "the message should name the file: " << r;
    ExpectNoLeak(r, secrets);
  }
  EXPECT_EQ(Snapshot(path), before);
  EXPECT_EQ(Listing(path.parent_path()), listing_before);
}

INSTANTIATE_TEST_SUITE_P(Cases, BadMasterSecretTest, ::testing::ValuesIn(kBadSecrets),
                         [](const ::testing::TestParamInfo<BadSecret>& param_info) {
                           return std::string(param_info.param.name);
                         });

// Each way of being wrong has its own message, so an operator can tell them apart.
TEST_F(CliTest, BadMasterSecretMessagesAreDistinct) {
  std::map<std::string, std::string> case_by_message;
  int index = 0;
  for (const BadSecret& bad : kBadSecrets) {
    const fs::path path = MakeBadSecret(temp_, "case-" + std::to_string(index++), bad, example_);
    const RunResult r =
        Keywarden({"derive", "dek", "--master-secret", path.string(), "--id", "volume-1"});
    const std::string message = Redact(r.stderr_text, path.string(), "<file>");
    const auto [it, inserted] = case_by_message.emplace(message, bad.name);
    EXPECT_TRUE(inserted) << bad.name << " and " << it->second
                          << " have the same message: " << message;
  }
}

// A valid master secret with a bad argument: the error shows no secret either.
TEST_F(CliTest, ErrorsWithValidMasterSecretShowNoSecret) {
  const std::string file = WriteVectorSecret();
  const std::vector<SecretText> secrets =
      SecretTexts(ParseSecret(example_.mastersecret_json),
                  {"volume-1", "measurementSecret", example_.disk_uuid, "not-a-uuid"});
  for (const std::vector<std::string>& command : std::vector<std::vector<std::string>>{
           {"derive", "disk-key", "--master-secret", file, "--uuid", "not-a-uuid"},
           {"derive", "disk-key", "--master-secret", file, "--uuid", example_.disk_uuid + "0"},
           {"derive", "dek", "--master-secret", file, "--id", "volume-1", "--length", "0"},
           {"derive", "cluster-id", "--master-secret", file, "--measurement-salt", "00"},
       }) {
    SCOPED_TRACE(command[1] + " " + command[command.size() - 1]);
    const RunResult r = Keywarden(command);
    EXPECT_NE(r.exit_code, kExitOk) << r;
    EXPECT_THAT(r.stdout_text, IsEmpty()) << r;
    ExpectNoLeak(r, secrets);
  }
}

// The leak check itself finds a piece of a key, in base64 or in hex, and passes clean output.
TEST_F(CliTest, LeakCheckFindsPiecesOfKeys) {
  const keys::MasterSecret secret = ParseSecret(example_.mastersecret_json);
  const std::vector<SecretText> secrets = SecretTexts(secret, {"volume-1"});
  RunResult r;
  r.stderr_text = "keywarden: error: last read: \"" + example_.key_b64.substr(3, 17) + "\"\n";
  EXPECT_NONFATAL_FAILURE(ExpectNoLeak(r, secrets), "master key (base64)");
  r.stderr_text = "";
  r.stdout_text = "x" + LibraryDek(secret, "volume-1", 32).substr(40) + "\n";
  EXPECT_NONFATAL_FAILURE(ExpectNoLeak(r, secrets), "DEK(volume-1)");
  r.stdout_text = ToUpper(HexOf(secret.key)).substr(10, 16);
  EXPECT_NONFATAL_FAILURE(ExpectNoLeak(r, secrets), "master key (HEX)");
  r.stdout_text = example_.cluster_id + "\n";  // Public.
  ExpectNoLeak(r, secrets);
}

// ---------------------------------------------------------------------------------------------
// Usage errors and help.

// UsageCase is a command line that is a usage error; "@SECRET@" stands for a valid master
// secret file.
struct UsageCase {
  const char* name;
  std::vector<std::string> args;
};

const std::string kHex64(64, 'a');

const UsageCase kUsageCases[] = {
    {"NoCommand", {}},
    {"UnknownCommand", {"frobnicate"}},
    {"UnknownDeriveCommand", {"derive", "frobnicate"}},
    {"DeriveWithoutCommand", {"derive"}},
    {"UnknownOption", {"init", "--bogus"}},
    {"StrayArgument", {"status", "extra"}},
    {"DekWithoutMasterSecret", {"derive", "dek", "--id", "volume-1"}},
    {"DekWithoutId", {"derive", "dek", "--master-secret", "@SECRET@"}},
    {"DekMissingOptionValue", {"derive", "dek", "--id", "volume-1", "--master-secret"}},
    {"DekEmptyId", {"derive", "dek", "--master-secret", "@SECRET@", "--id", ""}},
    {"DekLengthZero",
     {"derive", "dek", "--master-secret", "@SECRET@", "--id", "a", "--length", "0"}},
    {"DekLengthTooLong",
     {"derive", "dek", "--master-secret", "@SECRET@", "--id", "a", "--length", "8161"}},
    {"DiskKeyWithoutMasterSecret",
     {"derive", "disk-key", "--uuid", "00000000-0000-0000-0000-000000000000"}},
    {"DiskKeyWithoutUuid", {"derive", "disk-key", "--master-secret", "@SECRET@"}},
    {"ClusterIdWithoutMasterSecret", {"derive", "cluster-id", "--measurement-salt", kHex64}},
    {"ClusterIdWithoutSalt", {"derive", "cluster-id", "--master-secret", "@SECRET@"}},
    {"SaltTooShort",
     {"derive", "cluster-id", "--master-secret", "@SECRET@", "--measurement-salt",
      kHex64.substr(2)}},
    {"SaltTooLong",
     {"derive", "cluster-id", "--master-secret", "@SECRET@", "--measurement-salt", kHex64 + "00"}},
    {"SaltOddLength",
     {"derive", "cluster-id", "--master-secret", "@SECRET@", "--measurement-salt",
      kHex64.substr(1)}},
    {"SaltNotHex",
     {"derive", "cluster-id", "--master-secret", "@SECRET@", "--measurement-salt",
      "g" + kHex64.substr(1)}},
    {"SaltEmpty",
     {"derive", "cluster-id", "--master-secret", "@SECRET@", "--measurement-salt", ""}},
    {"Pcr15WithoutClusterId", {"derive", "pcr15"}},
    {"ClusterIdTooShort", {"derive", "pcr15", "--cluster-id", kHex64.substr(2)}},
    {"ClusterIdTooLong", {"derive", "pcr15", "--cluster-id", kHex64 + "00"}},
    {"ClusterIdNotHex", {"derive", "pcr15", "--cluster-id", kHex64.substr(1) + "z"}},
    {"ClusterIdWithPrefix", {"derive", "pcr15", "--cluster-id", "0x" + kHex64.substr(2)}},
    {"ClusterIdEmpty", {"derive", "pcr15", "--cluster-id", ""}},
    {"VolumeWithoutCommand", {"volume"}},
    {"VolumeFormatWithoutTarget", {"volume", "format", "--master-secret", "@SECRET@"}},
    {"VolumeFormatBothKeySources",
     {"volume", "format", "x.img", "--master-secret", "@SECRET@", "--endpoint", "127.0.0.1:1"}},
    {"VolumeFormatBadType",
     {"volume", "format", "x.img", "--master-secret", "@SECRET@", "--type", "luks3"}},
    {"VolumeFormatBadPbkdf",
     {"volume", "format", "x.img", "--master-secret", "@SECRET@", "--pbkdf", "scrypt"}},
    {"VolumeOpenWithoutName", {"volume", "open", "x.img", "--master-secret", "@SECRET@"}},
    {"VolumeOpenZeroThreads",
     {"volume", "open", "x.img", "--name", "n", "--master-secret", "@SECRET@", "--threads", "0"}},
    {"VolumeCloseWithoutName", {"volume", "close"}},
    {"VolumeStatusWithoutTarget", {"volume", "status"}},
    {"MeasurementsReadWithoutTpm", {"measurements", "read"}},
    {"MeasurementsReadBadFormat", {"measurements", "read", "--tpm", "x", "--format", "xml"}},
};

void PrintTo(const UsageCase& usage, std::ostream* os) { *os << usage.name; }

class UsageErrorTest : public CliTest, public ::testing::WithParamInterface<UsageCase> {};

TEST_P(UsageErrorTest, ExitsTwo) {
  const std::string secret = WriteVectorSecret();
  std::vector<std::string> args = GetParam().args;
  for (std::string& arg : args) {
    if (arg == "@SECRET@") arg = secret;
  }
  const RunResult r = Keywarden(args);
  ExpectUsageError(r);
  ExpectNoLeak(r, SecretTexts(ParseSecret(example_.mastersecret_json)));
}

INSTANTIATE_TEST_SUITE_P(Cases, UsageErrorTest, ::testing::ValuesIn(kUsageCases),
                         [](const ::testing::TestParamInfo<UsageCase>& param_info) {
                           return std::string(param_info.param.name);
                         });

// HelpCase is a command whose --help must name each of `mentions`.
struct HelpCase {
  const char* name;
  std::vector<std::string> command;
  std::vector<std::string> mentions;
};

const HelpCase kHelpCases[] = {
    {"TopLevel", {}, {"--help", "--version", "init", "status", "derive"}},
    {"Init", {"init"}, {"--help", "--dir"}},
    {"Status", {"status"}, {"--help", "--dir"}},
    {"Derive", {"derive"}, {"--help", "dek", "disk-key", "cluster-id", "pcr15"}},
    {"DeriveDek", {"derive", "dek"}, {"--help", "--master-secret", "--id", "--length"}},
    {"DeriveDiskKey", {"derive", "disk-key"}, {"--help", "--master-secret", "--uuid"}},
    {"DeriveClusterId",
     {"derive", "cluster-id"},
     {"--help", "--master-secret", "--measurement-salt"}},
    {"DerivePcr15", {"derive", "pcr15"}, {"--help", "--cluster-id"}},
    {"Volume", {"volume"}, {"--help", "format", "open", "close", "status"}},
    {"VolumeFormat",
     {"volume", "format"},
     {"--help", "TARGET", "--endpoint", "--master-secret", "--integrity", "--type", "--pbkdf",
      "--pbkdf-iterations", "--wipe", "--force", "--tls-ca", "--timeout"}},
    {"VolumeOpen",
     {"volume", "open"},
     {"--help", "TARGET", "--name", "--endpoint", "--master-secret", "--fuse-dir", "--foreground",
      "--threads", "--run-dir"}},
    {"VolumeClose", {"volume", "close"}, {"--help", "NAME", "--run-dir"}},
    {"VolumeStatus", {"volume", "status"}, {"--help", "TARGET_OR_NAME", "--json", "--run-dir"}},
    {"Measurements", {"measurements"}, {"--help", "read"}},
    {"MeasurementsRead", {"measurements", "read"}, {"--help", "--tpm", "--format"}},
};

void PrintTo(const HelpCase& help, std::ostream* os) { *os << help.name; }

class HelpTest : public ::testing::TestWithParam<HelpCase> {};

TEST_P(HelpTest, ExitsZeroAndNamesEveryOption) {
  for (const char* flag : {"--help", "-h"}) {
    SCOPED_TRACE(flag);
    std::vector<std::string> args = GetParam().command;
    args.push_back(flag);
    const RunResult r = Keywarden(args);
    EXPECT_EQ(r.exit_code, kExitOk) << r;
    EXPECT_THAT(r.stdout_text, HasSubstr("Usage:")) << r;
    EXPECT_THAT(r.stderr_text, IsEmpty()) << r;
    for (const std::string& mention : GetParam().mentions) {
      EXPECT_THAT(r.stdout_text, HasSubstr(mention)) << r;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, HelpTest, ::testing::ValuesIn(kHelpCases),
                         [](const ::testing::TestParamInfo<HelpCase>& param_info) {
                           return std::string(param_info.param.name);
                         });

TEST(CliVersionTest, VersionExitsZero) {
  const RunResult r = Keywarden({"--version"});
  EXPECT_EQ(r.exit_code, kExitOk) << r;
  EXPECT_THAT(r.stdout_text, HasSubstr("keywarden")) << r;
}

// ---------------------------------------------------------------------------------------------
// The subprocess helper itself.

TEST(SubprocessTest, CapturesOutputsExitCodeAndStdin) {
  const RunResult r = keywarden::testing::Run({"/bin/sh", "-c", "cat; echo err >&2; exit 3"},
                                              std::string("hello\n"));
  EXPECT_EQ(r.exit_code, 3) << r;
  EXPECT_EQ(r.stdout_text, "hello\n");
  EXPECT_EQ(r.stderr_text, "err\n");
  EXPECT_TRUE(r.error.empty());
}

TEST(SubprocessTest, LargeInputAndOutputDoNotDeadlock) {
  const std::string big(1 << 20, 'x');
  const RunResult r = keywarden::testing::Run({"cat"}, big);
  EXPECT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(r.stdout_text.size(), big.size());
  EXPECT_TRUE(r.stdout_text == big);
}

TEST(SubprocessTest, ProgramThatIgnoresItsInput) {
  const RunResult r = keywarden::testing::Run({"/bin/true"}, std::string(1 << 20, 'x'));
  EXPECT_TRUE(r.ok()) << r;
}

TEST(SubprocessTest, MissingProgramIsReportedNotThrown) {
  TempDir dir;
  const RunResult r = keywarden::testing::Run({(dir / "no-such-program").string()});
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.error.empty()) << r;
}

TEST(SubprocessTest, SignalIsReported) {
  const RunResult r = keywarden::testing::Run({"/bin/sh", "-c", "kill -TERM $$"});
  EXPECT_EQ(r.exit_code, -1) << r;
  EXPECT_EQ(r.term_signal, SIGTERM) << r;
}

TEST(SubprocessTest, WorkingDirAndEnvironment) {
  TempDir dir;
  RunOptions options;
  options.working_dir = dir.path();
  options.env_overrides = {{"KEYWARDEN_TEST_VALUE", "42"}};
  const RunResult r =
      keywarden::testing::Run({"/bin/sh", "-c", "pwd; echo \"$KEYWARDEN_TEST_VALUE\""}, options);
  EXPECT_EQ(r.stdout_text, fs::canonical(dir.path()).string() + "\n42\n") << r;
}

TEST(SubprocessTest, TempDirIsRemoved) {
  fs::path path;
  {
    TempDir dir;
    path = dir.path();
    ASSERT_FALSE(path.empty());
    EXPECT_EQ(PermissionBits(path), 0700u);
    dir.WriteFile("a/b/c.txt", "text");
    EXPECT_EQ(ReadFile(dir / "a/b/c.txt"), "text");
    EXPECT_EQ(PermissionBits(dir / "a/b/c.txt"), 0600u);
  }
  EXPECT_FALSE(fs::exists(path));
}

}  // namespace
}  // namespace keywarden::testing
