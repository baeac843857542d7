// aTLS: the TLS 1.3 side. Per-connection keys and certificates (a join-mode server's one shared
// key and certificate, AtlsContext::UnattestedCredential), the nonce extensions, the
// certificate callbacks that issue and validate attestation documents, and non-blocking I/O on
// an established connection. docs/formats/atls.md describes the wire format and the checks.

// GenerateAtlsKey makes its keys through the EC_KEY API, deprecated in OpenSSL 3.0, on purpose:
// OpenSSL 3.0 encodes a provider key's SubjectPublicKeyInfo through the OSSL_ENCODER and
// decodes it again inside X509_set_pubkey (~170 us per call on the 2-core reference machine),
// while for an EC_KEY-backed EVP_PKEY it uses the fast built-in encoder and caches the key.
// Key, certificate and signatures cost ~200 us this way instead of ~670 us, per connection.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"
#include "src/crypto/atls_internal.h"

namespace keywarden::crypto::internal {

// HandshakeState is one connection's aTLS state, reachable from the SSL object's ex_data by the
// OpenSSL callbacks. Owned by the handshake, then by the AtlsStream.
struct HandshakeState {
  const AtlsContext* context = nullptr;
  // own_nonce is the nonce this side sent (client: ClientHello; server: CertificateRequest).
  std::array<uint8_t, kAtlsNonceSize> own_nonce{};
  // peer_nonce is the nonce the peer sent, which this side's document must bind.
  std::array<uint8_t, kAtlsNonceSize> peer_nonce{};
  bool have_peer_nonce = false;
  bool certificate_installed = false;
  bool peer_certificate_checked = false;
  // local_failure is the first reason this side aborted the handshake, if it did.
  absl::Status local_failure;
  // received_alert is the last fatal alert the peer sent (TLS AlertDescription), or -1.
  int received_alert = -1;
  PeerInfo peer;
};

namespace {

constexpr int kCertificateBackdateSeconds = 5 * 60;
constexpr int kCertificateLifetimeSeconds = 15 * 60;
constexpr char kCertificateCommonName[] = "keywarden-atls";
constexpr size_t kSerialSize = 16;

int StateIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

HandshakeState* GetState(const SSL* ssl) {
  return static_cast<HandshakeState*>(SSL_get_ex_data(ssl, StateIndex()));
}

// RecordFailure keeps the first failure of a handshake.
void RecordFailure(HandshakeState* state, absl::Status status) {
  if (state->local_failure.ok()) state->local_failure = std::move(status);
}

const ASN1_OBJECT* DocumentOid() {
  static const ASN1_OBJECT* const oid = OBJ_txt2obj(kAtlsDocumentOid, /*no_name=*/1);
  return oid;
}

// OpenSslReason returns the first queued OpenSSL reason (or "no OpenSSL reason") and clears the
// thread's error queue.
std::string OpenSslReason() {
  const unsigned long code = ERR_get_error();
  char buf[256] = "no OpenSSL reason";
  if (code != 0) ERR_error_string_n(code, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

// --- A socket BIO that never raises SIGPIPE ------------------------------------------------
// OpenSSL's BIO_s_socket writes with write(2), which raises SIGPIPE when the peer has gone. A
// library must not make its host process die of that, nor change the process's signal
// dispositions, so aTLS sockets use send(MSG_NOSIGNAL) through this small BIO.

struct SocketBioData {
  int fd;
  bool eof;
};

int SocketBioWrite(BIO* bio, const char* data, int size) {
  auto* d = static_cast<SocketBioData*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  ssize_t n;
  do {
    n = send(d->fd, data, static_cast<size_t>(size), MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_write(bio);
    return -1;
  }
  return static_cast<int>(n);
}

int SocketBioRead(BIO* bio, char* out, int size) {
  auto* d = static_cast<SocketBioData*>(BIO_get_data(bio));
  BIO_clear_retry_flags(bio);
  ssize_t n;
  do {
    n = recv(d->fd, out, static_cast<size_t>(size), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) BIO_set_retry_read(bio);
    return -1;
  }
  if (n == 0) d->eof = true;
  return static_cast<int>(n);
}

long SocketBioCtrl(BIO* bio, int cmd, long, void* ptr) {
  auto* d = static_cast<SocketBioData*>(BIO_get_data(bio));
  switch (cmd) {
    case BIO_CTRL_FLUSH:
      return 1;
    case BIO_CTRL_EOF:
      return d != nullptr && d->eof ? 1 : 0;
    case BIO_C_GET_FD:
      if (d == nullptr) return -1;
      if (ptr != nullptr) *static_cast<int*>(ptr) = d->fd;
      return d->fd;
    default:
      return 0;
  }
}

int SocketBioDestroy(BIO* bio) {
  delete static_cast<SocketBioData*>(BIO_get_data(bio));
  BIO_set_data(bio, nullptr);
  return 1;
}

const BIO_METHOD* SocketBioMethod() {
  static BIO_METHOD* const method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "keywarden-atls-socket");
    if (m == nullptr) return m;
    BIO_meth_set_write(m, SocketBioWrite);
    BIO_meth_set_read(m, SocketBioRead);
    BIO_meth_set_ctrl(m, SocketBioCtrl);
    BIO_meth_set_destroy(m, SocketBioDestroy);
    return m;
  }();
  return method;
}

absl::StatusOr<BIO*> NewSocketBio(int fd) {
  const BIO_METHOD* method = SocketBioMethod();
  if (method == nullptr) return OpenSslError("BIO_meth_new");
  BIO* bio = BIO_new(method);
  if (bio == nullptr) return OpenSslError("BIO_new");
  BIO_set_data(bio, new SocketBioData{fd, false});
  BIO_set_init(bio, 1);
  return bio;
}

// --- Certificates ------------------------------------------------------------------------

// DerOctetString returns the DER encoding of OCTET STRING { bytes }.
absl::StatusOr<std::string> DerOctetString(std::string_view bytes) {
  std::unique_ptr<ASN1_OCTET_STRING, Deleter<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>> octets(
      ASN1_OCTET_STRING_new());
  if (octets == nullptr ||
      ASN1_OCTET_STRING_set(octets.get(), reinterpret_cast<const unsigned char*>(bytes.data()),
                            static_cast<int>(bytes.size())) != 1) {
    return OpenSslError("ASN1_OCTET_STRING_set");
  }
  unsigned char* der = nullptr;
  const int size = i2d_ASN1_OCTET_STRING(octets.get(), &der);
  if (size <= 0) return OpenSslError("i2d_ASN1_OCTET_STRING");
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(size));
  OPENSSL_free(der);
  return out;
}

// --- Callbacks ---------------------------------------------------------------------------

// AddNonce sends this side's nonce: the client's in its ClientHello, the server's in its
// CertificateRequest (OpenSSL calls it only for the message the extension is registered for).
int AddNonce(SSL* ssl, unsigned int, unsigned int, const unsigned char** out, size_t* out_size,
             X509*, size_t, int* alert, void*) {
  HandshakeState* state = GetState(ssl);
  if (state == nullptr) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return -1;
  }
  *out = state->own_nonce.data();
  *out_size = state->own_nonce.size();
  return 1;
}

// ParseNonce takes the peer's nonce; anything but kAtlsNonceSize bytes is refused
// (illegal_parameter).
int ParseNonce(SSL* ssl, unsigned int ext_type, unsigned int, const unsigned char* in,
               size_t in_size, X509*, size_t, int* alert, void*) {
  HandshakeState* state = GetState(ssl);
  if (state == nullptr) {
    *alert = SSL_AD_INTERNAL_ERROR;
    return 0;
  }
  if (in_size != kAtlsNonceSize) {
    RecordFailure(state, PermissionDeniedError(
                             "aTLS nonce extension 0x{:04x} holds {} bytes; it must hold {}",
                             ext_type, in_size, kAtlsNonceSize));
    *alert = SSL_AD_ILLEGAL_PARAMETER;
    return 0;
  }
  std::memcpy(state->peer_nonce.data(), in, in_size);
  state->have_peer_nonce = true;
  return 1;
}

absl::Status InstallCertificate(SSL* ssl, HandshakeState* state) {
  const AtlsContext& context = *state->context;
  const bool server = context.server();
  AttestationIssuer* issuer = context.issuer();
  if (issuer != nullptr && !state->have_peer_nonce) {
    if (server) {
      return PermissionDeniedError(
          "the client sent no aTLS nonce (extension 0x{:04x}); cannot attest",
          kAtlsClientNonceExtension);
    }
    return PermissionDeniedError(
        "the server asked for a certificate without an aTLS nonce (extension 0x{:04x}); cannot "
        "attest",
        kAtlsServerNonceExtension);
  }
  if (issuer == nullptr && server) {
    // Join mode: no document, so one key and certificate serve every connection for a while.
    ASSIGN_OR_RETURN(auto credential, context.UnattestedCredential());
    if (SSL_use_cert_and_key(ssl, credential->cert.get(), credential->key.get(), nullptr,
                             /*override=*/1) != 1) {
      return OpenSslError("SSL_use_cert_and_key");
    }
    state->certificate_installed = true;
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(PkeyPtr key, GenerateAtlsKey());
  std::string document;
  if (issuer != nullptr) {
    // The same encoder (X509_PUBKEY) that writes the certificate's SubjectPublicKeyInfo.
    ASSIGN_OR_RETURN(const auto key_hash, SpkiSha256(key.get()));
    auto issued = issuer->Issue(state->peer_nonce, key_hash);
    if (!issued.ok()) {
      return MakeStatus(issued.status().code(), "attestation issuer failed: {}",
                        StatusMessage(issued.status()));
    }
    if (issued->size() > kAtlsMaxDocumentSize) {
      return InternalError("attestation issuer returned {} bytes; the limit is {}", issued->size(),
                           kAtlsMaxDocumentSize);
    }
    document = *std::move(issued);
  }
  ASSIGN_OR_RETURN(X509Ptr cert,
                   MakeAtlsCertificate(key.get(), issuer != nullptr ? &document : nullptr));
  if (SSL_use_cert_and_key(ssl, cert.get(), key.get(), nullptr, /*override=*/1) != 1) {
    return OpenSslError("SSL_use_cert_and_key");
  }
  state->certificate_installed = true;
  return absl::OkStatus();
}

// CertificateCallback (SSL_CTX_set_cert_cb) installs this connection's certificate: on the
// server after the ClientHello was parsed (nonce known), on the client when the server's
// CertificateRequest arrived. A client without an issuer installs nothing and so sends an
// empty Certificate.
int CertificateCallback(SSL* ssl, void*) {
  HandshakeState* state = GetState(ssl);
  if (state == nullptr) return 0;
  if (state->certificate_installed) return 1;
  if (!state->context->server() && state->context->issuer() == nullptr) return 1;
  absl::Status status = InstallCertificate(ssl, state);
  if (!status.ok()) {
    RecordFailure(state, std::move(status));
    return 0;
  }
  return 1;
}

absl::Status CheckPeerCertificate(X509_STORE_CTX* store, HandshakeState* state) {
  const char* const peer_name = state->context->server() ? "client" : "server";
  X509* cert = X509_STORE_CTX_get0_cert(store);
  if (cert == nullptr) return PermissionDeniedError("the {} sent no certificate", peer_name);
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_untrusted(store);
  const int count = chain == nullptr ? 1 : sk_X509_num(chain);
  if (count != 1) {
    return PermissionDeniedError("the {} sent {} certificates; an aTLS peer sends exactly one",
                                 peer_name, count);
  }
  ASSIGN_OR_RETURN(AtlsCertificateContents contents, ParseAtlsCertificate(cert));
  state->peer.tls_key_hash = contents.key_hash;
  AttestationValidator* validator = state->context->validator();
  if (validator == nullptr) return absl::OkStatus();
  if (!contents.document.has_value()) {
    return PermissionDeniedError("the {}'s certificate carries no attestation document ({})",
                                 peer_name, kAtlsDocumentOid);
  }
  auto result = validator->Validate(*contents.document, state->own_nonce, contents.key_hash);
  if (!result.ok()) {
    return PermissionDeniedError("attestation of the {} failed: {}", peer_name,
                                 StatusMessage(result.status()));
  }
  state->peer.attested = true;
  state->peer.identity = std::move(result->peer_identity);
  state->peer.document = *std::move(contents.document);
  return absl::OkStatus();
}

// VerifyCallback (SSL_CTX_set_cert_verify_callback) replaces OpenSSL's chain verification: a
// self-signed per-connection certificate is authenticated by its attestation document, not by a
// CA. Returning 0 fails the handshake with a bad_certificate alert (X509_V_ERR_CERT_REJECTED).
int VerifyCallback(X509_STORE_CTX* store, void*) {
  auto* ssl =
      static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  HandshakeState* state = ssl == nullptr ? nullptr : GetState(ssl);
  if (state == nullptr) {
    X509_STORE_CTX_set_error(store, X509_V_ERR_UNSPECIFIED);
    return 0;
  }
  absl::Status status = CheckPeerCertificate(store, state);
  if (!status.ok()) {
    RecordFailure(state, std::move(status));
    X509_STORE_CTX_set_error(store, X509_V_ERR_CERT_REJECTED);
    return 0;
  }
  state->peer_certificate_checked = true;
  return 1;
}

// InfoCallback records fatal alerts from the peer, to tell an attestation refusal from a
// broken connection.
void InfoCallback(const SSL* ssl, int where, int value) {
  if ((where & SSL_CB_READ_ALERT) != SSL_CB_READ_ALERT) return;
  HandshakeState* state = GetState(ssl);
  if (state == nullptr) return;
  if ((value >> 8) == SSL3_AL_FATAL) state->received_alert = value & 0xff;
}

// RefusesAttestation reports whether a peer's alert means "your certificate (attestation) is
// not acceptable", as OpenSSL sends when a verify callback fails or a certificate is missing.
bool RefusesAttestation(int alert) {
  switch (alert) {
    case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE:
    case SSL_AD_CERTIFICATE_REVOKED:
    case SSL_AD_CERTIFICATE_EXPIRED:
    case SSL_AD_CERTIFICATE_UNKNOWN:
    case SSL_AD_UNKNOWN_CA:
    case SSL_AD_ACCESS_DENIED:
    case SSL_AD_CERTIFICATE_REQUIRED:
      return true;
    default:
      return false;
  }
}

// FailureStatus turns a failed SSL_* call into a status: this side's own refusal first, then
// the peer's alert, then the transport.
absl::Status FailureStatus(HandshakeState* state, int ssl_error, std::string_view what) {
  if (!state->local_failure.ok()) {
    ERR_clear_error();
    return state->local_failure;
  }
  if (state->received_alert >= 0) {
    ERR_clear_error();
    const char* name = SSL_alert_desc_string_long(state->received_alert);
    const bool server = state->context->server();
    if (RefusesAttestation(state->received_alert)) {
      return PermissionDeniedError(
          "the {} refused this {}'s attestation or certificate during {} (TLS alert: {})",
          server ? "client" : "server", server ? "server" : "client", what, name);
    }
    return UnavailableError("the {} aborted the connection during {} (TLS alert: {})",
                            server ? "client" : "server", what, name);
  }
  const unsigned long first = ERR_peek_error();
  if (ERR_GET_LIB(first) == ERR_LIB_SSL &&
      ERR_GET_REASON(first) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    ERR_clear_error();
    return PermissionDeniedError(
        "the client presented no certificate; this server requires client attestation");
  }
  if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN) {
    const int err = errno;
    ERR_clear_error();
    if (err == 0) return UnavailableError("the peer closed the connection during {}", what);
    return UnavailableError("connection lost during {}: {}", what, std::strerror(err));
  }
  return UnavailableError("{} failed: {}", what, OpenSslReason());
}

// ConfigureContext applies the aTLS TLS profile (docs/formats/atls.md) to `ctx`.
absl::Status ConfigureContext(SSL_CTX* ctx, bool server, bool verify_peer) {
  // TLS 1.3 only (RFC 8446): nonces in CertificateRequest extensions, encrypted certificates.
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1) {
    return OpenSslError("SSL_CTX_set_min/max_proto_version");
  }
  // No resumption: a resumed session would skip the certificates, hence the attestation, and
  // every connection needs a fresh nonce anyway.
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (SSL_CTX_set_num_tickets(ctx, 0) != 1) return OpenSslError("SSL_CTX_set_num_tickets");
  // Cheap handshakes: X25519 key exchange, ECDSA P-256 signatures only (no RSA).
  if (SSL_CTX_set1_groups_list(ctx, "X25519:P-256") != 1) {
    return OpenSslError("SSL_CTX_set1_groups_list");
  }
  // One suite, the one RFC 8446 §9.1 makes mandatory: SHA-256 for the key schedule and
  // transcript (SHA-NI on current x86 CPUs; SHA-384 has no such instructions), AES-128-GCM for
  // the records. Both sides are Keywarden, so nothing else needs to be offered.
  if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256") != 1) {
    return OpenSslError("SSL_CTX_set_ciphersuites");
  }
  if (SSL_CTX_set1_sigalgs_list(ctx, "ECDSA+SHA256") != 1 ||
      SSL_CTX_set1_client_sigalgs_list(ctx, "ECDSA+SHA256") != 1) {
    return OpenSslError("SSL_CTX_set1_sigalgs_list");
  }
  // Room for a certificate with a document of kAtlsMaxDocumentSize bytes.
  SSL_CTX_set_max_cert_list(ctx, static_cast<long>(kAtlsMaxDocumentSize + 16 * 1024));
  // The nonces: the client's in its ClientHello, the server's in its CertificateRequest.
  if (SSL_CTX_add_custom_ext(ctx, kAtlsClientNonceExtension,
                             SSL_EXT_CLIENT_HELLO | SSL_EXT_TLS1_3_ONLY, AddNonce, nullptr, nullptr,
                             ParseNonce, nullptr) != 1 ||
      SSL_CTX_add_custom_ext(ctx, kAtlsServerNonceExtension,
                             SSL_EXT_TLS1_3_CERTIFICATE_REQUEST | SSL_EXT_TLS1_3_ONLY, AddNonce,
                             nullptr, nullptr, ParseNonce, nullptr) != 1) {
    return OpenSslError("SSL_CTX_add_custom_ext");
  }
  SSL_CTX_set_cert_cb(ctx, CertificateCallback, nullptr);
  SSL_CTX_set_cert_verify_callback(ctx, VerifyCallback, nullptr);
  SSL_CTX_set_info_callback(ctx, InfoCallback);
  int mode = SSL_VERIFY_NONE;
  if (server && verify_peer) mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  // A client always checks the server's certificate profile; the document only if it has a
  // validator (CheckPeerCertificate).
  if (!server) mode = SSL_VERIFY_PEER;
  SSL_CTX_set_verify(ctx, mode, nullptr);
  return absl::OkStatus();
}

}  // namespace

