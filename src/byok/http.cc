// libcurl wrapper. See http.h.
#include "src/byok/http.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdlib>

#include "keywarden/status.h"

namespace keywarden::byok::http {
namespace {

std::once_flag g_curl_init;
CURLcode g_curl_init_result = CURLE_OK;

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

struct Capture {
  Response* response;
  size_t max_body;
  bool too_large = false;
};

size_t WriteBody(char* data, size_t size, size_t count, void* user) {
  auto* capture = static_cast<Capture*>(user);
  const size_t n = size * count;
  if (capture->response->body.size() + n > capture->max_body) {
    capture->too_large = true;
    return 0;  // aborts the transfer with CURLE_WRITE_ERROR
  }
  capture->response->body.append(data, n);
  return n;
}

size_t WriteHeader(char* data, size_t size, size_t count, void* user) {
  auto* capture = static_cast<Capture*>(user);
  const size_t n = size * count;
  const std::string_view line(data, n);
  if (line.starts_with("HTTP/")) {
    // A new response (after a 100 Continue, say): keep only the final one's headers.
    capture->response->headers.clear();
    return n;
  }
  const size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    capture->response->headers.emplace_back(Lower(Trim(line.substr(0, colon))),
                                            std::string(Trim(line.substr(colon + 1))));
  }
  return n;
}

}  // namespace

std::string Endpoint::HostHeader() const {
  if (port == 0) return host;
  return host + ":" + std::to_string(port);
}

std::string Endpoint::Url(std::string_view path_and_query) const {
  return scheme + "://" + HostHeader() + base_path + std::string(path_and_query);
}

absl::StatusOr<Endpoint> ParseEndpoint(std::string_view url) {
  Endpoint e;
  std::string_view rest;
  if (url.starts_with("https://")) {
    e.scheme = "https";
    rest = url.substr(8);
  } else if (url.starts_with("http://")) {
    e.scheme = "http";
    rest = url.substr(7);
  } else {
    return InvalidArgumentError("endpoint {}: only https:// (or http:// to loopback) URLs",
                                Printable(url));
  }
  if (rest.find_first_of("?#@ \t\r\n\\") != std::string_view::npos) {
    return InvalidArgumentError("endpoint {}: no user info, query, fragment or spaces",
                                Printable(url));
  }
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    std::string_view path = rest.substr(slash);
    while (path.ends_with('/')) path.remove_suffix(1);
    e.base_path = std::string(path);
  }
  std::string_view port_text;
  if (authority.starts_with('[')) {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) return InvalidArgumentError("endpoint: bad IPv6 host");
    e.host = std::string(authority.substr(0, close + 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return InvalidArgumentError("endpoint: bad IPv6 host");
      port_text = after.substr(1);
    }
  } else {
    const size_t colon = authority.find(':');
    e.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (e.host.empty()) return InvalidArgumentError("endpoint {}: no host", Printable(url));
  for (char c : e.host) {
    const auto u = static_cast<unsigned char>(c);
    if (!(std::isalnum(u) || c == '-' || c == '.' || c == '[' || c == ']' || c == ':')) {
      return InvalidArgumentError("endpoint {}: bad host", Printable(url));
    }
  }
  if (!port_text.empty()) {
    int port = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || ptr != port_text.data() + port_text.size() || port < 1 ||
        port > 65535) {
      return InvalidArgumentError("endpoint {}: bad port", Printable(url));
    }
    e.port = port;
  }
  if (e.scheme == "http" && e.host != "127.0.0.1" && e.host != "[::1]" &&
      Lower(e.host) != "localhost") {
    return InvalidArgumentError("endpoint {}: plain http is allowed to loopback only (use https)",
                                Printable(url));
  }
  return e;
}

std::string Response::Header(std::string_view name) const {
  for (const auto& [n, v] : headers) {
    if (n == name) return v;
  }
  return "";
}

