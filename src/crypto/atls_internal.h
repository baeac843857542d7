// Internals of aTLS shared by atls.cc (TLS, certificates), atls_rpc.cc (sockets, frames), the
// tests and the fuzz target. Not part of the public API. Formats: docs/formats/atls.md.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/crypto/atls.h"
#include "src/crypto/openssl_util.h"

namespace keywarden::crypto::internal {

using SslCtxPtr = std::unique_ptr<SSL_CTX, Deleter<SSL_CTX, SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, Deleter<SSL, SSL_free>>;
using X509Ptr = std::unique_ptr<X509, Deleter<X509, X509_free>>;

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

// UniqueFd owns a file descriptor and closes it on destruction. Move-only.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.Release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    const int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset();

 private:
  int fd_ = -1;
};

// WaitFd polls `fd` for `events` (POLLIN/POLLOUT) until `deadline`: OK when ready (or when the
// socket has an error or hang-up for the next read/write to report), DEADLINE_EXCEEDED when the
// deadline passes first.
absl::Status WaitFd(int fd, short events, Deadline deadline, std::string_view what);

// LingerBeforeClose prepares a server-side socket for close after a refusal without losing the
// last thing sent (an alert or an error frame): it stops writing, then reads and discards what
// the peer still sends until the peer closes, the socket is shut down, or `linger` passes, so
// that the close does not become a TCP reset that destroys unread data on the peer's side.
void LingerBeforeClose(int fd, std::chrono::milliseconds linger);

// GenerateAtlsKey returns a fresh ECDSA P-256 key pair.
absl::StatusOr<PkeyPtr> GenerateAtlsKey();

// SpkiSha256 returns SHA-256 of the DER SubjectPublicKeyInfo of `cert`.
absl::StatusOr<std::array<uint8_t, kAtlsKeyHashSize>> SpkiSha256(X509* cert);
// SpkiSha256(key) returns SHA-256 of `key`'s DER SubjectPublicKeyInfo, as a certificate for the
// key encodes it (both go through OpenSSL's X509_PUBKEY encoder).
absl::StatusOr<std::array<uint8_t, kAtlsKeyHashSize>> SpkiSha256(EVP_PKEY* key);

// MakeAtlsCertificate returns a self-signed certificate for `key` in the aTLS profile
// (docs/formats/atls.md), carrying `document` in the kAtlsDocumentOid extension, or no such
// extension when `document` is null. INTERNAL if OpenSSL fails, UNAVAILABLE if the CSPRNG does.
absl::StatusOr<X509Ptr> MakeAtlsCertificate(EVP_PKEY* key, const std::string* document);

// AtlsCertificateContents is what ParseAtlsCertificate takes from a peer's certificate.
struct AtlsCertificateContents {
  std::optional<std::string> document;  // nullopt: the certificate has no document extension
  std::array<uint8_t, kAtlsKeyHashSize> key_hash{};
};

// ParseAtlsCertificate applies the checks of the aTLS certificate profile that verification
// relies on: an EC P-256 public key; the document extension at most once, non-critical, its
// value one DER OCTET STRING with nothing after it, at most kAtlsMaxDocumentSize bytes.
// PERMISSION_DENIED naming the rule that is broken.
absl::StatusOr<AtlsCertificateContents> ParseAtlsCertificate(X509* cert);
// ParseAtlsCertificateDer parses a DER certificate (as received in a TLS Certificate message)
// and applies ParseAtlsCertificate; PERMISSION_DENIED for DER that is not a certificate.
absl::StatusOr<AtlsCertificateContents> ParseAtlsCertificateDer(std::span<const uint8_t> der);

struct HandshakeState;

// AtlsStream is an established aTLS connection over a non-blocking socket it does not own.
// Not thread-safe.
class AtlsStream {
 public:
  AtlsStream(SslPtr ssl, std::unique_ptr<HandshakeState> state, int fd);
  ~AtlsStream();
  AtlsStream(const AtlsStream&) = delete;
  AtlsStream& operator=(const AtlsStream&) = delete;

  const PeerInfo& peer() const;
  int fd() const { return fd_; }

  // Write sends all of `data` before `deadline`.
  absl::Status Write(std::span<const uint8_t> data, Deadline deadline);
  // Read reads at least one byte into `out` before `deadline`; 0 means the peer closed the
  // connection (close_notify or end of stream). A fatal alert from the peer that refuses this
  // side's attestation gives PERMISSION_DENIED.
  absl::StatusOr<size_t> Read(std::span<uint8_t> out, Deadline deadline);
  // HasPendingData reports whether decrypted or buffered record bytes wait to be read, which a
  // poll on the socket would not show.
  bool HasPendingData() const;
  // SendCloseNotify sends a TLS close_notify if the socket takes it at once; best effort.
  void SendCloseNotify();

