// Unit tests of the userspace data path on plain files: reads and writes at any offset and
// length against a byte-array model, the on-disk layout (sector s of the data area is XTS data
// unit s), the header left alone, concurrency without lost updates, and refusals.
#include "keywarden/volume/data_path.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <thread>

#include "keywarden/crypto/random.h"
#include "tests/subprocess.h"

namespace keywarden::volume {
namespace {

using keywarden::testing::ReadFile;
using keywarden::testing::TempDir;

constexpr uint64_t kOffset = 64 * 1024;  // a stand-in header, kept small for the tests

std::string RandomBytes(size_t n, std::mt19937_64& rng) {
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

struct Fixture {
  TempDir dir{"keywarden-datapath"};
  std::filesystem::path file;
  SecretBytes key;
  std::string header;
  std::unique_ptr<DataPath> path;

  Fixture(size_t sector_size, size_t sectors, uint64_t seed = 1) {
    std::mt19937_64 rng(seed);
    header = RandomBytes(kOffset, rng);
    file = dir.WriteFile("volume.img", header + RandomBytes(sector_size * sectors, rng));
    auto k = crypto::RandomSecret(64);
    EXPECT_TRUE(k.ok());
    key = std::move(*k);
    auto codec = NewXtsCodec(key, sector_size);
    EXPECT_TRUE(codec.ok()) << codec.status();
    auto p = DataPath::Open(file.string(), kOffset, std::move(*codec));
    EXPECT_TRUE(p.ok()) << p.status();
    if (p.ok()) path = std::move(*p);
  }

  std::string ReadAll() {
    std::string out(path->size(), '\0');
    auto n = path->Read(0, std::span(reinterpret_cast<uint8_t*>(out.data()), out.size()));
    EXPECT_TRUE(n.ok());
    EXPECT_EQ(*n, out.size());
    return out;
  }
};

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

class DataPathTest : public ::testing::TestWithParam<size_t> {};

TEST_P(DataPathTest, RandomReadsAndWritesMatchAModel) {
  const size_t ss = GetParam();
  Fixture f(ss, 64);
  ASSERT_TRUE(f.path);
  ASSERT_EQ(f.path->size(), ss * 64);
  std::string model = f.ReadAll();
  std::mt19937_64 rng(7);
  for (int i = 0; i < 400; ++i) {
    const uint64_t offset = rng() % model.size();
    // Mostly small and unaligned; sometimes several sectors; sometimes one byte.
    size_t length = (i % 5 == 0) ? 1 : (i % 3 == 0 ? rng() % (4 * ss) : rng() % 700) + 1;
    length = std::min<size_t>(length, model.size() - offset);
    const std::string data = RandomBytes(length, rng);
    auto n = f.path->Write(offset, Bytes(data));
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, length);
    model.replace(offset, length, data);

    const uint64_t read_at = rng() % model.size();
    std::string got(rng() % (3 * ss) + 1, '\0');
    auto r = f.path->Read(read_at, std::span(reinterpret_cast<uint8_t*>(got.data()), got.size()));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(*r, std::min<size_t>(got.size(), model.size() - read_at));
    ASSERT_EQ(got.substr(0, *r), model.substr(read_at, *r)) << "read at " << read_at;
  }
  EXPECT_EQ(f.ReadAll(), model);
}

TEST_P(DataPathTest, DiskLayoutIsOneXtsUnitPerSectorAndTheHeaderIsUntouched) {
  const size_t ss = GetParam();
  Fixture f(ss, 16);
  ASSERT_TRUE(f.path);
  std::mt19937_64 rng(3);
  const std::string plain = RandomBytes(f.path->size(), rng);
  ASSERT_TRUE(f.path->Write(0, Bytes(plain)).ok());
  ASSERT_TRUE(f.path->Sync().ok());

  const std::string disk = *ReadFile(f.file);
  EXPECT_EQ(disk.substr(0, kOffset), f.header) << "the data path wrote into the header";
  auto cipher = crypto::XtsSectorCipher::New(f.key, ss);
  ASSERT_TRUE(cipher.ok());
  for (size_t s = 0; s < 16; ++s) {
    std::string sector = disk.substr(kOffset + s * ss, ss);
    EXPECT_NE(sector, plain.substr(s * ss, ss)) << "sector " << s << " stored in plaintext";
    auto out = std::span(reinterpret_cast<uint8_t*>(sector.data()), ss);
    ASSERT_TRUE((*cipher)->DecryptSectors(s, out, out).ok());
    EXPECT_EQ(sector, plain.substr(s * ss, ss)) << "sector " << s;
  }
}

TEST_P(DataPathTest, ConcurrentWritesSharingSectorsLoseNothing) {
  const size_t ss = GetParam();
  Fixture f(ss, 8);
  ASSERT_TRUE(f.path);
  // Eight threads write interleaved 3-byte pieces: every sector is read-modify-written by all
  // of them at once. Without the region locks, updates get lost.
  constexpr int kThreads = 8;
  constexpr size_t kPiece = 3;
  const size_t span = 4 * ss;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string piece(kPiece, static_cast<char>('A' + t));
      for (size_t at = t * kPiece; at + kPiece <= span; at += kThreads * kPiece) {
        ASSERT_TRUE(f.path->Write(ss / 2 + at, Bytes(piece)).ok());
      }
    });
  }
  for (auto& thread : threads) thread.join();
  const std::string all = f.ReadAll();
  for (size_t at = 0; at + kPiece <= span; at += kPiece) {
    const char want = static_cast<char>('A' + (at / kPiece) % kThreads);
    ASSERT_EQ(all.substr(ss / 2 + at, kPiece), std::string(kPiece, want)) << "at " << at;
  }
}

