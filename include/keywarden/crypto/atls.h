// Attested TLS ("aTLS"), in Constellation's manner, over OpenSSL TLS 1.3.
//
// Every side that attests gets a fresh ECDSA P-256 key and a self-signed certificate per
// connection (a server that does not attest, join mode, reuses one key and document-less
// certificate for a few minutes: docs/formats/atls.md). The side that
// verifies sends a fresh 32-byte nonce inside the handshake (the client in its ClientHello, the
// server in its TLS 1.3 CertificateRequest); the side that attests asks its AttestationIssuer for
// a document binding (nonce, SHA-256 of the certificate's DER SubjectPublicKeyInfo) and carries
// it in a certificate extension. The verifier checks the document with its AttestationValidator
// from OpenSSL's certificate-verification hook, so a peer that fails attestation fails the
// handshake: no application data is ever sent to, or accepted from, an unverified peer.
//
// Modes (each side says what it does, not what the other does):
//   plain    server attests, client validates                     (issuer | validator)
//   mutual   both attest, both validate                           (both   | both)
//   join     server does not attest, client attests: the server
//            validates the client (e.g. a join service without a
//            TPM; the client accepts the unattested server)        (validator | issuer)
//
// On top sits a minimal RPC layer: AtlsServer and AtlsClient exchange length-prefixed frames
// (method, request) -> (status, response). Wire format, extension numbers, OID and what is
// checked where: docs/formats/atls.md.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden::crypto {

// kAtlsNonceSize is the size of the verifier's fresh nonce.
inline constexpr size_t kAtlsNonceSize = 32;
// kAtlsKeyHashSize is the size of SHA-256(DER SubjectPublicKeyInfo).
inline constexpr size_t kAtlsKeyHashSize = 32;
// kAtlsClientNonceExtension is the TLS extension (RFC 8446 §4.2, private-use range
// 0xFF02-0xFFFF) that carries the client's nonce in the ClientHello.
inline constexpr uint16_t kAtlsClientNonceExtension = 0xFF4B;
// kAtlsServerNonceExtension carries the server's nonce in the TLS 1.3 CertificateRequest
// (mutual and join modes).
inline constexpr uint16_t kAtlsServerNonceExtension = 0xFF4C;
// kAtlsDocumentOid is the X.509 extension that carries the attestation document: Keywarden's
// UUID arc 2.25.140540131599587921860284107557183596055 (ITU-T X.667; no registration needed),
// sub-arc 1 = "aTLS attestation document, version 1".
inline constexpr char kAtlsDocumentOid[] = "2.25.140540131599587921860284107557183596055.1";
// kAtlsMaxDocumentSize bounds an attestation document, issued or received.
inline constexpr size_t kAtlsMaxDocumentSize = 64 * 1024;
// kAtlsDefaultMaxFrameSize is the default bound on one RPC frame's payload.
inline constexpr size_t kAtlsDefaultMaxFrameSize = 1 << 20;

// AttestationIssuer produces this node's attestation documents (the TPM issuer in production).
// Implementations must be thread-safe: aTLS calls Issue concurrently from the handshakes of
// different connections.
class AttestationIssuer {
 public:
  virtual ~AttestationIssuer() = default;

  // Issue returns an opaque document of at most kAtlsMaxDocumentSize bytes that binds `nonce`
  // (the verifier's fresh kAtlsNonceSize bytes) and `tls_key_hash` (SHA-256 of the DER
  // SubjectPublicKeyInfo of this connection's certificate). An error aborts the handshake; the
  // status is reported to the local caller, never sent to the peer (the peer sees a TLS
  // internal_error alert).
  virtual absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                            std::span<const uint8_t> tls_key_hash) = 0;
};

// AttestationResult is what a validator learned about a peer whose document it accepted.
struct AttestationResult {
  // peer_identity names the peer in the validator's terms (for a TPM validator, e.g.
  // "ek-sha256:<hex>"). Opaque to aTLS; handed to RPC handlers in PeerInfo::identity.
  std::string peer_identity;
};

// AttestationValidator checks peers' attestation documents (the TPM validator in production).
// Implementations must be thread-safe: aTLS calls Validate concurrently from the handshakes of
// different connections.
class AttestationValidator {
 public:
  virtual ~AttestationValidator() = default;

