// A small HTTP(S) client over libcurl for the AWS KMS provider and the S3 DEK store.
//
// Security: TLS peer and host verification are always on (the system CA store); redirects are
// not followed; only http and https are allowed, and plain http only to loopback addresses
// (moto in tests), which ParseEndpoint enforces. Request bodies are not copied by libcurl
// (CURLOPT_POSTFIELDS), so a caller that sends key material wipes its own buffer afterwards;
// responses are captured into a buffer reserved up front so that no partial copy of a response
// is left behind by reallocation when it fits the reservation.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::byok::http {

// Endpoint is a parsed base URL: scheme://host[:port][/base path].
struct Endpoint {
  std::string scheme;     // "https" or "http"
  std::string host;       // as in the URL ("[::1]" keeps its brackets)
  int port = 0;           // 0 = the scheme's default
  std::string base_path;  // "" or "/..." without a trailing slash
  // HostHeader returns the Host header value: host, plus ":port" when not the default.
  std::string HostHeader() const;
  // Url returns scheme://HostHeader() + base_path + path_and_query.
  std::string Url(std::string_view path_and_query) const;
};

// ParseEndpoint accepts http(s)://host[:port][/path] with no user info, query or fragment.
// INVALID_ARGUMENT for anything else, and for http:// to a host other than 127.0.0.1, ::1 or
// localhost (plain http would expose request bodies such as KMS plaintexts).
absl::StatusOr<Endpoint> ParseEndpoint(std::string_view url);

struct Request {
  std::string method = "GET";
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::span<const uint8_t> body;  // not copied; must outlive Send
};

struct Response {
  long status = 0;
  // headers holds the final response's headers with lower-case names.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // Header returns the first value of `name` (lower-case), or "".
  std::string Header(std::string_view name) const;
};

// Client sends requests with one timeout for the whole exchange. Thread-safe: each Send uses its
// own curl easy handle (taken from a small pool, so connections are reused).
class Client {
 public:
  // New makes a client; `max_response` bounds a response body (larger ones fail UNAVAILABLE),
  // `reserve` is what the response buffer reserves before the transfer.
  static absl::StatusOr<std::unique_ptr<Client>> New(std::chrono::milliseconds timeout,
                                                     size_t max_response = 8 << 20,
                                                     size_t reserve = 16 << 10);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  // Send performs `request`. UNAVAILABLE for anything that prevented an HTTP response
  // (connection refused, DNS, TLS verification, timeout, a response over max_response), with
  // libcurl's message; any HTTP status is returned as a Response.
  absl::StatusOr<Response> Send(const Request& request);

 private:
  Client(std::chrono::milliseconds timeout, size_t max_response, size_t reserve);
  void* TakeHandle();
  void ReturnHandle(void* handle);

  const std::chrono::milliseconds timeout_;
  const size_t max_response_;
  const size_t reserve_;
  std::mutex mu_;
  std::vector<void*> idle_;  // CURL* handles, guarded by mu_
};

}  // namespace keywarden::byok::http
