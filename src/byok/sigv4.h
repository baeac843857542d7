// AWS Signature Version 4 (SigV4) request signing, for the AWS KMS provider and the S3 DEK store.
//
// Implements "Signature Version 4 signing process" (AWS General Reference): task 1 the
// canonical request, task 2 the string to sign, task 3 the signing key (an HMAC-SHA256 chain
// over date, region, service and "aws4_request") and the signature, task 4 the Authorization
// header; with the Amazon S3 rules of "Authenticating Requests (AWS Signature Version 4)"
// (S3 API reference): the path is neither normalized nor encoded a second time, and the
// payload hash travels in the x-amz-content-sha256 header. docs/byok-aws.md.
//
// Security: the secret access key and the derived signing key are held in SecretBytes and never
// appear in the canonical request, the string to sign or any error message.
#pragma once

#include <cstdint>
#include <ctime>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::byok::sigv4 {

// kEmptyPayloadHash is the hex SHA-256 of zero bytes.
inline constexpr std::string_view kEmptyPayloadHash =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

// UriEncode percent-encodes `text` with the SigV4 rules: every byte except the unreserved
// characters A-Z a-z 0-9 '-' '.' '_' '~' becomes %XY with upper-case hex; '/' is kept as is when
// `keep_slash` (object key names in S3 paths) and encoded otherwise (query keys and values).
std::string UriEncode(std::string_view text, bool keep_slash);

// UriDecode reverses percent-encoding ("+" stays "+"); INVALID_ARGUMENT for a malformed escape.
absl::StatusOr<std::string> UriDecode(std::string_view text);

// NormalizePath removes "." and ".." segments and collapses repeated slashes (RFC 3986 §5.2.4),
// as SigV4 asks for every service but S3. The result starts with '/'.
std::string NormalizePath(std::string_view path);

// Request is what SigV4 signs.
struct Request {
  std::string method;  // "GET", "PUT", "POST", ...
  // path is the absolute path as it appears in the request line, already percent-encoded
  // (e.g. UriEncode(key, true)); "/" for the service root.
  std::string path;
  // query holds the decoded query parameters in any order; the canonical form sorts and encodes
  // them, and the same string is what goes on the wire (CanonicalQueryString).
  std::vector<std::pair<std::string, std::string>> query;
  // headers are the headers to sign, names in any case; a name given more than once has its
  // values joined with ',' in the order given. Must include "host".
  std::vector<std::pair<std::string, std::string>> headers;
  // payload_hash is the lower-case hex SHA-256 of the body (or "UNSIGNED-PAYLOAD" for S3).
  std::string payload_hash = std::string(kEmptyPayloadHash);
};

// Options say which of SigV4's service rules apply.
struct Options {
  // s3 selects the Amazon S3 rules: the path is signed as given (no normalization, no second
  // encoding). Otherwise the path is normalized and each segment encoded again.
  bool s3 = false;
};

// CanonicalQueryString returns the sorted, encoded query string ("" for no parameters).
std::string CanonicalQueryString(const std::vector<std::pair<std::string, std::string>>& query);

// CanonicalRequest returns task 1's string. `signed_headers` receives the ';'-joined sorted
// lower-case header names when non-null.
std::string CanonicalRequest(const Request& request, const Options& options,
                             std::string* signed_headers = nullptr);

// Scope is the credential scope DATE/REGION/SERVICE/aws4_request.
struct Scope {
  std::string date;  // YYYYMMDD
  std::string region;
  std::string service;
  std::string ToString() const;
};

// StringToSign returns task 2's string for an ISO 8601 basic `amz_date` (YYYYMMDDTHHMMSSZ).
std::string StringToSign(std::string_view amz_date, const Scope& scope,
                         std::string_view canonical_request);

// SigningKey derives task 3's key: HMAC("AWS4" + secret, date) → region → service →
// "aws4_request". INVALID_ARGUMENT for a secret shorter than 12 bytes (the HMAC layer refuses
// keys under 128 bits; AWS and GCS HMAC secrets are 40 characters).
absl::StatusOr<SecretBytes> SigningKey(const SecretBytes& secret_access_key, const Scope& scope);

// Signature returns the lower-case hex HMAC-SHA256 of `string_to_sign` under `signing_key`.
absl::StatusOr<std::string> Signature(const SecretBytes& signing_key,
                                      std::string_view string_to_sign);

// AmzDate formats `time` (seconds since the epoch, UTC) as YYYYMMDDTHHMMSSZ.
std::string AmzDate(std::time_t time);

// Credentials sign requests. The session token, if any, is sent as X-Amz-Security-Token and
// signed.
struct Credentials {
  std::string access_key_id;
  const SecretBytes* secret_access_key = nullptr;  // not owned
  std::string session_token;
};

// Sign adds X-Amz-Date (and X-Amz-Security-Token, and for S3 x-amz-content-sha256) to
// `request.headers`, then computes the signature over all of `request.headers` and returns the
// Authorization header's value. `now` is injected for tests. INVALID_ARGUMENT when the request
// has no host header or the credentials are unusable.
absl::StatusOr<std::string> Sign(Request& request, const Credentials& credentials,
                                 std::string_view region, std::string_view service,
                                 const Options& options, std::time_t now);

}  // namespace keywarden::byok::sigv4
