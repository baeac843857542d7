#include "tests/file_io.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>

namespace keywarden::testing {

std::string RandomText(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

void WriteAt(const std::filesystem::path& path, uint64_t offset, const std::string& data) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f) << path;
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  f.flush();
  ASSERT_TRUE(f) << "write to " << path;
}

std::string ReadAt(const std::filesystem::path& path, uint64_t offset, size_t n) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  std::string out(n, '\0');
  f.read(out.data(), static_cast<std::streamsize>(n));
  EXPECT_EQ(static_cast<size_t>(f.gcount()), n) << path;
  return out;
}

}  // namespace keywarden::testing