// --- UniqueFd, waiting ---------------------------------------------------------------------

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    Reset();
    fd_ = other.Release();
  }
  return *this;
}

void UniqueFd::Reset() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

absl::Status WaitFd(int fd, short events, Deadline deadline, std::string_view what) {
  while (true) {
    const auto now = Clock::now();
    if (now >= deadline)
      return MakeStatus(absl::StatusCode::kDeadlineExceeded, "{} timed out", what);
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    pollfd p{fd, events, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<long long>(left, INT_MAX)));
    if (r > 0) return absl::OkStatus();
    if (r < 0 && errno != EINTR)
      return UnavailableError("{}: poll: {}", what, std::strerror(errno));
  }
}

void LingerBeforeClose(int fd, std::chrono::milliseconds linger) {
  shutdown(fd, SHUT_WR);
  const Deadline deadline = Clock::now() + linger;
  char sink[16 * 1024];
  while (WaitFd(fd, POLLIN, deadline, "linger").ok()) {
    const ssize_t n = recv(fd, sink, sizeof(sink), 0);
    if (n == 0) break;
    if (n < 0 && errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK) break;
  }
}

// --- Keys and certificates -----------------------------------------------------------------

absl::StatusOr<PkeyPtr> GenerateAtlsKey() {
  // Shared read-only; EC_KEY_set_group copies it (cheaper than building P-256 each time).
  static const EC_GROUP* const p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  if (p256 == nullptr) return OpenSslError("EC_GROUP_new_by_curve_name(P-256)");
  std::unique_ptr<EC_KEY, Deleter<EC_KEY, EC_KEY_free>> ec(EC_KEY_new());
  if (ec == nullptr || EC_KEY_set_group(ec.get(), p256) != 1 ||
      EC_KEY_generate_key(ec.get()) != 1) {
    return OpenSslError("EC_KEY_generate_key(P-256)");
  }
  PkeyPtr key(EVP_PKEY_new());
  if (key == nullptr || EVP_PKEY_assign_EC_KEY(key.get(), ec.get()) != 1) {
    return OpenSslError("EVP_PKEY_assign_EC_KEY");
  }
  ec.release();  // owned by `key` now
  return key;
}

