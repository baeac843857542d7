#include "keywarden/crypto/x509.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <climits>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "src/crypto/asymmetric_util.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto {
namespace {

using internal::Deleter;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;
using BioPtr = std::unique_ptr<BIO, Deleter<BIO, BIO_free_all>>;
using StorePtr = std::unique_ptr<X509_STORE, Deleter<X509_STORE, X509_STORE_free>>;
using StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, Deleter<X509_STORE_CTX, X509_STORE_CTX_free>>;

void FreeX509Stack(STACK_OF(X509) * stack) { sk_X509_pop_free(stack, X509_free); }
using X509StackPtr = std::unique_ptr<STACK_OF(X509), Deleter<STACK_OF(X509), FreeX509Stack>>;

// ParseDer parses exactly one DER certificate; trailing bytes are refused, so that what was
// verified is all that was given.
absl::StatusOr<X509Ptr> ParseDer(std::span<const uint8_t> der, std::string_view what) {
  if (der.empty() || der.size() > kMaxCertificateSize) {
    return InvalidArgumentError("{} of {} bytes is not a certificate (at most {} bytes)", what,
                                der.size(), kMaxCertificateSize);
  }
  const unsigned char* p = der.data();
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) {
    ERR_clear_error();
    return InvalidArgumentError("{} is not a DER X.509 certificate", what);
  }
  if (p != der.data() + der.size()) {
    return InvalidArgumentError("{} has {} bytes after the certificate", what,
                                der.size() - static_cast<size_t>(p - der.data()));
  }
  return cert;
}

std::string NameText(const X509_NAME* name) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) {
    ERR_clear_error();
    return "";
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return size > 0 ? std::string(data, static_cast<size_t>(size)) : std::string();
}

// ParseBundle reads every PEM certificate of `trusted_pem` into a new store.
absl::StatusOr<std::pair<StorePtr, size_t>> ParseBundle(std::string_view trusted_pem) {
  if (trusted_pem.empty() || trusted_pem.size() > kMaxTrustBundleSize) {
    return InvalidArgumentError("trust bundle of {} bytes (want 1 to {})", trusted_pem.size(),
                                kMaxTrustBundleSize);
  }
  StorePtr store(X509_STORE_new());
  if (!store) return internal::OpenSslError("X509_STORE_new");
  BioPtr bio(BIO_new_mem_buf(trusted_pem.data(), static_cast<int>(trusted_pem.size())));
  if (!bio) return internal::OpenSslError("BIO_new_mem_buf");
  size_t anchors = 0;
  for (;;) {
    X509Ptr cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
    if (!cert) break;
    if (X509_STORE_add_cert(store.get(), cert.get()) != 1) {
      return internal::OpenSslError("X509_STORE_add_cert");
    }
    ++anchors;
  }
  // The loop ends at the first thing that is not a PEM certificate. Running out of input
  // (PEM_R_NO_START_LINE) is the normal end; anything else is a damaged bundle.
  const unsigned long last_error = ERR_peek_last_error();
  ERR_clear_error();
  if (ERR_GET_LIB(last_error) != ERR_LIB_PEM || ERR_GET_REASON(last_error) != PEM_R_NO_START_LINE) {
    return InvalidArgumentError("trust bundle is not a sequence of PEM certificates");
  }
  if (anchors == 0) return InvalidArgumentError("trust bundle holds no PEM certificate");
  return std::make_pair(std::move(store), anchors);
}

// VerifyAgainst validates `leaf_der` against `store` (read-only here: X509_STORE_CTX_init takes
// its own reference, and OpenSSL locks the store's lookups, so concurrent calls are safe).
absl::StatusOr<VerifiedCertificate> VerifyAgainst(
    X509_STORE* store, X509Ptr leaf,
    std::span<const std::vector<uint8_t>> untrusted_intermediates_der) {
  X509StackPtr untrusted(sk_X509_new_null());
  if (!untrusted) return internal::OpenSslError("sk_X509_new_null");
  for (const std::vector<uint8_t>& der : untrusted_intermediates_der) {
    ASSIGN_OR_RETURN(X509Ptr cert, ParseDer(der, "intermediate certificate"));
    if (sk_X509_push(untrusted.get(), cert.get()) <= 0) return internal::OpenSslError("sk_push");
    cert.release();  // owned by the stack
  }

  StoreCtxPtr ctx(X509_STORE_CTX_new());
  if (!ctx || X509_STORE_CTX_init(ctx.get(), store, leaf.get(), untrusted.get()) != 1) {
    return internal::OpenSslError("X509_STORE_CTX_init");
  }
  const int verified = X509_verify_cert(ctx.get());
  ERR_clear_error();
  if (verified != 1) {
    const int error = X509_STORE_CTX_get_error(ctx.get());
    return PermissionDeniedError("certificate chain does not verify: {} (depth {})",
                                 X509_verify_cert_error_string(error),
                                 X509_STORE_CTX_get_error_depth(ctx.get()));
  }

  VerifiedCertificate out;
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx.get());
  out.chain_length = chain != nullptr ? static_cast<size_t>(sk_X509_num(chain)) : 0;
  out.subject = NameText(X509_get_subject_name(leaf.get()));
  out.issuer = NameText(X509_get_issuer_name(leaf.get()));
  unsigned char* spki = nullptr;
  const int spki_size = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(leaf.get()), &spki);
  if (spki_size <= 0) return internal::OpenSslError("i2d_X509_PUBKEY");
  out.spki_der.assign(spki, spki + spki_size);
  OPENSSL_free(spki);
  const EVP_PKEY* key = X509_get0_pubkey(leaf.get());
  if (key == nullptr) return internal::OpenSslError("X509_get0_pubkey");
  if (EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA) {
    ASSIGN_OR_RETURN(out.rsa_public_key, internal::PkeyToRsaPublicKey(key));
  } else if (auto ec = internal::PkeyToEcP256PublicKey(key); ec.ok()) {
    out.ec_p256_public_key = *ec;
  }
  return out;
}

}  // namespace