  // Validate checks `document` and returns who the peer is. It MUST fail unless the document is
  // genuine and binds exactly `nonce` (the fresh nonce this side sent on this connection) and
  // `tls_key_hash` (SHA-256 of the DER SubjectPublicKeyInfo of the certificate the peer
  // presented on this connection): that is what makes a replayed document, or one lifted from
  // another connection, fail. Called inside the handshake before the peer has proven possession
  // of the certificate's key (the TLS 1.3 CertificateVerify follows), so the result must not be
  // acted upon from here; aTLS shows it to callers only once the handshake has completed. Any
  // error refuses the peer: the handshake fails (bad_certificate alert) and the local caller
  // sees PERMISSION_DENIED carrying this status's message.
  virtual absl::StatusOr<AttestationResult> Validate(std::string_view document,
                                                     std::span<const uint8_t> nonce,
                                                     std::span<const uint8_t> tls_key_hash) = 0;
};

// PeerInfo describes the peer of an established aTLS connection.
struct PeerInfo {
  // address is the peer's "ip:port" ("[ip6]:port").
  std::string address;
  // attested is true iff this side's validator accepted the peer's document on this connection.
  bool attested = false;
  // identity is AttestationResult::peer_identity when attested, else empty.
  std::string identity;
  // document is the accepted attestation document when attested, else empty; for handlers that
  // need more than the identity (e.g. the EK and AK for credential activation).
  std::string document;
  // tls_key_hash is SHA-256 of the DER SubjectPublicKeyInfo of the peer's certificate (all
  // zeros if the peer sent none).
  std::array<uint8_t, kAtlsKeyHashSize> tls_key_hash{};
};

// AtlsHandler serves one RPC. `peer` is valid for the duration of the call. The returned
// status (code and message) is sent to the client as is: messages must not carry secrets. Runs
// on the server's worker threads, concurrently for different connections.
using AtlsHandler = std::function<absl::StatusOr<std::string>(
    std::string_view method, std::string_view request, const PeerInfo& peer)>;