absl::StatusOr<std::array<uint8_t, kAtlsKeyHashSize>> SpkiSha256(X509* cert) {
  X509_PUBKEY* spki = X509_get_X509_PUBKEY(cert);
  if (spki == nullptr) return PermissionDeniedError("certificate has no public key");
  unsigned char* der = nullptr;
  const int size = i2d_X509_PUBKEY(spki, &der);
  if (size <= 0) return OpenSslError("i2d_X509_PUBKEY");
  const auto hash = Sha256({std::span<const uint8_t>(der, static_cast<size_t>(size))});
  OPENSSL_free(der);
  return hash;
}

absl::StatusOr<std::array<uint8_t, kAtlsKeyHashSize>> SpkiSha256(EVP_PKEY* key) {
  unsigned char* der = nullptr;
  const int size = i2d_PUBKEY(key, &der);
  if (size <= 0) return OpenSslError("i2d_PUBKEY");
  const auto hash = Sha256({std::span<const uint8_t>(der, static_cast<size_t>(size))});
  OPENSSL_free(der);
  return hash;
}

absl::StatusOr<X509Ptr> MakeAtlsCertificate(EVP_PKEY* key, const std::string* document) {
  if (document != nullptr && document->size() > kAtlsMaxDocumentSize) {
    return InvalidArgumentError("attestation document of {} bytes exceeds the {}-byte limit",
                                document->size(), kAtlsMaxDocumentSize);
  }
  X509Ptr cert(X509_new());
  if (cert == nullptr) return OpenSslError("X509_new");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1) return OpenSslError("X509_set_version");

  // Serial: 16 random bytes, positive and never zero (RFC 5280 §4.1.2.2).
  std::array<uint8_t, kSerialSize> serial{};
  RETURN_IF_ERROR(RandomFill(serial));
  serial[0] = static_cast<uint8_t>((serial[0] & 0x7f) | 0x40);
  std::unique_ptr<BIGNUM, Deleter<BIGNUM, BN_free>> bn(
      BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr));
  if (bn == nullptr || BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return OpenSslError("certificate serial");
  }
  if (X509_gmtime_adj(X509_getm_notBefore(cert.get()), -kCertificateBackdateSeconds) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kCertificateLifetimeSeconds) == nullptr) {
    return OpenSslError("certificate validity");
  }
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                 reinterpret_cast<const unsigned char*>(kCertificateCommonName), -1,
                                 -1, 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1) {
    return OpenSslError("certificate name");
  }
  if (X509_set_pubkey(cert.get(), key) != 1) return OpenSslError("X509_set_pubkey");

  if (document != nullptr) {
    // extnValue = DER(OCTET STRING { document }): the extension value is itself DER.
    ASSIGN_OR_RETURN(const std::string value, DerOctetString(*document));
    std::unique_ptr<ASN1_OCTET_STRING, Deleter<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>> data(
        ASN1_OCTET_STRING_new());
    if (data == nullptr ||
        ASN1_OCTET_STRING_set(data.get(), reinterpret_cast<const unsigned char*>(value.data()),
                              static_cast<int>(value.size())) != 1) {
      return OpenSslError("extension value");
    }
    if (DocumentOid() == nullptr) return OpenSslError("OBJ_txt2obj(aTLS document OID)");
    std::unique_ptr<X509_EXTENSION, Deleter<X509_EXTENSION, X509_EXTENSION_free>> ext(
        X509_EXTENSION_create_by_OBJ(nullptr, DocumentOid(), /*crit=*/0, data.get()));
    if (ext == nullptr || X509_add_ext(cert.get(), ext.get(), -1) != 1) {
      return OpenSslError("X509_add_ext");
    }
  }
  if (X509_sign(cert.get(), key, EVP_sha256()) <= 0) return OpenSslError("X509_sign");
  return cert;
}

