// The KMIP KEK provider: wraps and unwraps at a KMIP server (KMIP 1.4 Encrypt/Decrypt with
// AES-GCM, TTLV over TLS 1.2 with a client certificate). The KEK never leaves the server.
// docs/byok-kmip.md describes the protocol use and the wrapped-blob layout.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"

namespace keywarden::byok {

// KmipConfig says where the KEK is and how to authenticate. The URI form is
//   kms://kmip?endpoint=HOST:PORT&keyID=UID&clientCert=FILE&clientKey=FILE&serverCA=FILE
struct KmipConfig {
  // endpoint is "host:port" (an IPv6 address in brackets: "[::1]:5696"). The server certificate
  // must name `host` (subjectAltName DNS or IP).
  std::string endpoint;
  // key_id is the KMIP Unique Identifier of an active AES key (128, 192 or 256 bits) whose
  // Cryptographic Usage Mask allows Encrypt and Decrypt.
  std::string key_id;
  // client_cert, client_key, server_ca are PEM file paths: the client's certificate (chain) and
  // private key, and the CA certificates that verify the server.
  std::string client_cert;
  std::string client_key;
  std::string server_ca;
};

// NewKmipProvider loads the certificates and key and returns a provider; it does not contact the
// server (the first Wrap or Unwrap does). INVALID_ARGUMENT for a malformed endpoint, an empty key
// id, or certificate/key files that cannot be loaded or do not match.
//
// The provider keeps a small pool of TLS connections (a connection the server closed is replaced
// transparently: Encrypt and Decrypt are idempotent). Every network step is bounded by
// options.timeout. Errors: UNAVAILABLE when the server cannot be reached or the TLS handshake
// fails (unknown server CA, wrong host name, client certificate refused); NOT_FOUND when the
// server does not know the key (Item Not Found); PERMISSION_DENIED for the server's other
// refusals (Permission Denied, Cryptographic Failure, a ciphertext that fails authentication,
// which PyKMIP reports as General Failure) with the KMIP reason and the server's message;
// PERMISSION_DENIED for a wrapped blob that is not of this provider's format. Thread-safe.
absl::StatusOr<std::unique_ptr<KekProvider>> NewKmipProvider(const KmipConfig& config,
                                                             const RemoteOptions& options = {});

// RegisterKmip makes OpenKekProvider open
//   kms://kmip?endpoint=HOST:PORT&keyID=UID&clientCert=FILE&clientKey=FILE&serverCA=FILE
// (all five parameters required, no others) with NewKmipProvider. RegisterAllProviders calls it.
void RegisterKmip();

}  // namespace keywarden::byok