// AtlsServerOptions configures an AtlsServer.
struct AtlsServerOptions {
  // host and port to listen on; port 0 picks a free port (see AtlsServer::port()).
  std::string host = "127.0.0.1";
  uint16_t port = 0;
  // issuer attests this server; null = the server presents a certificate without a document.
  std::shared_ptr<AttestationIssuer> issuer;
  // client_validator, if set, requires every client to present an attested certificate
  // (mutual or join mode); null = clients are not asked for certificates. At least one of
  // issuer and client_validator must be set.
  std::shared_ptr<AttestationValidator> client_validator;
  // worker_threads is the size of the fixed pool that runs handshakes and handlers. An idle
  // established connection holds no thread: it waits in the poller until its next request
  // arrives. A handshake holds its worker until it completes or handshake_timeout passes.
  int worker_threads = 16;
  // max_connections bounds open connections (handshaking, busy and idle); further clients wait
  // in the listen backlog.
  size_t max_connections = 1024;
  // handshake_timeout bounds a connection's TLS handshake (including attestation).
  std::chrono::milliseconds handshake_timeout{10'000};
  // idle_timeout closes an established connection that sends no request for this long.
  std::chrono::milliseconds idle_timeout{60'000};
  // io_timeout bounds reading a request once its first bytes have arrived, and writing a
  // response.
  std::chrono::milliseconds io_timeout{10'000};
  // max_frame_size bounds a frame's payload, in and out.
  size_t max_frame_size = kAtlsDefaultMaxFrameSize;
  // on_handshake_failure, if set, is told about every connection whose handshake failed (for
  // audit logs and tests): the peer address and the reason (PERMISSION_DENIED for attestation
  // refusals, DEADLINE_EXCEEDED, UNAVAILABLE, or the issuer's own error). Called from worker
  // threads, concurrently; not called for connections cut by Shutdown.
  std::function<void(std::string_view peer_address, const absl::Status& status)>
      on_handshake_failure;
};

// AtlsServer accepts aTLS connections and serves RPCs on them with one handler.
// Thread-safe.
class AtlsServer {
 public:
  // Start listens and starts the poller and the worker pool. INVALID_ARGUMENT for bad options
  // (neither issuer nor client_validator, no handler, worker_threads outside 1-4096, no
  // max_connections, non-positive timeouts, max_frame_size below 64 bytes or above 64 MiB),
  // UNAVAILABLE if the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<AtlsServer>> Start(AtlsServerOptions options,
                                                           AtlsHandler handler);
  // ~AtlsServer calls Shutdown().
  ~AtlsServer();
  AtlsServer(const AtlsServer&) = delete;
  AtlsServer& operator=(const AtlsServer&) = delete;

  // port returns the port the server listens on.
  uint16_t port() const;
  // endpoint returns "host:port" for AtlsClient (IPv6 hosts in brackets).
  std::string endpoint() const;

  // Shutdown stops accepting, cuts every connection (handshaking, idle or waiting for a
  // request; clients see UNAVAILABLE), waits for running handlers to return and joins all
  // threads. Idempotent; must not be called from a handler.
  void Shutdown();

 private:
  struct Impl;
  explicit AtlsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// AtlsClientOptions configures an AtlsClient.
struct AtlsClientOptions {
  // issuer attests this client when a server asks (mutual and join modes); null = the client
  // presents no certificate, and servers that require one refuse it.
  std::shared_ptr<AttestationIssuer> issuer;
  // server_validator checks the server's document; the connection fails unless it accepts.
  std::shared_ptr<AttestationValidator> server_validator;
  // accept_unattested_server must be set to use the client without a server_validator (join
  // mode): the server is then not authenticated at all, and whatever the client sends must be
  // safe to hand to anyone (e.g. an attestation document; the reply is protected by other means,
  // such as TPM credential activation).
  bool accept_unattested_server = false;
  // max_frame_size bounds a frame's payload, in and out.
  size_t max_frame_size = kAtlsDefaultMaxFrameSize;
};

class AtlsConnection;

// AtlsClient opens aTLS connections: a fresh nonce and, when attesting, a fresh key for each.
// Thread-safe; connections from one client are independent.
//
// Errors of Connect and Call: UNAVAILABLE when the server cannot be reached or the connection
// breaks (including an aborted handshake that is not an attestation refusal);
// PERMISSION_DENIED when the server fails this client's validation or the server refuses this
// client's attestation; DEADLINE_EXCEEDED when the timeout expires; the issuer's own status when
// this client's issuer fails; INVALID_ARGUMENT for a malformed endpoint or an oversize request;
// RESOURCE_EXHAUSTED for a response larger than max_frame_size (or a request larger than the
// server's limit); otherwise the code and message the server's handler returned.
class AtlsClient {
 public:
  // New checks the options: INVALID_ARGUMENT if the client neither attests nor validates, if it
  // has no server_validator without accept_unattested_server, or if max_frame_size is below 64
  // bytes or above 64 MiB.
  static absl::StatusOr<std::unique_ptr<AtlsClient>> New(AtlsClientOptions options);
  ~AtlsClient();
  AtlsClient(const AtlsClient&) = delete;
  AtlsClient& operator=(const AtlsClient&) = delete;

  // Connect opens a connection to `endpoint` ("host:port", "[ip6]:port") and completes the
  // handshake within `timeout`; the server's certificate has been validated when it returns.
  // In mutual and join modes the server judges this client's document after the client's side
  // of the handshake ends (TLS 1.3), so a refusal shows as PERMISSION_DENIED from the first Call.
  absl::StatusOr<std::unique_ptr<AtlsConnection>> Connect(std::string_view endpoint,
                                                          std::chrono::milliseconds timeout) const;

  // Call opens a connection, makes one call and closes it, all within `timeout`.
  absl::StatusOr<std::string> Call(std::string_view endpoint, std::string_view method,
                                   std::string_view request,
                                   std::chrono::milliseconds timeout) const;

 private:
  struct Impl;
  explicit AtlsClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// AtlsConnection is an established client connection that carries any number of calls, one at a
// time. Not thread-safe. After a transport error every further Call fails with UNAVAILABLE.
class AtlsConnection {
 public:
  // ~AtlsConnection sends a TLS close_notify (best effort) and closes the socket.
  ~AtlsConnection();
  AtlsConnection(const AtlsConnection&) = delete;
  AtlsConnection& operator=(const AtlsConnection&) = delete;

  // peer describes the server (attested iff a server_validator accepted it).
  const PeerInfo& peer() const;

  // Call sends one request and waits for its response, within `timeout`. Errors as for
  // AtlsClient.
  absl::StatusOr<std::string> Call(std::string_view method, std::string_view request,
                                   std::chrono::milliseconds timeout);

 private:
  friend class AtlsClient;
  struct Impl;
  explicit AtlsConnection(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace keywarden::crypto
