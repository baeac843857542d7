#include "keywarden/secret_bytes.h"

#include <openssl/crypto.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "keywarden/secure_allocator.h"

namespace keywarden {
namespace {

// The secure heap holds every small secret of a process (KEK, DEKs being handed out, master
// secret while in use). 1 MiB is 32,768 32-byte keys; larger demand spills into dedicated pages.
constexpr size_t kSecureHeapSize = 1 << 20;
constexpr size_t kSecureHeapMinAlloc = 32;

struct HeapState {
  bool initialized = false;
  bool locked = false;
};

HeapState& InitSecureHeap() {
  static HeapState state;
  static std::once_flag once;
  std::call_once(once, [] {
    // Returns 1 on success, 2 when the heap exists but mlock failed, 0 on failure.
    int rc = CRYPTO_secure_malloc_init(kSecureHeapSize, kSecureHeapMinAlloc);
    state.initialized = rc != 0;
    state.locked = rc == 1;
  });
  return state;
}

size_t PageRound(size_t size) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (size + page - 1) / page * page;
}

// AllocateDedicated maps fresh pages for one secret, locks them and keeps them out of core
// dumps. Used only when the secure heap is full or unavailable.
uint8_t* AllocateDedicated(size_t size) {
  const size_t length = PageRound(size);
  void* p = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) std::abort();  // out of memory, as operator new would
  (void)mlock(p, length);             // best effort: RLIMIT_MEMLOCK may forbid it
  (void)madvise(p, length, MADV_DONTDUMP);
  return static_cast<uint8_t*>(p);
}

void FreeDedicated(uint8_t* p, size_t size) {
  const size_t length = PageRound(size);
  OPENSSL_cleanse(p, length);
  (void)munlock(p, length);
  (void)munmap(p, length);
}

}  // namespace

void SecureWipe(std::span<uint8_t> bytes) {
  if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
}

namespace internal {

void* SecureAllocate(size_t size) {
  if (size == 0) size = 1;
  if (InitSecureHeap().initialized) {
    if (void* p = OPENSSL_secure_zalloc(size)) return p;
  }
  return AllocateDedicated(size);  // mmap'd pages are already zero
}

void SecureFree(void* p, size_t size) noexcept {
  if (p == nullptr) return;
  if (size == 0) size = 1;
  if (CRYPTO_secure_allocated(p)) {
    // Security: OPENSSL_secure_clear_free cleanses the whole allocation before returning it
    // to the secure heap.
    OPENSSL_secure_clear_free(p, size);
  } else {
    FreeDedicated(static_cast<uint8_t*>(p), size);
  }
}

SecureHeapStats GetSecureHeapStats() {
  const HeapState& state = InitSecureHeap();
  return SecureHeapStats{state.initialized, state.locked, CRYPTO_secure_used()};
}

}  // namespace internal

SecretBytes::SecretBytes(size_t size) : size_(size) {
  if (size != 0) data_ = static_cast<uint8_t*>(internal::SecureAllocate(size));
}

SecretBytes::SecretBytes(std::span<const uint8_t> bytes) : SecretBytes(bytes.size()) {
  if (!bytes.empty()) std::memcpy(data_, bytes.data(), bytes.size());
}

SecretBytes::SecretBytes(SecretBytes&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}

SecretBytes& SecretBytes::operator=(SecretBytes&& other) noexcept {
  if (this != &other) {
    Release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SecretBytes::~SecretBytes() { Release(); }

SecretBytes SecretBytes::Clone() const {
  return SecretBytes(std::span<const uint8_t>(data_, size_));
}

void SecretBytes::Release() noexcept {
  internal::SecureFree(data_, size_);
  data_ = nullptr;
  size_ = 0;
}

}  // namespace keywarden
