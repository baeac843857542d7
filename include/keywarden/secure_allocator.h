// SecureAllocator: a standard allocator whose memory is locked, excluded from core dumps and
// wiped on release, for containers that must hold secret text (e.g. a JSON parser's strings
// while it reads mastersecret.json). It draws from the same heap as SecretBytes.
#pragma once

#include <cstddef>
#include <new>
#include <string>

namespace keywarden {

namespace internal {
// SecureAllocate returns `size` zeroed bytes of locked memory; aborts when none can be had.
void* SecureAllocate(size_t size);
// SecureFree wipes and releases memory from SecureAllocate; `size` is the requested size.
void SecureFree(void* p, size_t size) noexcept;
}  // namespace internal

template <typename T>
struct SecureAllocator {
  using value_type = T;
  SecureAllocator() noexcept = default;
  template <typename U>
  SecureAllocator(const SecureAllocator<U>&) noexcept {}  // NOLINT(runtime/explicit)
  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    return static_cast<T*>(internal::SecureAllocate(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) noexcept { internal::SecureFree(p, n * sizeof(T)); }
  template <typename U>
  bool operator==(const SecureAllocator<U>&) const noexcept {
    return true;
  }
};

// SecureString is a std::string in locked, wiped memory. Caveat: strings of up to 15
// characters live inside the object itself (small-string optimisation) and are not wiped.
using SecureString = std::basic_string<char, std::char_traits<char>, SecureAllocator<char>>;

}  // namespace keywarden
