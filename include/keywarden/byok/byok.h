// User-managed keys (BYOK / HYOK), DESIGN.md §3: a key-encryption key held by a KMS or HSM
// (KMIP, PKCS#11, AWS KMS, ...) wraps random DEKs, which a DEK store (SQLite, etcd, S3, Azure
// Blob) keeps under their key id. Wrap and unwrap happen at the provider: with HYOK providers the
// KEK never enters Keywarden's memory. docs/byok.md, docs/formats/wrapped-dek.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::byok {

// A user-managed DEK is random (the CSPRNG), made with the length the first GetDataKey for its
// id asks for (1 to kMaxDekSize bytes); later requests for that id must ask the same length.
inline constexpr size_t kMaxDekSize = 256;
// kMaxWrappedSize bounds a provider's ciphertext (an AWS KMS ciphertext blob of a 32-byte
// plaintext is ~200 bytes; RSA-4096 wrapping 512).
inline constexpr size_t kMaxWrappedSize = 4096;

// KekProvider wraps and unwraps at a KMS or HSM. Implementations are thread-safe. Errors:
// UNAVAILABLE when the provider cannot be reached (network, TLS, timeout, HSM session);
// PERMISSION_DENIED when it refuses (authentication, authorization, a ciphertext it does not
// accept: tampered or made under another key); INVALID_ARGUMENT for bad input.
class KekProvider {
 public:
  virtual ~KekProvider() = default;
  // Wrap encrypts `plaintext` (1 to 512 bytes) under the KEK.
  virtual absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) = 0;
  // Unwrap decrypts what Wrap returned.
  virtual absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) = 0;
  // kek_id is a stable public name of the KEK, recorded in every wrapped DEK
  // (e.g. "pkcs11:<token>/<label>", "kmip:<unique identifier>", "aws-kms:<key id or ARN>").
  virtual std::string kek_id() const = 0;
  // Describe names the provider for logs and errors, without credentials.
  virtual std::string Describe() const = 0;
};

// WrappedDek is one stored DEK (docs/formats/wrapped-dek.md; u16 = big-endian):
//   "KWD1" || u16 len(kek_id) || kek_id || u16 len(wrapped) || wrapped
// where the provider wrapped the binding plaintext
//   B = "keywarden-dek-v1" || 0x00 || SHA-256(dek id) || DEK (1 to kMaxDekSize bytes)
//   plaintext = B || SHA-256(B)
// so a blob copied to another id, or made under another KEK, does not unwrap. The trailing
// SHA-256 makes a modified ciphertext fail even at a provider whose encryption is not
// authenticated (a CBC-only KMIP server): changing any DEK bit means changing the digest, which
// the attacker cannot compute without the DEK.
struct WrappedDek {
  std::string kek_id;
  std::vector<uint8_t> wrapped;
};
std::vector<uint8_t> EncodeWrappedDek(const WrappedDek& dek);
// kMaxKekIdSize bounds the KEK id in the stored form (printable ASCII, 1 to 512 bytes).
inline constexpr size_t kMaxKekIdSize = 512;
// DecodeWrappedDek: DATA_LOSS for anything malformed (never quotes the bytes): wrong magic, a
// length running past the end, an empty or non-printable KEK id, an empty or oversized
// ciphertext, trailing bytes.
absl::StatusOr<WrappedDek> DecodeWrappedDek(std::span<const uint8_t> bytes);

// WrapDek makes the stored form of `dek` (1 to kMaxDekSize bytes) for `id` with `provider`.
absl::StatusOr<std::vector<uint8_t>> WrapDek(KekProvider& provider, std::string_view id,
                                             const SecretBytes& dek);
// UnwrapDek checks the blob's KEK id against the provider's (FAILED_PRECONDITION naming both
// when they differ), unwraps at the provider, and checks the binding: one generic
// PERMISSION_DENIED for a plaintext that is not an intact binding (tampered, or not made by
// Keywarden), and PERMISSION_DENIED "... belongs to another key id" for an intact binding of
// another id (a blob copied or swapped between ids). DATA_LOSS for a malformed blob; the
// provider's UNAVAILABLE / PERMISSION_DENIED pass through.
absl::StatusOr<SecretBytes> UnwrapDek(KekProvider& provider, std::string_view id,
                                      std::span<const uint8_t> stored);

// StoredDek is what a DEK store holds for one id, with the version its conditional writes take
// (an SQLite row version, an etcd mod_revision, an S3/Azure ETag).
struct StoredDek {
  std::vector<uint8_t> blob;
  std::string version;
};

// DekStore keeps wrapped DEKs under "key-" + id. Implementations are thread-safe and safe for
// any number of replicas sharing one backend: the conditional writes decide races.
// Errors: UNAVAILABLE when unreachable; PERMISSION_DENIED for refused credentials.
class DekStore {
 public:
  virtual ~DekStore() = default;
  // Get returns the entry for `id`, or nullopt when there is none.
  virtual absl::StatusOr<std::optional<StoredDek>> Get(std::string_view id) = 0;
  // CreateIfAbsent stores `blob` for `id` only if the store holds no entry for it (an etcd
  // transaction on create_revision == 0, S3/Azure If-None-Match: *, an SQLite INSERT in a
  // transaction), and returns the entry the store holds afterwards: ours, or the one another
  // writer stored first.
  virtual absl::StatusOr<StoredDek> CreateIfAbsent(std::string_view id,
                                                   std::span<const uint8_t> blob) = 0;
  // ReplaceIf replaces the entry only if its version is still `version` (KEK rotation);
  // ABORTED when it changed meanwhile, NOT_FOUND when it is gone.
  virtual absl::Status ReplaceIf(std::string_view id, std::string_view version,
                                 std::span<const uint8_t> blob) = 0;
  // List calls `visit` with every stored id, in lexicographic order; a non-OK status from
  // `visit` stops the listing and is returned.
  virtual absl::Status List(const std::function<absl::Status(std::string_view id)>& visit) = 0;
  // Describe names the store for logs and errors, without credentials.
  virtual std::string Describe() const = 0;
};

