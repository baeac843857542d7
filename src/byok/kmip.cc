// The KMIP KEK provider: KMIP Encrypt/Decrypt (KMIP 1.2 §4.29/§4.30, with the Authenticated
// Encryption Additional Data and Tag fields of KMIP 1.4 §4.29/§4.30) over TLS 1.2 with a client
// certificate (KMIP 1.2 Profiles, Basic Authentication Suite). docs/byok-kmip.md.
//
// Wrapped blob (version 1), all of it public:
//   0x01 || nonce (12 bytes) || ciphertext (as long as the plaintext) || tag (16 bytes)
// made by the server with AES-GCM under the KEK, with the nonce chosen here (RAND_priv_bytes)
// and the additional data
//   "keywarden-kmip-v1" || 0x00 || key Unique Identifier
// so a blob made under one key id does not decrypt under another, and no byte of it can change.
//
// Security: the KEK never leaves the server. Plaintext DEKs cross the TLS connection (Encrypt
// request, Decrypt response); the TTLV buffers that carry them are wiped after use.
#include "keywarden/byok/kmip.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <mutex>
#include <utility>
#include <vector>

#include "keywarden/crypto/random.h"
#include "keywarden/status.h"
#include "src/byok/kmip_ttlv.h"

namespace keywarden::byok {
namespace {

using kmip::Item;
using Clock = std::chrono::steady_clock;

// KMIP tags (KMIP 1.2 §9.1.3.1; the last two KMIP 1.4).
enum Tag : uint32_t {
  kBatchCount = 0x42000D,
  kBatchItem = 0x42000F,
  kBlockCipherMode = 0x420011,
  kCryptographicAlgorithm = 0x420028,
  kCryptographicParameters = 0x42002B,
  kIvCounterNonce = 0x42003D,
  kOperation = 0x42005C,
  kProtocolVersion = 0x420069,
  kProtocolVersionMajor = 0x42006A,
  kProtocolVersionMinor = 0x42006B,
  kRequestHeader = 0x420077,
  kRequestMessage = 0x420078,
  kRequestPayload = 0x420079,
  kResponseHeader = 0x42007A,
  kResponseMessage = 0x42007B,
  kResponsePayload = 0x42007C,
  kResultMessage = 0x42007D,
  kResultReason = 0x42007E,
  kResultStatus = 0x42007F,
  kUniqueIdentifier = 0x420094,
  kData = 0x4200C2,
  kTagLength = 0x4200CE,
  kAuthenticatedEncryptionAdditionalData = 0x4200FE,
  kAuthenticatedEncryptionTag = 0x4200FF,
};

// Enumeration values (KMIP 1.2 §9.1.3.2).
constexpr uint32_t kOperationEncrypt = 0x1F;
constexpr uint32_t kOperationDecrypt = 0x20;
constexpr uint32_t kAlgorithmAes = 0x03;
constexpr uint32_t kBlockCipherModeGcm = 0x09;
constexpr uint32_t kResultStatusSuccess = 0x00;

// The protocol version in every request. Encrypt/Decrypt are KMIP 1.2 operations, but the
// Authenticated Encryption Tag that AES-GCM needs exists only from KMIP 1.4: under 1.2 a server
// has no field to return the tag in (PyKMIP then drops it).
constexpr int32_t kProtocolMajor = 1;
constexpr int32_t kProtocolMinor = 4;

constexpr uint8_t kBlobVersion = 0x01;
constexpr size_t kNonceSize = 12;
constexpr size_t kTagSize = 16;
constexpr size_t kMaxPlaintext = 512;
constexpr std::string_view kAadLabel = "keywarden-kmip-v1";

// Idle connections kept, and for how long: PyKMIP closes a session after 10 s without requests.
constexpr size_t kMaxIdleConnections = 4;
constexpr auto kMaxIdleTime = std::chrono::seconds(5);

// TLS 1.2 suites with forward secrecy, AEAD first; PyKMIP's TLS1.2 suite offers the ECDHE ones.
constexpr char kCipherList[] =
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256";

struct SslCtxFree {
  void operator()(SSL_CTX* p) const { SSL_CTX_free(p); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

// TakeOpenSslErrors returns the queued OpenSSL reasons joined, and clears the queue.
std::string TakeOpenSslErrors() {
  std::string text;
  while (unsigned long code = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!text.empty()) text += "; ";
    text += buf;
  }
  return text.empty() ? "no OpenSSL reason" : text;
}

std::string Errno(int err) { return std::strerror(err); }

// ResultReasonName names the KMIP 1.2 Result Reasons (§9.1.3.2.29) a server is likely to send.
std::string ResultReasonName(int64_t reason) {
  switch (reason) {
    case 0x01:
      return "Item Not Found";
    case 0x02:
      return "Response Too Large";
    case 0x03:
      return "Authentication Not Successful";
    case 0x04:
      return "Invalid Message";
    case 0x05:
      return "Operation Not Supported";
    case 0x06:
      return "Missing Data";
    case 0x07:
      return "Invalid Field";
    case 0x08:
      return "Feature Not Supported";
    case 0x09:
      return "Operation Canceled By Requester";
    case 0x0A:
      return "Cryptographic Failure";
    case 0x0B:
      return "Illegal Operation";
    case 0x0C:
      return "Permission Denied";
    case 0x0D:
      return "Object Archived";
    case 0x0E:
      return "Index Out Of Bounds";
    case 0x0F:
      return "Application Namespace Not Supported";
    case 0x10:
      return "Key Format Type Not Supported";
    case 0x11:
      return "Key Compression Type Not Supported";
    case 0x12:
      return "Encoding Option Error";
    case 0x13:
      return "Key Value Not Present";
    case 0x14:
      return "Attestation Required";
    case 0x15:
      return "Attestation Failed";
    case 0x16:
      return "Sensitive";
    case 0x17:
      return "Not Extractable";
    case 0x18:
      return "Object Already Exists";
    case 0x100:
      return "General Failure";
    default:
      return fmt::format("reason 0x{:x}", reason);
  }
}

struct Endpoint {
  std::string host;
  std::string port;
  bool is_ip = false;
};

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view text) {
  Endpoint ep;
  std::string_view port;
  if (text.starts_with('[')) {
    const size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return InvalidArgumentError("KMIP endpoint \"{}\" is not [IPv6]:PORT", Printable(text));
    }
    ep.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos || text.find(':') != colon) {
      return InvalidArgumentError("KMIP endpoint \"{}\" is not HOST:PORT", Printable(text));
    }
    ep.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
  }
  int port_number = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), port_number);
  if (ep.host.empty() || port.empty() || ec != std::errc() || end != port.data() + port.size() ||
      port_number < 1 || port_number > 65535) {
    return InvalidArgumentError("KMIP endpoint \"{}\" is not HOST:PORT", Printable(text));
  }
  ep.port = std::string(port);
  in6_addr addr6;
  in_addr addr4;
  ep.is_ip = inet_pton(AF_INET, ep.host.c_str(), &addr4) == 1 ||
             inet_pton(AF_INET6, ep.host.c_str(), &addr6) == 1;
  return ep;
}