absl::StatusOr<AtlsCertificateContents> ParseAtlsCertificate(X509* cert) {
  EVP_PKEY* key = X509_get0_pubkey(cert);
  if (key == nullptr) {
    ERR_clear_error();
    return PermissionDeniedError("certificate public key cannot be decoded");
  }
  char group[64] = "";
  size_t group_size = 0;
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC ||
      EVP_PKEY_get_group_name(key, group, sizeof(group), &group_size) != 1 ||
      std::strcmp(group, SN_X9_62_prime256v1) != 0) {
    ERR_clear_error();
    return PermissionDeniedError("certificate key is not ECDSA P-256");
  }
  AtlsCertificateContents contents;
  ASSIGN_OR_RETURN(contents.key_hash, SpkiSha256(cert));

  const ASN1_OBJECT* oid = DocumentOid();
  if (oid == nullptr) return OpenSslError("OBJ_txt2obj(aTLS document OID)");
  const int index = X509_get_ext_by_OBJ(cert, oid, -1);
  if (index < 0) return contents;
  if (X509_get_ext_by_OBJ(cert, oid, index) >= 0) {
    return PermissionDeniedError("certificate carries the attestation document extension twice");
  }
  X509_EXTENSION* ext = X509_get_ext(cert, index);
  if (X509_EXTENSION_get_critical(ext) != 0) {
    return PermissionDeniedError("attestation document extension is marked critical");
  }
  const ASN1_OCTET_STRING* value = X509_EXTENSION_get_data(ext);
  const unsigned char* p = ASN1_STRING_get0_data(value);
  const long size = ASN1_STRING_length(value);
  const unsigned char* const end = p + size;
  std::unique_ptr<ASN1_OCTET_STRING, Deleter<ASN1_OCTET_STRING, ASN1_OCTET_STRING_free>> inner(
      d2i_ASN1_OCTET_STRING(nullptr, &p, size));
  if (inner == nullptr || p != end) {
    ERR_clear_error();
    return PermissionDeniedError("attestation document extension is not one DER OCTET STRING");
  }
  const size_t document_size = static_cast<size_t>(ASN1_STRING_length(inner.get()));
  if (document_size > kAtlsMaxDocumentSize) {
    return PermissionDeniedError("attestation document of {} bytes exceeds the {}-byte limit",
                                 document_size, kAtlsMaxDocumentSize);
  }
  contents.document.emplace(reinterpret_cast<const char*>(ASN1_STRING_get0_data(inner.get())),
                            document_size);
  return contents;
}

