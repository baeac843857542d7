// Internal helpers for the OpenSSL-backed primitives: owning pointers, error text, and a pool
// of pre-keyed contexts. Not part of the public API.
#pragma once

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "keywarden/status.h"

namespace keywarden::crypto::internal {

template <typename T, void (*F)(T*)>
struct Deleter {
  void operator()(T* p) const { F(p); }
};
using CipherCtxPtr = std::unique_ptr<EVP_CIPHER_CTX, Deleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>>;
using MacCtxPtr = std::unique_ptr<EVP_MAC_CTX, Deleter<EVP_MAC_CTX, EVP_MAC_CTX_free>>;
using KdfCtxPtr = std::unique_ptr<EVP_KDF_CTX, Deleter<EVP_KDF_CTX, EVP_KDF_CTX_free>>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, Deleter<EVP_PKEY, EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, Deleter<EVP_PKEY_CTX, EVP_PKEY_CTX_free>>;

// OpenSslError returns an INTERNAL status naming `what` and the first queued OpenSSL reason,
// and clears the OpenSSL error queue. OpenSSL's reasons never contain key bytes.
inline absl::Status OpenSslError(const char* what) {
  unsigned long code = ERR_get_error();
  char buf[256] = "no OpenSSL reason";
  if (code != 0) ERR_error_string_n(code, buf, sizeof(buf));
  ERR_clear_error();
  return InternalError("{}: {}", what, buf);
}

// ContextPool hands out copies of one pre-keyed OpenSSL context, so that hot paths pay neither
// for key setup nor for algorithm fetches, and concurrent callers never share a context.
// `Dup` copies the template; `Free` destroys (OpenSSL wipes key schedules on free).
template <typename Ctx, Ctx* (*Dup)(const Ctx*), void (*Free)(Ctx*)>
class ContextPool {
 public:
  // ContextPool takes ownership of `prototype`, the keyed template.
  explicit ContextPool(Ctx* prototype) : prototype_(prototype) {}
  ~ContextPool() {
    for (Ctx* c : free_) Free(c);
    Free(prototype_);
  }
  ContextPool(const ContextPool&) = delete;
  ContextPool& operator=(const ContextPool&) = delete;

  struct Returner {
    ContextPool* pool;
    void operator()(Ctx* c) const { pool->Release(c); }
  };
  using Lease = std::unique_ptr<Ctx, Returner>;

  // Acquire returns a context for exclusive use, or an empty lease if OpenSSL cannot copy the
  // template (out of memory).
  Lease Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!free_.empty()) {
        Ctx* c = free_.back();
        free_.pop_back();
        return Lease(c, Returner{this});
      }
    }
    return Lease(Dup(prototype_), Returner{this});
  }

 private:
  // At most this many idle contexts are kept; more only exist under heavier concurrency.
  static constexpr size_t kMaxIdle = 64;

  void Release(Ctx* c) {
    if (c == nullptr) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (free_.size() < kMaxIdle) {
        free_.push_back(c);
        return;
      }
    }
    Free(c);
  }

  Ctx* const prototype_;
  std::mutex mu_;
  std::vector<Ctx*> free_;  // guarded by mu_
};

inline EVP_CIPHER_CTX* DupCipherCtx(const EVP_CIPHER_CTX* in) {
  EVP_CIPHER_CTX* out = EVP_CIPHER_CTX_new();
  if (out == nullptr) return nullptr;
  if (EVP_CIPHER_CTX_copy(out, in) != 1) {
    EVP_CIPHER_CTX_free(out);
    return nullptr;
  }
  return out;
}

using MacPool = ContextPool<EVP_MAC_CTX, EVP_MAC_CTX_dup, EVP_MAC_CTX_free>;
using CipherPool = ContextPool<EVP_CIPHER_CTX, DupCipherCtx, EVP_CIPHER_CTX_free>;

// HmacSha256Algorithm returns the process-wide HMAC EVP_MAC, fetched once.
EVP_MAC* HmacSha256Algorithm();
// NewHmacSha256Ctx returns an HMAC-SHA256 context keyed with `key`, or null.
EVP_MAC_CTX* NewHmacSha256Ctx(const uint8_t* key, size_t key_size);

// Fetched cipher algorithms, each fetched once per process.
const EVP_CIPHER* FetchedCipher(const char* name);

}  // namespace keywarden::crypto::internal