// SigpipeGuard blocks SIGPIPE in the calling thread while it lives: OpenSSL writes to the socket
// with write(2), and a write to a connection the server has closed (a stale pooled connection, a
// close_notify) would otherwise raise SIGPIPE and end the process. A SIGPIPE raised meanwhile is
// consumed; one already pending before is left alone.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeGuard() {
    if (!was_pending_) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        const timespec zero{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &zero) < 0 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t pipe_;
  sigset_t old_;
  bool was_pending_ = false;
};

// Connection is one TLS connection to the server. Not thread-safe: one call at a time.
class Connection {
 public:
  Connection(int fd, SSL* ssl) : fd_(fd), ssl_(ssl) {}
  ~Connection() {
    SigpipeGuard guard;
    if (ssl_ != nullptr) {
      // Best effort close_notify (the socket is non-blocking), only on a connection whose last
      // exchange succeeded: OpenSSL forbids SSL_shutdown after a fatal error.
      if (healthy) SSL_shutdown(ssl_);
      ERR_clear_error();
      SSL_free(ssl_);
    }
    if (fd_ >= 0) close(fd_);
  }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  SSL* ssl() const { return ssl_; }
  int fd() const { return fd_; }
  Clock::time_point last_used = Clock::now();
  // healthy is true while the last exchange on this connection succeeded.
  bool healthy = false;