absl::StatusOr<AtlsCertificateContents> ParseAtlsCertificateDer(std::span<const uint8_t> der) {
  const unsigned char* p = der.data();
  X509Ptr cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (cert == nullptr || p != der.data() + der.size()) {
    ERR_clear_error();
    return PermissionDeniedError("not one DER X.509 certificate");
  }
  return ParseAtlsCertificate(cert.get());
}

// --- AtlsContext ---------------------------------------------------------------------------

AtlsContext::AtlsContext(bool server, std::shared_ptr<AttestationIssuer> issuer,
                         std::shared_ptr<AttestationValidator> validator, SslCtxPtr ctx)
    : server_(server),
      issuer_(std::move(issuer)),
      validator_(std::move(validator)),
      ctx_(std::move(ctx)) {}

absl::StatusOr<std::unique_ptr<AtlsContext>> AtlsContext::New(
    bool server, std::shared_ptr<AttestationIssuer> issuer,
    std::shared_ptr<AttestationValidator> validator) {
  if (StateIndex() < 0) return OpenSslError("SSL_get_ex_new_index");
  if (DocumentOid() == nullptr) return OpenSslError("OBJ_txt2obj(aTLS document OID)");
  SslCtxPtr ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()));
  if (ctx == nullptr) return OpenSslError("SSL_CTX_new");
  RETURN_IF_ERROR(ConfigureContext(ctx.get(), server, validator != nullptr));
  return std::unique_ptr<AtlsContext>(
      new AtlsContext(server, std::move(issuer), std::move(validator), std::move(ctx)));
}

