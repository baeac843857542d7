// SecretBytes: the only container Keywarden uses for key material.
//
// Security: the bytes live in locked memory that is excluded from core dumps (OpenSSL's secure
// heap: mlock + MADV_DONTDUMP + guard pages; when that heap is full, dedicated pages that are
// mlocked and MADV_DONTDUMP'd themselves) and are wiped with OPENSSL_cleanse when the object is
// destroyed or assigned over. The type is move-only (copies are explicit through Clone()), has
// no operator<<, no fmt formatter and no conversion to std::string, and its bytes are readable
// only through an InsecureSecretAccess token, so `grep InsecureSecretAccess` lists every place a
// key leaves its container.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

namespace keywarden {

class SecretBytes;

// InsecureSecretAccess is the token that unlocks a SecretBytes' contents. Getting one is cheap;
// its purpose is to make every read of key bytes visible in the source.
class InsecureSecretAccess {
 public:
  static InsecureSecretAccess Get() { return InsecureSecretAccess(); }

 private:
  InsecureSecretAccess() = default;
};

class SecretBytes {
 public:
  // SecretBytes() holds zero bytes.
  SecretBytes() = default;
  // SecretBytes(size) holds `size` zero bytes in locked memory. Aborts if no memory can be had
  // at all (as operator new would); a key never falls back to ordinary, swappable memory.
  explicit SecretBytes(size_t size);
  // SecretBytes(bytes) copies `bytes` into locked memory. The caller wipes its own copy.
  explicit SecretBytes(std::span<const uint8_t> bytes);

  SecretBytes(SecretBytes&& other) noexcept;
  SecretBytes& operator=(SecretBytes&& other) noexcept;
  SecretBytes(const SecretBytes&) = delete;
  SecretBytes& operator=(const SecretBytes&) = delete;
  ~SecretBytes();

  // Clone returns an independent copy in its own locked memory.
  SecretBytes Clone() const;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // Reveal returns a view of the key bytes; valid until this object is moved, assigned or
  // destroyed.
  std::span<const uint8_t> Reveal(InsecureSecretAccess) const { return {data_, size_}; }
  // MutableReveal returns a writable view, for code that fills a new secret in place.
  std::span<uint8_t> MutableReveal(InsecureSecretAccess) { return {data_, size_}; }

 private:
  void Release() noexcept;

  uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// SecureWipe overwrites `bytes` with zeros in a way the compiler cannot elide
// (OPENSSL_cleanse). For buffers outside SecretBytes that briefly held key material, e.g. a
// protobuf string after serialization.
void SecureWipe(std::span<uint8_t> bytes);
// SecureWipe(text) wipes the string's whole buffer, spare capacity included, and empties it.
inline void SecureWipe(std::string& text) {
  text.resize(text.capacity());
  SecureWipe(std::span<uint8_t>(reinterpret_cast<uint8_t*>(text.data()), text.size()));
  text.clear();
}

namespace internal {
// SecureHeapStats reports how the secure heap backing SecretBytes is used; for tests and
// diagnostics. `locked` is false when mlock failed (e.g. RLIMIT_MEMLOCK too small).
struct SecureHeapStats {
  bool initialized;
  bool locked;
  size_t used_bytes;
};
SecureHeapStats GetSecureHeapStats();
}  // namespace internal

}  // namespace keywarden