Client::Client(std::chrono::milliseconds timeout, size_t max_response, size_t reserve)
    : timeout_(timeout), max_response_(max_response), reserve_(reserve) {}

absl::StatusOr<std::unique_ptr<Client>> Client::New(std::chrono::milliseconds timeout,
                                                    size_t max_response, size_t reserve) {
  if (timeout.count() <= 0) return InvalidArgumentError("HTTP timeout must be positive");
  std::call_once(g_curl_init, [] { g_curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (g_curl_init_result != CURLE_OK) {
    return InternalError("curl_global_init: {}", curl_easy_strerror(g_curl_init_result));
  }
  return std::unique_ptr<Client>(new Client(timeout, max_response, reserve));
}

Client::~Client() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* Client::TakeHandle() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void Client::ReturnHandle(void* handle) {
  curl_easy_reset(static_cast<CURL*>(handle));
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() < 16) {
    idle_.push_back(handle);
    return;
  }
  curl_easy_cleanup(static_cast<CURL*>(handle));
}

absl::StatusOr<Response> Client::Send(const Request& request) {
  CURL* curl = static_cast<CURL*>(TakeHandle());
  if (curl == nullptr) return UnavailableError("curl_easy_init failed");
  struct HandleGuard {
    Client* client;
    CURL* curl;
    curl_slist* headers = nullptr;
    ~HandleGuard() {
      curl_slist_free_all(headers);
      client->ReturnHandle(curl);
    }
  } guard{this, curl};

  Response response;
  response.body.reserve(reserve_);
  Capture capture{&response, max_response_};
  char error[CURL_ERROR_SIZE] = {0};

  for (const auto& [name, value] : request.headers) {
    const std::string line = name + ": " + value;
    curl_slist* next = curl_slist_append(guard.headers, line.c_str());
    if (next == nullptr) return InternalError("curl_slist_append failed");
    guard.headers = next;
  }
  // No "Expect: 100-continue" round trip, and no default Content-Type of curl's own.
  for (const char* suppress : {"Expect:", "Accept:"}) {
    curl_slist* next = curl_slist_append(guard.headers, suppress);
    if (next == nullptr) return InternalError("curl_slist_append failed");
    guard.headers = next;
  }
  const long timeout_ms = static_cast<long>(timeout_.count());
  bool ok = curl_easy_setopt(curl, CURLOPT_URL, request.url.c_str()) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_HTTPHEADER, guard.headers) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, error) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, &WriteBody) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_WRITEDATA, &capture) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, &WriteHeader) == CURLE_OK &&
            curl_easy_setopt(curl, CURLOPT_HEADERDATA, &capture) == CURLE_OK;
  if (ok) {
    if (request.method == "GET") {
      ok = curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L) == CURLE_OK;
    } else if (request.method == "HEAD") {
      ok = curl_easy_setopt(curl, CURLOPT_NOBODY, 1L) == CURLE_OK;
    } else {
      // POST, PUT, DELETE: the body (possibly empty) is sent as is; CUSTOMREQUEST sets the verb.
      ok = curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE_LARGE,
                            static_cast<curl_off_t>(request.body.size())) == CURLE_OK &&
           curl_easy_setopt(
               curl, CURLOPT_POSTFIELDS,
               request.body.empty() ? "" : reinterpret_cast<const char*>(request.body.data())) ==
               CURLE_OK &&
           curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, request.method.c_str()) == CURLE_OK;
    }
  }
  if (!ok) return InternalError("configuring libcurl failed");

  const CURLcode rc = curl_easy_perform(curl);
  if (rc != CURLE_OK) {
    if (capture.too_large) {
      return UnavailableError("{} {}: the response exceeds {} bytes", request.method,
                              Printable(request.url, 200), max_response_);
    }
    return UnavailableError("{} {}: {}", request.method, Printable(request.url, 200),
                            error[0] != 0 ? error : curl_easy_strerror(rc));
  }
  curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &response.status);
  return response;
}

}  // namespace keywarden::byok::http