absl::StatusOr<std::shared_ptr<const AtlsContext::Credential>> AtlsContext::UnattestedCredential()
    const {
  std::lock_guard<std::mutex> lock(credential_mu_);
  const auto now = Clock::now();
  if (credential_ == nullptr || now - credential_->made >= kUnattestedCredentialLifetime) {
    auto fresh = std::make_shared<Credential>();
    ASSIGN_OR_RETURN(fresh->key, GenerateAtlsKey());
    ASSIGN_OR_RETURN(fresh->cert, MakeAtlsCertificate(fresh->key.get(), nullptr));
    fresh->made = now;
    credential_ = std::move(fresh);
  }
  return credential_;
}

absl::StatusOr<std::unique_ptr<AtlsContext>> AtlsContext::NewServer(
    std::shared_ptr<AttestationIssuer> issuer, std::shared_ptr<AttestationValidator> validator) {
  return New(/*server=*/true, std::move(issuer), std::move(validator));
}

absl::StatusOr<std::unique_ptr<AtlsContext>> AtlsContext::NewClient(
    std::shared_ptr<AttestationIssuer> issuer, std::shared_ptr<AttestationValidator> validator) {
  return New(/*server=*/false, std::move(issuer), std::move(validator));
}

absl::StatusOr<std::unique_ptr<AtlsStream>> AtlsContext::Handshake(int fd, std::string peer_address,
                                                                   Deadline deadline) const {
  auto state = std::make_unique<HandshakeState>();
  state->context = this;
  state->peer.address = std::move(peer_address);
  RETURN_IF_ERROR(RandomFill(state->own_nonce));

  ERR_clear_error();
  SslPtr ssl(SSL_new(ctx_.get()));
  if (ssl == nullptr) return OpenSslError("SSL_new");
  ASSIGN_OR_RETURN(BIO * bio, NewSocketBio(fd));
  SSL_set_bio(ssl.get(), bio, bio);  // one reference, taken by the SSL
  if (SSL_set_ex_data(ssl.get(), StateIndex(), state.get()) != 1) {
    return OpenSslError("SSL_set_ex_data");
  }
  if (server_) {
    SSL_set_accept_state(ssl.get());
  } else {
    SSL_set_connect_state(ssl.get());
  }

  while (true) {
    ERR_clear_error();
    errno = 0;
    const int r = SSL_do_handshake(ssl.get());
    if (r == 1) break;
    const int err = SSL_get_error(ssl.get(), r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      RETURN_IF_ERROR(
          WaitFd(fd, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline, "TLS handshake"));
      continue;
    }
    return FailureStatus(state.get(), err, "the TLS handshake");
  }

  // Belt and braces: the callbacks above are the checks, these confirm they ran.
  if (SSL_version(ssl.get()) != TLS1_3_VERSION) {
    return UnavailableError("negotiated {} instead of TLS 1.3", SSL_get_version(ssl.get()));
  }
  if (SSL_session_reused(ssl.get()) != 0) {
    return PermissionDeniedError("the peer resumed a session; aTLS requires a full handshake");
  }
  if (validator_ != nullptr && !state->peer.attested) {
    return PermissionDeniedError("the {} was not attested", server_ ? "client" : "server");
  }
  if (!server_ && !state->peer_certificate_checked) {
    return PermissionDeniedError("the server's certificate was not checked");
  }
  return std::make_unique<AtlsStream>(std::move(ssl), std::move(state), fd);
}