 private:
  int fd_;
  SSL* ssl_;
};

// Wait polls `fd` for `events` until `deadline`; false on timeout or poll error.
bool Wait(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    // Rounded up, so a wait never ends before the deadline.
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, 60'000)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

// SslStep runs an SSL_* call that may want to read or write on the non-blocking socket until it
// completes or the deadline passes. Returns the call's positive result, or 0 with `error` set.
template <typename F>
int SslStep(const Connection& c, Clock::time_point deadline, F call, std::string* error) {
  for (;;) {
    ERR_clear_error();
    errno = 0;
    const int r = call();
    if (r > 0) return r;
    const int e = SSL_get_error(c.ssl(), r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      if (!Wait(c.fd(), e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, deadline)) {
        *error = "timed out";
        return 0;
      }
      continue;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
      *error = "connection closed by the server";
    } else if (e == SSL_ERROR_SYSCALL) {
      const int err = errno;
      const std::string queued = TakeOpenSslErrors();
      *error =
          err != 0 ? Errno(err) : (queued == "no OpenSSL reason" ? "connection closed" : queued);
    } else {
      *error = TakeOpenSslErrors();
    }
    return 0;
  }
}

class KmipProvider final : public KekProvider {
 public:
  KmipProvider(KmipConfig config, Endpoint endpoint, RemoteOptions options, SslCtxPtr ctx)
      : config_(std::move(config)),
        endpoint_(std::move(endpoint)),
        options_(options),
        ctx_(std::move(ctx)) {}

  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    if (plaintext.empty() || plaintext.size() > kMaxPlaintext) {
      return InvalidArgumentError("KMIP wrap of {} bytes: must be 1 to {}", plaintext.size(),
                                  kMaxPlaintext);
    }
    std::vector<uint8_t> nonce(kNonceSize);
    RETURN_IF_ERROR(crypto::RandomFill(nonce));
    const auto secret = plaintext.Reveal(InsecureSecretAccess::Get());
    Item payload = Item::Structure(
        kRequestPayload, {Item::TextString(kUniqueIdentifier, config_.key_id), Parameters(),
                          Item::ByteString(kData, secret), Item::ByteString(kIvCounterNonce, nonce),
                          Item::ByteString(kAuthenticatedEncryptionAdditionalData, Aad())});
    ASSIGN_OR_RETURN(Item response, Call("Encrypt", kOperationEncrypt, std::move(payload)));
    const Item* data = response.Find(kData);
    const Item* tag = response.Find(kAuthenticatedEncryptionTag);
    const Item* iv = response.Find(kIvCounterNonce);
    if (data == nullptr || data->type != kmip::ItemType::kByteString ||
        data->bytes.size() != plaintext.size() || tag == nullptr ||
        tag->type != kmip::ItemType::kByteString || tag->bytes.size() != kTagSize ||
        (iv != nullptr && iv->bytes != nonce)) {
      return UnavailableError(
          "KMIP server {} answered Encrypt without a {}-byte ciphertext and {}-byte "
          "authentication tag (does it support KMIP 1.4 AES-GCM?)",
          endpoint_text(), plaintext.size(), kTagSize);
    }
    std::vector<uint8_t> blob;
    blob.reserve(1 + kNonceSize + data->bytes.size() + kTagSize);
    blob.push_back(kBlobVersion);
    blob.insert(blob.end(), nonce.begin(), nonce.end());
    blob.insert(blob.end(), data->bytes.begin(), data->bytes.end());
    blob.insert(blob.end(), tag->bytes.begin(), tag->bytes.end());
    return blob;
  }

  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    if (wrapped.size() < 1 + kNonceSize + 1 + kTagSize ||
        wrapped.size() > 1 + kNonceSize + kMaxPlaintext + kTagSize || wrapped[0] != kBlobVersion) {
      return PermissionDeniedError("not a KMIP-wrapped DEK of format version {} ({} bytes)",
                                   kBlobVersion, wrapped.size());
    }
    const auto nonce = wrapped.subspan(1, kNonceSize);
    const auto ciphertext =
        wrapped.subspan(1 + kNonceSize, wrapped.size() - 1 - kNonceSize - kTagSize);
    const auto tag = wrapped.subspan(wrapped.size() - kTagSize);
    Item payload = Item::Structure(
        kRequestPayload,
        {Item::TextString(kUniqueIdentifier, config_.key_id), Parameters(),
         Item::ByteString(kData, ciphertext), Item::ByteString(kIvCounterNonce, nonce),
         Item::ByteString(kAuthenticatedEncryptionAdditionalData, Aad()),
         Item::ByteString(kAuthenticatedEncryptionTag, tag)});
    ASSIGN_OR_RETURN(Item response, Call("Decrypt", kOperationDecrypt, std::move(payload)));
    const Item* data = response.Find(kData);
    if (data == nullptr || data->type != kmip::ItemType::kByteString ||
        data->bytes.size() != ciphertext.size()) {
      return UnavailableError("KMIP server {} answered Decrypt without a {}-byte plaintext",
                              endpoint_text(), ciphertext.size());
    }
    return SecretBytes(data->bytes);  // `response` wipes its copy
  }

  std::string kek_id() const override { return "kmip:" + config_.key_id; }

  std::string Describe() const override {
    return fmt::format("KMIP key {} at {}", Printable(config_.key_id), endpoint_text());
  }

 private:
  std::string endpoint_text() const { return Printable(config_.endpoint, 128); }

  static Item Parameters() {
    return Item::Structure(kCryptographicParameters,
                           {Item::Enumeration(kBlockCipherMode, kBlockCipherModeGcm),
                            Item::Enumeration(kCryptographicAlgorithm, kAlgorithmAes),
                            Item::Integer(kTagLength, static_cast<int32_t>(kTagSize))});
  }

  std::vector<uint8_t> Aad() const {
    std::vector<uint8_t> aad(kAadLabel.begin(), kAadLabel.end());
    aad.push_back(0);
    aad.insert(aad.end(), config_.key_id.begin(), config_.key_id.end());
    return aad;
  }

  // Call sends one request with one batch item and returns the item's Response Payload.
  absl::StatusOr<Item> Call(std::string_view name, uint32_t operation, Item payload) {
    const Item request = Item::Structure(
        kRequestMessage,
        {Item::Structure(kRequestHeader,
                         {Item::Structure(kProtocolVersion,
                                          {Item::Integer(kProtocolVersionMajor, kProtocolMajor),
                                           Item::Integer(kProtocolVersionMinor, kProtocolMinor)}),
                          Item::Integer(kBatchCount, 1)}),
         Item::Structure(kBatchItem,
                         {Item::Enumeration(kOperation, operation), std::move(payload)})});
    std::vector<uint8_t> bytes = kmip::Encode(request);
    SigpipeGuard guard;
    const Clock::time_point deadline = Clock::now() + options_.timeout;
    absl::StatusOr<std::vector<uint8_t>> raw = absl::UnavailableError("not sent");
    // A pooled connection may have been closed by the server meanwhile: on failure, retry once on
    // a fresh one (Encrypt and Decrypt change nothing at the server, so a repeat is harmless).
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool reused = false;
      auto conn = TakeIdle();
      if (conn != nullptr) {
        reused = true;
      } else {
        auto fresh = Connect(deadline);
        if (!fresh.ok()) {
          raw = fresh.status();
          break;
        }
        conn = std::move(*fresh);
      }
      raw = Exchange(*conn, bytes, deadline);
      if (raw.ok()) {
        PutIdle(std::move(conn));
        break;
      }
      if (!reused) break;
    }
    SecureWipe(bytes);
    if (!raw.ok()) return raw.status();
    absl::StatusOr<Item> decoded = kmip::Decode(*raw);
    SecureWipe(*raw);
    if (!decoded.ok()) {
      return UnavailableError("KMIP server {} sent a malformed {} response: {}", endpoint_text(),
                              name, StatusMessage(decoded.status()));
    }
    return CheckResponse(name, operation, *decoded);
  }

  absl::StatusOr<Item> CheckResponse(std::string_view name, uint32_t operation,
                                     Item& response) const {
    auto malformed = [&](std::string_view what) {
      return UnavailableError("KMIP server {} sent a malformed {} response: {}", endpoint_text(),
                              name, what);
    };
    if (response.tag != kResponseMessage || response.type != kmip::ItemType::kStructure) {
      return malformed("not a Response Message");
    }
    const Item* header = response.Find(kResponseHeader);
    if (header == nullptr) return malformed("no Response Header");
    if (response.FindAll(kBatchItem).size() != 1) return malformed("not exactly one Batch Item");
    Item& item = *std::find_if(response.children.begin(), response.children.end(),
                               [](const Item& c) { return c.tag == kBatchItem; });
    const Item* status = item.Find(kResultStatus);
    if (status == nullptr || status->type != kmip::ItemType::kEnumeration) {
      return malformed("no Result Status");
    }
    if (status->integer != kResultStatusSuccess) {
      const Item* reason = item.Find(kResultReason);
      const Item* message = item.Find(kResultMessage);
      const int64_t code = reason != nullptr ? reason->integer : 0x100;
      const std::string text =
          fmt::format("KMIP {} of key {} at {} failed: {}{}{}", name, Printable(config_.key_id),
                      endpoint_text(), ResultReasonName(code), message != nullptr ? ": " : "",
                      message != nullptr ? Printable(message->text(), 256) : "");
      switch (code) {
        case 0x01:  // Item Not Found
          return absl::NotFoundError(text);
        case 0x04:  // Invalid Message
        case 0x05:  // Operation Not Supported
        case 0x06:  // Missing Data
        case 0x07:  // Invalid Field
        case 0x08:  // Feature Not Supported
          return absl::FailedPreconditionError(text);
        default:  // Permission Denied, Authentication Not Successful, Cryptographic Failure,
                  // General Failure (PyKMIP's answer to a failed GCM tag check), ...
          return absl::PermissionDeniedError(text);
      }
    }
    const Item* op = item.Find(kOperation);
    if (op != nullptr && op->integer != operation) return malformed("for another operation");
    auto it = std::find_if(item.children.begin(), item.children.end(),
                           [](const Item& c) { return c.tag == kResponsePayload; });
    if (it == item.children.end() || it->type != kmip::ItemType::kStructure) {
      return malformed("no Response Payload");
    }
    return std::move(*it);
  }

  std::unique_ptr<Connection> TakeIdle() {
    std::lock_guard<std::mutex> lock(mu_);
    while (!idle_.empty()) {
      std::unique_ptr<Connection> c = std::move(idle_.back());
      idle_.pop_back();
      if (Clock::now() - c->last_used < kMaxIdleTime) {
        c->healthy = false;  // until the next exchange on it succeeds
        return c;
      }
    }
    return nullptr;
  }

  void PutIdle(std::unique_ptr<Connection> c) {
    c->last_used = Clock::now();
    c->healthy = true;
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleConnections) idle_.push_back(std::move(c));
  }

  absl::StatusOr<std::unique_ptr<Connection>> Connect(Clock::time_point deadline) const {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    addrinfo* found = nullptr;
    if (int r = getaddrinfo(endpoint_.host.c_str(), endpoint_.port.c_str(), &hints, &found);
        r != 0) {
      return UnavailableError("KMIP server {}: cannot resolve: {}", endpoint_text(),
                              gai_strerror(r));
    }
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> addresses(found, freeaddrinfo);
    std::string last_error = "no address";
    for (const addrinfo* a = found; a != nullptr; a = a->ai_next) {
      const int fd =
          socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
      if (fd < 0) {
        last_error = Errno(errno);
        continue;
      }
      if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
        last_error = Errno(errno);
        close(fd);
        continue;
      }
      if (!Wait(fd, POLLOUT, deadline)) {
        last_error = fmt::format("connect timed out after {} ms", options_.timeout.count());
        close(fd);
        continue;
      }
      int so_error = 0;
      socklen_t len = sizeof(so_error);
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &len);
      if (so_error != 0) {
        last_error = Errno(so_error);
        close(fd);
        continue;
      }
      const int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      return Handshake(fd, deadline);
    }
    return UnavailableError("KMIP server {} unreachable: {}", endpoint_text(), last_error);
  }

  absl::StatusOr<std::unique_ptr<Connection>> Handshake(int fd, Clock::time_point deadline) const {
    SSL* ssl = SSL_new(ctx_.get());
    if (ssl == nullptr) {
      close(fd);
      return absl::InternalError("SSL_new failed");
    }
    auto conn = std::make_unique<Connection>(fd, ssl);
    if (SSL_set_fd(ssl, fd) != 1) return absl::InternalError("SSL_set_fd failed");
    // The server certificate must name the endpoint's host (RFC 6125): its IP address in an
    // iPAddress subjectAltName, or its DNS name.
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (endpoint_.is_ip) {
      if (X509_VERIFY_PARAM_set1_ip_asc(param, endpoint_.host.c_str()) != 1) {
        return absl::InternalError("X509_VERIFY_PARAM_set1_ip_asc failed");
      }
    } else {
      if (SSL_set1_host(ssl, endpoint_.host.c_str()) != 1 ||
          SSL_set_tlsext_host_name(ssl, endpoint_.host.c_str()) != 1) {
        return absl::InternalError("SSL_set1_host failed");
      }
    }
    std::string error;
    if (SslStep(
            *conn, deadline, [&] { return SSL_connect(ssl); }, &error) <= 0) {
      const long verify = SSL_get_verify_result(ssl);
      if (verify != X509_V_OK) {
        error = fmt::format("server certificate not trusted: {}",
                            X509_verify_cert_error_string(verify));
      } else if (error.find("alert") != std::string::npos &&
                 (error.find("unknown ca") != std::string::npos ||
                  error.find("certificate") != std::string::npos ||
                  error.find("access denied") != std::string::npos)) {
        // The server sent an alert after our Certificate message: it refused the client
        // certificate (unknown CA, expired, wrong key usage, ...).
        error = "the server refused the client certificate (" + error + ")";
      }
      return UnavailableError("TLS handshake with KMIP server {} failed: {}", endpoint_text(),
                              error);
    }
    return conn;
  }

  absl::StatusOr<std::vector<uint8_t>> Exchange(Connection& c, std::span<const uint8_t> request,
                                                Clock::time_point deadline) const {
    std::string error;
    size_t sent = 0;
    while (sent < request.size()) {
      const int chunk = static_cast<int>(std::min<size_t>(request.size() - sent, 1 << 20));
      const int n = SslStep(
          c, deadline, [&] { return SSL_write(c.ssl(), request.data() + sent, chunk); }, &error);
      if (n <= 0) {
        return UnavailableError("sending to KMIP server {} failed: {}", endpoint_text(), error);
      }
      sent += static_cast<size_t>(n);
    }
    std::vector<uint8_t> response(kmip::kHeaderSize);
    auto read_fully = [&](size_t from) -> bool {
      while (from < response.size()) {
        const int n = SslStep(
            c, deadline,
            [&] {
              return SSL_read(c.ssl(), response.data() + from,
                              static_cast<int>(response.size() - from));
            },
            &error);
        if (n <= 0) return false;
        from += static_cast<size_t>(n);
      }
      return true;
    };
    if (!read_fully(0)) {
      // The server's rejection of our client certificate shows up here with TLS 1.2 servers
      // that finish the handshake first (an alert instead of a response).
      return UnavailableError("no response from KMIP server {}: {}", endpoint_text(), error);
    }
    auto size = kmip::MessageSize(response);
    if (!size.ok()) {
      return UnavailableError("KMIP server {} sent a malformed response: {}", endpoint_text(),
                              StatusMessage(size.status()));
    }
    response.resize(*size);
    if (!read_fully(kmip::kHeaderSize)) {
      SecureWipe(response);
      return UnavailableError("truncated response from KMIP server {}: {}", endpoint_text(), error);
    }
    return response;
  }

  const KmipConfig config_;
  const Endpoint endpoint_;
  const RemoteOptions options_;
  const SslCtxPtr ctx_;
  std::mutex mu_;
  std::vector<std::unique_ptr<Connection>> idle_;  // guarded by mu_
};

}  // namespace

