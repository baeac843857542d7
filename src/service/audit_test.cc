// Unit tests of the hash-chained audit log: records round-trip, the chain survives reopening,
// and every kind of tampering (edit, delete, reorder, torn line) is detected.
#include "keywarden/service/audit.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::service {
namespace {

using keywarden::testing::ReadFile;
using keywarden::testing::TempDir;
using ::testing::HasSubstr;

std::vector<std::string> Lines(const std::filesystem::path& path) {
  std::vector<std::string> lines;
  std::istringstream in(ReadFile(path).value_or(""));
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

void WriteLines(const std::filesystem::path& path, const std::vector<std::string>& lines) {
  std::ofstream out(path, std::ios::trunc);
  for (const auto& line : lines) out << line << "\n";
}

AuditRecord Record(int i) {
  return {"join",
          "ek-" + std::to_string(i),
          "uuid-" + std::to_string(i),
          i % 2 == 0,
          i % 2 == 0 ? "ok" : "PCR 4 mismatch",
          "127.0.0.1:1"};
}

TEST(AuditLog, AppendsChainedRecordsAndContinuesAfterReopen) {
  TempDir dir;
  const auto path = dir / "audit.log";
  {
    auto log = AuditLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    for (int i = 0; i < 3; ++i) ASSERT_TRUE((*log)->Append(Record(i)).ok());
  }
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  {
    auto log = AuditLog::Open(path);
    ASSERT_TRUE(log.ok()) << log.status();
    ASSERT_TRUE((*log)->Append(Record(3)).ok());
  }
  auto count = VerifyAuditLog(path);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 4u);
  const auto lines = Lines(path);
  ASSERT_EQ(lines.size(), 4u);
  const auto first = nlohmann::json::parse(lines[0]);
  EXPECT_EQ(first["seq"], 0);
  EXPECT_EQ(first["prev"], std::string(64, '0'));
  EXPECT_EQ(first["decision"], "allow");
  EXPECT_EQ(first["node"], "ek-0");
  EXPECT_EQ(first["key_id"], "uuid-0");
  const auto second = nlohmann::json::parse(lines[1]);
  EXPECT_EQ(second["decision"], "deny");
  EXPECT_EQ(second["reason"], "PCR 4 mismatch");
  EXPECT_THAT(second["time"].get<std::string>(), ::testing::MatchesRegex("20[0-9-]+T[0-9:.]+Z"));
}

TEST(AuditLog, DetectsEditsDeletionsReorderingAndTornLines) {
  TempDir dir;
  const auto path = dir / "audit.log";
  {
    auto log = AuditLog::Open(path);
    ASSERT_TRUE(log.ok());
    for (int i = 0; i < 4; ++i) ASSERT_TRUE((*log)->Append(Record(i)).ok());
  }
  const auto lines = Lines(path);

  auto edited = lines;
  edited[1].replace(edited[1].find("deny"), 4, "allo");
  WriteLines(path, edited);
  EXPECT_EQ(VerifyAuditLog(path).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(VerifyAuditLog(path).status().message(), HasSubstr("line 3"));

  auto deleted = lines;
  deleted.erase(deleted.begin() + 2);
  WriteLines(path, deleted);
  EXPECT_THAT(VerifyAuditLog(path).status().message(), HasSubstr("sequence number"));

  auto swapped = lines;
  std::swap(swapped[1], swapped[2]);
  WriteLines(path, swapped);
  EXPECT_EQ(VerifyAuditLog(path).status().code(), absl::StatusCode::kDataLoss);

  WriteLines(path, lines);
  {
    std::ofstream out(path, std::ios::app);
    out << "{\"seq\":4,";  // a write cut short
  }
  EXPECT_THAT(VerifyAuditLog(path).status().message(), HasSubstr("partial line"));
  // A log whose chain is broken is not appended to.
  EXPECT_FALSE(AuditLog::Open(path).ok());

  WriteLines(path, lines);
  auto count = VerifyAuditLog(path);
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(*count, 4u);
}

TEST(AuditLog, ConcurrentAppendsKeepTheChain) {
  TempDir dir;
  const auto path = dir / "audit.log";
  auto log = AuditLog::Open(path);
  ASSERT_TRUE(log.ok());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) ASSERT_TRUE((*log)->Append(Record(t * 100 + i)).ok());
    });
  }
  for (auto& thread : threads) thread.join();
  auto count = VerifyAuditLog(path);
  ASSERT_TRUE(count.ok()) << count.status();
  EXPECT_EQ(*count, 100u);
}

TEST(AuditLog, EscapesHostileText) {
  TempDir dir;
  const auto path = dir / "audit.log";
  auto log = AuditLog::Open(path);
  ASSERT_TRUE(log.ok());
  AuditRecord record = Record(0);
  record.reason = "line\nbreak \"quote\" \x1b[31m" + std::string(2000, 'x') + "\xff";
  ASSERT_TRUE((*log)->Append(record).ok());
  const auto lines = Lines(path);
  ASSERT_EQ(lines.size(), 1u);
  const auto j = nlohmann::json::parse(lines[0]);
  EXPECT_LE(j["reason"].get<std::string>().size(), 520u);
  EXPECT_TRUE(VerifyAuditLog(path).ok());
}

}  // namespace
}  // namespace keywarden::service