INSTANTIATE_TEST_SUITE_P(SectorSizes, DataPathTest, ::testing::Values(4096, 512));

TEST(DataPath, EndOfVolume) {
  Fixture f(4096, 4);
  ASSERT_TRUE(f.path);
  const std::string data(10000, 'x');
  auto n = f.path->Write(f.path->size() - 100, Bytes(data));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 100u) << "a write is cut at the end of the volume";
  auto past = f.path->Write(f.path->size(), Bytes(data));
  EXPECT_EQ(past.status().code(), absl::StatusCode::kOutOfRange);
  std::string buf(50, '\0');
  auto r = f.path->Read(f.path->size(), std::span(reinterpret_cast<uint8_t*>(buf.data()), 50));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 0u);
  r = f.path->Read(f.path->size() - 10, std::span(reinterpret_cast<uint8_t*>(buf.data()), 50));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 10u);
  EXPECT_EQ(buf.substr(0, 10), std::string(10, 'x'));
}

TEST(DataPath, WriteZerosInitializesEveryByteAndReportsProgress) {
  Fixture f(4096, 300);  // more than one 1 MiB chunk
  ASSERT_TRUE(f.path);
  uint64_t last_done = 0, calls = 0;
  ASSERT_TRUE(f.path
                  ->WriteZeros([&](uint64_t done, uint64_t total) {
                    EXPECT_GT(done, last_done);
                    EXPECT_EQ(total, f.path->size());
                    last_done = done;
                    ++calls;
                    return true;
                  })
                  .ok());
  EXPECT_EQ(last_done, f.path->size());
  EXPECT_GE(calls, 2u);
  EXPECT_EQ(f.ReadAll(), std::string(f.path->size(), '\0'));
  auto cancelled = f.path->WriteZeros([](uint64_t, uint64_t) { return false; });
  EXPECT_EQ(cancelled.code(), absl::StatusCode::kCancelled);
}

TEST(DataPath, SecondOpenOfTheSameTargetIsRefused) {
  Fixture f(4096, 4);
  ASSERT_TRUE(f.path);
  auto codec = NewXtsCodec(f.key, 4096);
  ASSERT_TRUE(codec.ok());
  auto second = DataPath::Open(f.file.string(), kOffset, std::move(*codec));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("already open"), std::string::npos);
}

TEST(DataPath, RefusesDataAreasThatAreNotWholeSectors) {
  TempDir dir;
  const auto file = dir.WriteFile("odd.img", std::string(kOffset + 4096 + 100, '\0'));
  auto key = crypto::RandomSecret(64);
  ASSERT_TRUE(key.ok());
  auto codec = NewXtsCodec(*key, 4096);
  ASSERT_TRUE(codec.ok());
  EXPECT_FALSE(DataPath::Open(file.string(), kOffset, std::move(*codec)).ok());
  auto codec2 = NewXtsCodec(*key, 4096);
  ASSERT_TRUE(codec2.ok());
  EXPECT_FALSE(DataPath::Open(file.string(), 1 << 30, std::move(*codec2)).ok());
  auto codec3 = NewXtsCodec(*key, 4096);
  ASSERT_TRUE(codec3.ok());
  EXPECT_FALSE(DataPath::Open((dir / "missing").string(), 0, std::move(*codec3)).ok());
}

}  // namespace
}  // namespace keywarden::volume