 private:
  std::unique_ptr<HandshakeState> state_;  // outlives ssl_, whose ex_data points to it
  SslPtr ssl_;
  int fd_;
};

// AtlsContext is one side's TLS 1.3 configuration (an SSL_CTX with the aTLS callbacks).
// Thread-safe: handshakes on different sockets may run concurrently.
class AtlsContext {
 public:
  // NewServer / NewClient build the context; null issuer = no attestation from this side,
  // null validator = the peer is not verified.
  static absl::StatusOr<std::unique_ptr<AtlsContext>> NewServer(
      std::shared_ptr<AttestationIssuer> issuer, std::shared_ptr<AttestationValidator> validator);
  static absl::StatusOr<std::unique_ptr<AtlsContext>> NewClient(
      std::shared_ptr<AttestationIssuer> issuer, std::shared_ptr<AttestationValidator> validator);

  // Handshake runs the TLS handshake on the connected non-blocking socket `fd` (not taken) until
  // `deadline`. Errors: PERMISSION_DENIED (attestation refused by either side), the issuer's
  // status, DEADLINE_EXCEEDED, UNAVAILABLE (anything else).
  absl::StatusOr<std::unique_ptr<AtlsStream>> Handshake(int fd, std::string peer_address,
                                                        Deadline deadline) const;

  bool server() const { return server_; }
  AttestationIssuer* issuer() const { return issuer_.get(); }
  AttestationValidator* validator() const { return validator_.get(); }

  // UnattestedCredential is the key and certificate of a server without an issuer (join mode):
  // its certificate carries no document, so nothing binds it to one connection, and one key and
  // certificate serve every handshake for kUnattestedCredentialLifetime, then a fresh pair is
  // made (the certificate itself is valid for longer). Handshakes still use fresh ECDHE keys and
  // sign a fresh CertificateVerify. Sides that attest never use it: their document binds the
  // key's hash, so they make a key per connection (InstallCertificate). Thread-safe.
  struct Credential {
    PkeyPtr key;
    X509Ptr cert;
    Clock::time_point made;
  };
  static constexpr std::chrono::minutes kUnattestedCredentialLifetime{5};
  absl::StatusOr<std::shared_ptr<const Credential>> UnattestedCredential() const;

 private:
  AtlsContext(bool server, std::shared_ptr<AttestationIssuer> issuer,
              std::shared_ptr<AttestationValidator> validator, SslCtxPtr ctx);
  static absl::StatusOr<std::unique_ptr<AtlsContext>> New(
      bool server, std::shared_ptr<AttestationIssuer> issuer,
      std::shared_ptr<AttestationValidator> validator);

  const bool server_;
  const std::shared_ptr<AttestationIssuer> issuer_;
  const std::shared_ptr<AttestationValidator> validator_;
  const SslCtxPtr ctx_;
  mutable std::mutex credential_mu_;
  mutable std::shared_ptr<const Credential> credential_;  // guarded by credential_mu_
};

// --- RPC frames (docs/formats/atls.md) ----------------------------------------------------

inline constexpr size_t kFrameHeaderSize = 4;
inline constexpr size_t kMaxMethodSize = 255;
inline constexpr size_t kMaxErrorMessageSize = 4096;
inline constexpr size_t kMinFrameLimit = 64;
inline constexpr size_t kMaxFrameLimit = 64 << 20;

// RpcRequest is a decoded request payload; views into the payload.
struct RpcRequest {
  std::string_view method;
  std::string_view body;
};

// EncodeRpcRequest returns the request payload; INVALID_ARGUMENT for an empty method or one
// longer than kMaxMethodSize.
absl::StatusOr<std::string> EncodeRpcRequest(std::string_view method, std::string_view body);
// DecodeRpcRequest parses a request payload; INVALID_ARGUMENT if it is malformed.
absl::StatusOr<RpcRequest> DecodeRpcRequest(std::string_view payload);

// RpcResponse is a decoded response payload: the handler's status and, when OK, its bytes.
struct RpcResponse {
  absl::Status status;
  std::string body;
};

// EncodeRpcResponse returns the response payload for a handler's result. A result that does not
// fit in `max_payload` bytes becomes RESOURCE_EXHAUSTED; error messages are cut to
// kMaxErrorMessageSize bytes.
std::string EncodeRpcResponse(const absl::StatusOr<std::string>& result, size_t max_payload);
// DecodeRpcResponse parses a response payload; DATA_LOSS if it is malformed.
absl::StatusOr<RpcResponse> DecodeRpcResponse(std::string_view payload);

// FrameHeader returns the 4-byte big-endian length prefix of a payload of `size` bytes.
std::array<uint8_t, kFrameHeaderSize> FrameHeader(uint32_t size);

}  // namespace keywarden::crypto::internal