absl::StatusOr<VerifiedCertificate> VerifyCertificateChain(
    std::span<const uint8_t> leaf_der, std::string_view trusted_pem,
    std::span<const std::vector<uint8_t>> untrusted_intermediates_der) {
  // The leaf is checked first, as before CaStore existed, so that a malformed leaf is reported
  // as such whatever the bundle.
  ASSIGN_OR_RETURN(X509Ptr leaf, ParseDer(leaf_der, "leaf certificate"));
  ASSIGN_OR_RETURN(auto parsed, ParseBundle(trusted_pem));
  return VerifyAgainst(parsed.first.get(), std::move(leaf), untrusted_intermediates_der);
}

// CaStore::State: the store, and the decoded form of leaf certificates seen recently.
//
// Decoding is not verifying: `parsed` maps a certificate's exact DER bytes to the X509 that
// d2i_X509 made of them, so that a node that joins again does not pay for OpenSSL 3.0's
// public-key decoding (OSSL_DECODER, ~0.1 ms per certificate) each time. Every Verify still runs
// the whole path validation on it (signatures, validity at the current time, extensions). An
// X509 is shared read-only between threads here, as OpenSSL shares its trust anchors; its
// extension cache is filled before it is shared. Bounded: when kMaxParsed entries are held
// (a few MiB), the map is emptied.
struct CaStore::State {
  static constexpr size_t kMaxParsed = 1024;

  StorePtr store;
  std::mutex mu;
  std::unordered_map<std::string, X509Ptr> parsed;  // guarded by mu

  absl::StatusOr<X509Ptr> Leaf(std::span<const uint8_t> der) {
    std::string key(der.begin(), der.end());
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = parsed.find(key);
      if (it != parsed.end() && X509_up_ref(it->second.get()) == 1) {
        return X509Ptr(it->second.get());
      }
    }
    ASSIGN_OR_RETURN(X509Ptr leaf, ParseDer(der, "leaf certificate"));
    // Fill the certificate's extension cache while this thread alone holds it; shared
    // verifications then only read it. (The result is not used: Verify checks everything.)
    (void)X509_check_purpose(leaf.get(), -1, 0);
    ERR_clear_error();
    if (X509_up_ref(leaf.get()) != 1) return leaf;
    X509Ptr cached(leaf.get());
    std::lock_guard<std::mutex> lock(mu);
    if (parsed.size() >= kMaxParsed) parsed.clear();
    parsed.emplace(std::move(key), std::move(cached));
    return leaf;
  }
};

CaStore::CaStore(std::unique_ptr<State> state, size_t anchor_count)
    : state_(std::move(state)), anchor_count_(anchor_count) {}

CaStore::~CaStore() = default;

absl::StatusOr<std::shared_ptr<const CaStore>> CaStore::FromPem(std::string_view trusted_pem) {
  ASSIGN_OR_RETURN(auto parsed, ParseBundle(trusted_pem));
  auto state = std::make_unique<State>();
  state->store = std::move(parsed.first);
  return std::shared_ptr<const CaStore>(new CaStore(std::move(state), parsed.second));
}

absl::StatusOr<VerifiedCertificate> CaStore::Verify(
    std::span<const uint8_t> leaf_der,
    std::span<const std::vector<uint8_t>> untrusted_intermediates_der) const {
  ASSIGN_OR_RETURN(X509Ptr leaf, state_->Leaf(leaf_der));
  return VerifyAgainst(state_->store.get(), std::move(leaf), untrusted_intermediates_der);
}

}  // namespace keywarden::crypto
