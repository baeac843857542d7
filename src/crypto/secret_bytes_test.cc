#include "keywarden/secret_bytes.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <openssl/crypto.h>
#include <sys/resource.h>

#include <algorithm>
#include <fstream>
#include <ostream>
#include <string>
#include <type_traits>

#include "keywarden/crypto/random.h"
#include "keywarden/secure_allocator.h"

namespace keywarden {
namespace {

// Compile-time contract: no copies, no printing, no implicit conversion to text.
static_assert(!std::is_copy_constructible_v<SecretBytes>);
static_assert(!std::is_copy_assignable_v<SecretBytes>);
static_assert(std::is_nothrow_move_constructible_v<SecretBytes>);
static_assert(!std::is_convertible_v<SecretBytes, std::string>);
static_assert(!std::is_constructible_v<std::string, SecretBytes>);
static_assert(!fmt::is_formattable<SecretBytes>::value);
template <typename T>
concept Streamable = requires(std::ostream& os, const T& t) {
  os << t;
};
static_assert(!Streamable<SecretBytes>);

std::vector<uint8_t> RandomBytes(size_t n) {
  std::vector<uint8_t> v(n);
  EXPECT_TRUE(crypto::RandomFill(v).ok());
  return v;
}

// ContainsWindow reports whether any 8-byte run of `secret` appears in `memory`.
bool ContainsWindow(std::span<const uint8_t> memory, std::span<const uint8_t> secret) {
  for (size_t i = 0; i + 8 <= secret.size(); ++i) {
    if (std::search(memory.begin(), memory.end(), secret.begin() + i, secret.begin() + i + 8) !=
        memory.end()) {
      return true;
    }
  }
  return false;
}

TEST(SecretBytesTest, HoldsCopyOfInput) {
  const auto input = RandomBytes(32);
  SecretBytes s(input);
  ASSERT_EQ(s.size(), 32u);
  const auto view = s.Reveal(InsecureSecretAccess::Get());
  EXPECT_TRUE(std::equal(view.begin(), view.end(), input.begin()));
  EXPECT_NE(view.data(), input.data());
}

TEST(SecretBytesTest, SizedConstructorZeroes) {
  SecretBytes s(100);
  const auto view = s.Reveal(InsecureSecretAccess::Get());
  EXPECT_TRUE(std::all_of(view.begin(), view.end(), [](uint8_t b) { return b == 0; }));
  SecretBytes empty(size_t{0});
  EXPECT_TRUE(empty.empty());
  EXPECT_TRUE(SecretBytes().empty());
}

TEST(SecretBytesTest, MoveLeavesSourceEmpty) {
  SecretBytes a(RandomBytes(16));
  const uint8_t* p = a.Reveal(InsecureSecretAccess::Get()).data();
  SecretBytes b(std::move(a));
  EXPECT_TRUE(a.empty());  // NOLINT(bugprone-use-after-move): the contract under test
  EXPECT_EQ(b.Reveal(InsecureSecretAccess::Get()).data(), p);
  SecretBytes c;
  c = std::move(b);
  EXPECT_TRUE(b.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(c.size(), 16u);
}

TEST(SecretBytesTest, CloneIsIndependent) {
  SecretBytes a(RandomBytes(32));
  SecretBytes b = a.Clone();
  const auto token = InsecureSecretAccess::Get();
  EXPECT_NE(a.Reveal(token).data(), b.Reveal(token).data());
  EXPECT_TRUE(crypto::ConstantTimeEquals(a.Reveal(token), b.Reveal(token)));
  b.MutableReveal(token)[0] ^= 1;
  EXPECT_FALSE(crypto::ConstantTimeEquals(a.Reveal(token), b.Reveal(token)));
}

TEST(SecretBytesTest, LivesInLockedSecureHeap) {
  SecretBytes s(RandomBytes(32));
  const auto stats = internal::GetSecureHeapStats();
  ASSERT_TRUE(stats.initialized);
  EXPECT_EQ(CRYPTO_secure_allocated(s.Reveal(InsecureSecretAccess::Get()).data()), 1);
  EXPECT_GT(stats.used_bytes, 0u);
  rlimit limit{};
  ASSERT_EQ(getrlimit(RLIMIT_MEMLOCK, &limit), 0);
  if (limit.rlim_cur != RLIM_INFINITY && limit.rlim_cur < (2u << 20)) {
    GTEST_SKIP() << "RLIMIT_MEMLOCK is " << limit.rlim_cur << " bytes; mlock cannot succeed";
  }
  EXPECT_TRUE(stats.locked);
  // The kernel agrees that this process has locked memory.
  std::ifstream status("/proc/self/status");
  std::string line;
  long locked_kb = -1;
  while (std::getline(status, line)) {
    if (line.rfind("VmLck:", 0) == 0) locked_kb = std::stol(line.substr(6));
  }
  EXPECT_GE(locked_kb, 1024);
}

TEST(SecretBytesTest, MemoryIsWipedWhenFreed) {
  const auto secret = RandomBytes(256);
  const uint8_t* address = nullptr;
  {
    SecretBytes s(secret);
    address = s.Reveal(InsecureSecretAccess::Get()).data();
    ASSERT_TRUE(ContainsWindow({address, 256}, secret));
  }
  // The secure heap stays mapped after a free, so the old bytes can be inspected. The
  // allocator reuses the first bytes of a free block for its list links; nothing of the
  // secret may survive anywhere in the block.
  ASSERT_EQ(CRYPTO_secure_allocated(address), 1);
  EXPECT_FALSE(ContainsWindow({address, 256}, secret));
}

TEST(SecretBytesTest, MoveAssignmentWipesOldContents) {
  const auto secret = RandomBytes(128);
  SecretBytes s(secret);
  const uint8_t* address = s.Reveal(InsecureSecretAccess::Get()).data();
  s = SecretBytes(RandomBytes(8));
  EXPECT_FALSE(ContainsWindow({address, 128}, secret));
}

TEST(SecretBytesTest, LargeSecretsSpillToDedicatedLockedPages) {
  // Larger than the whole secure heap: must still work and start zeroed.
  SecretBytes big(size_t{2} << 20);
  auto view = big.MutableReveal(InsecureSecretAccess::Get());
  EXPECT_EQ(CRYPTO_secure_allocated(view.data()), 0);
  EXPECT_TRUE(std::all_of(view.begin(), view.end(), [](uint8_t b) { return b == 0; }));
  view[view.size() - 1] = 7;
  SecretBytes copy = big.Clone();
  EXPECT_EQ(copy.Reveal(InsecureSecretAccess::Get())[view.size() - 1], 7);
}

TEST(SecureAllocatorTest, StringIsWipedWhenFreed) {
  const auto secret = RandomBytes(64);
  const char* address = nullptr;
  {
    SecureString text(reinterpret_cast<const char*>(secret.data()), secret.size());
    address = text.data();
    ASSERT_EQ(CRYPTO_secure_allocated(address), 1);
  }
  EXPECT_FALSE(ContainsWindow({reinterpret_cast<const uint8_t*>(address), 64}, secret));
}

}  // namespace
}  // namespace keywarden