// --- AtlsStream ----------------------------------------------------------------------------

AtlsStream::AtlsStream(SslPtr ssl, std::unique_ptr<HandshakeState> state, int fd)
    : state_(std::move(state)), ssl_(std::move(ssl)), fd_(fd) {}

AtlsStream::~AtlsStream() = default;

const PeerInfo& AtlsStream::peer() const { return state_->peer; }

absl::Status AtlsStream::Write(std::span<const uint8_t> data, Deadline deadline) {
  size_t done = 0;
  while (done < data.size()) {
    ERR_clear_error();
    errno = 0;
    size_t written = 0;
    // On WANT_* OpenSSL requires the same arguments again, which the loop gives it.
    if (SSL_write_ex(ssl_.get(), data.data() + done, data.size() - done, &written) == 1) {
      done += written;
      continue;
    }
    const int err = SSL_get_error(ssl_.get(), 0);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      RETURN_IF_ERROR(WaitFd(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline,
                             "sending on the aTLS connection"));
      continue;
    }
    return FailureStatus(state_.get(), err, "sending");
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> AtlsStream::Read(std::span<uint8_t> out, Deadline deadline) {
  while (true) {
    ERR_clear_error();
    errno = 0;
    size_t got = 0;
    if (SSL_read_ex(ssl_.get(), out.data(), out.size(), &got) == 1) return got;
    const int err = SSL_get_error(ssl_.get(), 0);
    if (err == SSL_ERROR_ZERO_RETURN) return 0;
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      RETURN_IF_ERROR(WaitFd(fd_, err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline,
                             "receiving on the aTLS connection"));
      continue;
    }
    return FailureStatus(state_.get(), err, "receiving");
  }
}

bool AtlsStream::HasPendingData() const { return SSL_has_pending(ssl_.get()) == 1; }

void AtlsStream::SendCloseNotify() {
  ERR_clear_error();
  SSL_shutdown(ssl_.get());
  ERR_clear_error();
}

}  // namespace keywarden::crypto::internal