// RemoteOptions tune how remote parts (and the SQLite file's lock) are reached.
struct RemoteOptions {
  std::chrono::milliseconds timeout{5000};
};

// UriParams are a kms:// or storage:// URI's query parameters, percent-decoded ("%2B" is '+';
// a literal '+' stays '+', it is not a space). Names are case-sensitive.
using UriParams = std::map<std::string, std::string>;

// ByokUri is a parsed "SCHEME://NAME?k=v&..." ("kms" or "storage"; NAME picks the provider or
// store).
struct ByokUri {
  std::string scheme;
  std::string name;
  UriParams params;
};
// ParseByokUri splits a URI. INVALID_ARGUMENT (never quoting a value) for a missing "://", a
// path after NAME, an empty or repeated parameter name, or a bad %-escape.
absl::StatusOr<ByokUri> ParseByokUri(std::string_view uri);

// CheckUriParams checks that `params` hold every name in `required` (non-empty) and nothing
// outside `required` and `optional`; INVALID_ARGUMENT naming the parameter (never its value),
// with `what` (e.g. "kms://pkcs11") in front.
absl::Status CheckUriParams(const UriParams& params,
                            std::initializer_list<std::string_view> required,
                            std::initializer_list<std::string_view> optional,
                            std::string_view what);

// Factories make a provider or store from a URI's parameters. Each provider module exposes a
// Register...() function that calls RegisterKekProvider / RegisterDekStore, and
// RegisterAllProviders (src/byok/register.cc) calls them all.
using KekProviderFactory = std::function<absl::StatusOr<std::unique_ptr<KekProvider>>(
    const UriParams& params, const RemoteOptions& options)>;
using DekStoreFactory = std::function<absl::StatusOr<std::unique_ptr<DekStore>>(
    const UriParams& params, const RemoteOptions& options)>;
// RegisterKekProvider makes `kms://NAME?...` open with `factory`; a later registration of the
// same name replaces the earlier one. Thread-safe.
void RegisterKekProvider(std::string name, KekProviderFactory factory);
// RegisterDekStore makes `storage://NAME?...` open with `factory`. Thread-safe.
void RegisterDekStore(std::string name, DekStoreFactory factory);
// RegisterAllProviders registers every KEK provider and DEK store this build has. Idempotent and
// thread-safe; the CLI calls it once at start.
void RegisterAllProviders();

// OpenKekProvider opens the provider a `kms://` URI names (docs/byok.md lists the forms):
//   kms://pkcs11?module=PATH&token=LABEL&pin=PIN&key=LABEL
//   kms://kmip?endpoint=HOST:PORT&keyID=UID&clientCert=F&clientKey=F&serverCA=F
//   kms://aws?keyID=ID&region=R&accessKeyID=A&accessKey=S[&endpoint=URL]
//   kms://azure?tenantID=T&clientID=C&clientSecret=S&vaultName=V&vaultType=D&keyName=K
//   kms://gcp?projectID=P&location=L&keyRing=R&keyName=K&(credentialsPath=F|credentials=JSON)
// INVALID_ARGUMENT for a malformed URI (the message never quotes secrets such as pin= or
// accessKey=); UNIMPLEMENTED for a provider that is not registered (naming those that are).
absl::StatusOr<std::unique_ptr<KekProvider>> OpenKekProvider(std::string_view uri,
                                                             const RemoteOptions& options = {});

// OpenDekStore opens the store a `storage://` URI names:
//   storage://sqlite?path=FILE
//   storage://etcd?endpoints=HOST:PORT[,HOST:PORT]&prefix=/keywarden/deks/
//   storage://aws?bucket=B&region=R&accessKeyID=A&accessKey=S[&endpoint=URL]
//   storage://azure?account=A&container=C&key=K[&endpoint=URL]
absl::StatusOr<std::unique_ptr<DekStore>> OpenDekStore(std::string_view uri,
                                                       const RemoteOptions& options = {});

// NewSqliteDekStore opens (creating it with mode 0600 if needed) the SQLite DEK store at `path`
// (storage://sqlite?path=FILE): table keywarden_deks(id, blob, version) in WAL mode with
// synchronous=FULL; any number of processes may share the file. options.timeout bounds the wait
// for another process's write lock (then UNAVAILABLE).
absl::StatusOr<std::unique_ptr<DekStore>> NewSqliteDekStore(const std::string& path,
                                                            const RemoteOptions& options = {});
// RegisterSqlite registers storage://sqlite.
void RegisterSqlite();

// RedactUri returns `uri` with the values of secret parameters (pin, accessKey, key,
// clientSecret, secretKey, password, sessionToken, credentials; names compared without case)
// replaced by "***", for logs and errors.
std::string RedactUri(std::string_view uri);
// IsSecretUriParam says whether RedactUri hides the value of parameter `name` (any case).
bool IsSecretUriParam(std::string_view name);

}  // namespace keywarden::byok
