#include "keywarden/keys/master_secret.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "keywarden/crypto/encoding.h"
#include "tests/subprocess.h"
#include "tests/vectors.h"

namespace keywarden::keys {
namespace {

namespace fs = std::filesystem;
using ::keywarden::testing::Bytes;
using ::keywarden::testing::LoadJson;
using ::keywarden::testing::TempDir;

const InsecureSecretAccess kToken = InsecureSecretAccess::Get();

std::string ExampleJson() {
  return LoadJson(
             "constellation/constellation_vectors.json")["cluster_example"]["mastersecret_json"]
      .get<std::string>();
}

std::string Text(const SecretBytes& s) {
  const auto v = s.Reveal(kToken);
  return std::string(v.begin(), v.end());
}

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(MasterSecretTest, ParsesConstellationFileAndSerializesByteExact) {
  const std::string json = ExampleJson();
  auto secret = ParseMasterSecretJson(Bytes(json));
  ASSERT_TRUE(secret.ok()) << secret.status();
  EXPECT_EQ(secret->key.size(), 32u);
  EXPECT_EQ(secret->salt.size(), 32u);
  EXPECT_EQ(secret->key.Reveal(kToken)[31], 0x1f);
  EXPECT_EQ(secret->salt.Reveal(kToken)[0], 0x20);
  EXPECT_EQ(Text(SerializeMasterSecretJson(*secret)), json);
}

TEST(MasterSecretTest, AcceptsOtherWhitespaceFieldOrderAndExtraFields) {
  const std::string json =
      R"({"salt":"ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=", "note": 1,
          "key":"AAECAwQFBgcICQoLDA0ODw=="})";
  auto secret = ParseMasterSecretJson(Bytes(json));
  ASSERT_TRUE(secret.ok()) << secret.status();
  EXPECT_EQ(secret->key.size(), 16u);
}

struct BadCase {
  const char* name;
  std::string json;
  const char* message;  // a substring the error must contain
};

TEST(MasterSecretTest, EachInvalidInputHasItsOwnError) {
  const std::string good_salt = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
  const std::string good_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
  const std::vector<BadCase> cases = {
      {"short key", R"({"key":"AAECAwQFBgcICQoLDA0O","salt":")" + good_salt + "\"}",
       "key is 15 bytes; at least 16 are required"},
      {"short salt",
       R"({"key":")" + good_key + R"(","salt":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg=="})",
       "salt is 31 bytes; at least 32 are required"},
      {"bad base64 key", R"({"key":"AAEC*wQF","salt":")" + good_salt + "\"}",
       "field \"key\" is not valid base64"},
      {"bad base64 salt", R"({"key":")" + good_key + R"(","salt":"ICEiIyQlJicoKSor LC0u"})",
       "field \"salt\" is not valid base64"},
      {"missing key", R"({"salt":")" + good_salt + "\"}", "missing field \"key\""},
      {"missing salt", R"({"key":")" + good_key + "\"}", "missing field \"salt\""},
      {"key not a string", R"({"key":5,"salt":")" + good_salt + "\"}",
       "field \"key\" is not a string"},
      {"not json", "key=AAEC", "not valid JSON (syntax error at byte 1)"},
      {"truncated", ExampleJson().substr(0, 40), "JSON ends early (truncated file?)"},
      {"truncated after value", ExampleJson().substr(0, ExampleJson().size() - 1),
       "JSON ends early"},
      {"empty", "", "file is empty"},
      {"blank", " \n\t", "file is empty"},
      {"array", "[1,2]", "JSON is not an object"},
  };
  std::set<std::string> messages;
  for (const auto& c : cases) {
    auto r = ParseMasterSecretJson(Bytes(c.json));
    ASSERT_FALSE(r.ok()) << c.name;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    const std::string message(r.status().message());
    EXPECT_NE(message.find(c.message), std::string::npos) << c.name << ": " << message;
    EXPECT_EQ(message.find(good_key), std::string::npos) << c.name;
    EXPECT_EQ(message.find(good_salt), std::string::npos) << c.name;
    messages.insert(message);
  }
  // Only the two truncations and the two empty inputs share a message.
  EXPECT_EQ(messages.size(), cases.size() - 2);
}

TEST(MasterSecretTest, WriteCreatesMode0600AndReadsBack) {
  TempDir dir;
  const fs::path path = dir.path() / "mastersecret.json";
  auto secret = MasterSecret::Generate();
  ASSERT_TRUE(secret.ok());
  const mode_t old_umask = umask(0);
  const absl::Status written = WriteMasterSecretFile(path, *secret);
  umask(old_umask);
  ASSERT_TRUE(written.ok()) << written;
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = ReadMasterSecretFile(path);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(Text(back->key), Text(secret->key));
  EXPECT_EQ(Text(back->salt), Text(secret->salt));
  EXPECT_EQ(ReadFile(path), Text(SerializeMasterSecretJson(*secret)));
}

TEST(MasterSecretTest, WriteNeverOverwrites) {
  TempDir dir;
  const fs::path path = dir.path() / "mastersecret.json";
  { std::ofstream(path) << "precious"; }
  auto secret = MasterSecret::Generate();
  const absl::Status s = WriteMasterSecretFile(path, *secret);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(ReadFile(path), "precious");
  // Nor through a symlink.
  const fs::path link = dir.path() / "link.json";
  fs::create_symlink(dir.path() / "target.json", link);
  EXPECT_FALSE(WriteMasterSecretFile(link, *secret).ok());
  EXPECT_FALSE(fs::exists(dir.path() / "target.json"));
}

TEST(MasterSecretTest, ReadErrorsNameThePath) {
  TempDir dir;
  auto missing = ReadMasterSecretFile(dir.path() / "nope.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(std::string(missing.status().message()).find("nope.json"), std::string::npos);
  auto directory = ReadMasterSecretFile(dir.path());
  EXPECT_FALSE(directory.ok());
  EXPECT_NE(std::string(directory.status().message()).find("not a regular file"),
            std::string::npos);
  const fs::path big = dir.path() / "big.json";
  { std::ofstream(big) << std::string(kMaxMasterSecretFileSize + 1, ' '); }
  EXPECT_FALSE(ReadMasterSecretFile(big).ok());
  const fs::path bad = dir.path() / "bad.json";
  { std::ofstream(bad) << "{}"; }
  auto r = ReadMasterSecretFile(bad);
  EXPECT_NE(std::string(r.status().message()).find("bad.json: master secret: missing field"),
            std::string::npos);
}

TEST(MasterSecretTest, ReadRefusesUnreadableFile) {
  if (geteuid() == 0) GTEST_SKIP() << "root reads files regardless of their mode";
  TempDir dir;
  const fs::path path = dir.path() / "m.json";
  { std::ofstream(path) << ExampleJson(); }
  chmod(path.c_str(), 0);
  EXPECT_EQ(ReadMasterSecretFile(path).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST(MasterSecretTest, GenerateIsRandom) {
  auto a = MasterSecret::Generate();
  auto b = MasterSecret::Generate();
  EXPECT_NE(Text(a->key), Text(b->key));
  EXPECT_NE(Text(a->salt), Text(b->salt));
}

}  // namespace
}  // namespace keywarden::keys