absl::StatusOr<std::unique_ptr<KekProvider>> NewKmipProvider(const KmipConfig& config,
                                                             const RemoteOptions& options) {
  ASSIGN_OR_RETURN(Endpoint endpoint, ParseEndpoint(config.endpoint));
  if (config.key_id.empty() || config.key_id.size() > 1024) {
    return InvalidArgumentError("KMIP key id must be 1 to 1024 bytes, not {}",
                                config.key_id.size());
  }
  if (options.timeout.count() <= 0) {
    return InvalidArgumentError("KMIP timeout must be positive");
  }
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  if (ctx == nullptr) return InternalError("SSL_CTX_new: {}", TakeOpenSslErrors());
  SSL_CTX* c = ctx.get();
  // KMIP 1.2 Profiles §3.1 (Basic Authentication Suite): TLS 1.2 with mutual authentication.
  if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(c, TLS1_2_VERSION) != 1 ||
      SSL_CTX_set_cipher_list(c, kCipherList) != 1) {
    return InternalError("configuring TLS 1.2: {}", TakeOpenSslErrors());
  }
  SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_use_certificate_chain_file(c, config.client_cert.c_str()) != 1) {
    return InvalidArgumentError("cannot load the KMIP client certificate {}: {}",
                                Printable(config.client_cert, 256), TakeOpenSslErrors());
  }
  if (SSL_CTX_use_PrivateKey_file(c, config.client_key.c_str(), SSL_FILETYPE_PEM) != 1) {
    return InvalidArgumentError("cannot load the KMIP client key {}: {}",
                                Printable(config.client_key, 256), TakeOpenSslErrors());
  }
  if (SSL_CTX_check_private_key(c) != 1) {
    return InvalidArgumentError("the KMIP client key {} does not match the certificate {}",
                                Printable(config.client_key, 256),
                                Printable(config.client_cert, 256));
  }
  if (SSL_CTX_load_verify_locations(c, config.server_ca.c_str(), nullptr) != 1) {
    return InvalidArgumentError("cannot load the KMIP server CA {}: {}",
                                Printable(config.server_ca, 256), TakeOpenSslErrors());
  }
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  return std::unique_ptr<KekProvider>(
      new KmipProvider(config, std::move(endpoint), options, std::move(ctx)));
}

void RegisterKmip() {
  RegisterKekProvider(
      "kmip",
      [](const UriParams& params,
         const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<KekProvider>> {
        RETURN_IF_ERROR(CheckUriParams(params,
                                       {"endpoint", "keyID", "clientCert", "clientKey", "serverCA"},
                                       {}, "kms://kmip"));
        KmipConfig config;
        config.endpoint = params.find("endpoint")->second;
        config.key_id = params.find("keyID")->second;
        config.client_cert = params.find("clientCert")->second;
        config.client_key = params.find("clientKey")->second;
        config.server_ca = params.find("serverCA")->second;
        return NewKmipProvider(config, options);
      });
}

}  // namespace keywarden::byok
