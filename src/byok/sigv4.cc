// AWS Signature Version 4. See sigv4.h and docs/byok-aws.md.
#include "src/byok/sigv4.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <map>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::byok::sigv4 {
namespace {

bool IsUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// TrimAll trims leading and trailing whitespace and collapses inner runs of spaces and tabs to
// one space (task 1, "canonical headers": Trimall).
std::string TrimAll(std::string_view value) {
  std::string out;
  bool pending_space = false;
  for (char c : value) {
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<SecretBytes> Hmac(const SecretBytes& key, std::string_view data) {
  ASSIGN_OR_RETURN(auto hmac, crypto::HmacSha256::New(key));
  ASSIGN_OR_RETURN(auto tag, hmac->Compute(AsBytes(data)));
  SecretBytes out(std::span<const uint8_t>(tag.data(), tag.size()));
  SecureWipe(std::span<uint8_t>(tag.data(), tag.size()));
  return out;
}

}  // namespace

std::string UriEncode(std::string_view text, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() * 3);
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (IsUnreserved(c) || (keep_slash && c == '/')) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
  return out;
}

absl::StatusOr<std::string> UriDecode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) return InvalidArgumentError("truncated percent escape");
    const int hi = hex(text[i + 1]);
    const int lo = hex(text[i + 2]);
    if (hi < 0 || lo < 0) return InvalidArgumentError("malformed percent escape");
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::string NormalizePath(std::string_view path) {
  std::vector<std::string_view> segments;
  size_t start = 0;
  bool trailing_slash = false;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view segment = path.substr(start, end - start);
    const bool last = end == path.size();
    if (segment == "..") {
      if (!segments.empty()) segments.pop_back();
      trailing_slash = last;
    } else if (segment == "." || segment.empty()) {
      trailing_slash = last && (segment == "." || !segments.empty());
    } else {
      segments.push_back(segment);
      trailing_slash = false;
    }
    start = end + 1;
  }
  std::string out;
  for (std::string_view s : segments) {
    out.push_back('/');
    out.append(s);
  }
  if (out.empty()) return "/";
  if (trailing_slash) out.push_back('/');
  return out;
}

std::string CanonicalQueryString(const std::vector<std::pair<std::string, std::string>>& query) {
  std::vector<std::pair<std::string, std::string>> encoded;
  encoded.reserve(query.size());
  for (const auto& [k, v] : query) encoded.emplace_back(UriEncode(k, false), UriEncode(v, false));
  std::sort(encoded.begin(), encoded.end());
  std::string out;
  for (const auto& [k, v] : encoded) {
    if (!out.empty()) out.push_back('&');
    out += k;
    out.push_back('=');
    out += v;
  }
  return out;
}

std::string CanonicalRequest(const Request& request, const Options& options,
                             std::string* signed_headers) {
  // Header names sorted by their lower-case form (a std::map orders them by byte value, which
  // is what SigV4 asks for); repeated names keep their values in order, joined by ','.
  std::map<std::string, std::string> headers;
  for (const auto& [name, value] : request.headers) {
    std::string& joined = headers[Lower(name)];
    if (!joined.empty()) joined.push_back(',');
    joined += TrimAll(value);
  }
  std::string out = request.method;
  out.push_back('\n');
  out += options.s3 ? request.path : UriEncode(NormalizePath(request.path), true);
  out.push_back('\n');
  out += CanonicalQueryString(request.query);
  out.push_back('\n');
  std::string names;
  for (const auto& [name, value] : headers) {
    out += name;
    out.push_back(':');
    out += value;
    out.push_back('\n');
    if (!names.empty()) names.push_back(';');
    names += name;
  }
  out.push_back('\n');
  out += names;
  out.push_back('\n');
  out += request.payload_hash;
  if (signed_headers != nullptr) *signed_headers = std::move(names);
  return out;
}

std::string Scope::ToString() const {
  return date + "/" + region + "/" + service + "/aws4_request";
}

std::string StringToSign(std::string_view amz_date, const Scope& scope,
                         std::string_view canonical_request) {
  const auto digest = crypto::Sha256({AsBytes(canonical_request)});
  return fmt::format("AWS4-HMAC-SHA256\n{}\n{}\n{}", amz_date, scope.ToString(),
                     crypto::HexEncode(digest));
}

absl::StatusOr<SecretBytes> SigningKey(const SecretBytes& secret_access_key, const Scope& scope) {
  const InsecureSecretAccess access = InsecureSecretAccess::Get();
  const auto secret = secret_access_key.Reveal(access);
  if (secret.size() < 12) {
    return InvalidArgumentError("the secret access key is shorter than 12 characters");
  }
  SecretBytes k_secret(4 + secret.size());
  auto k = k_secret.MutableReveal(access);
  std::copy_n("AWS4", 4, k.begin());
  std::copy(secret.begin(), secret.end(), k.begin() + 4);
  ASSIGN_OR_RETURN(SecretBytes k_date, Hmac(k_secret, scope.date));
  ASSIGN_OR_RETURN(SecretBytes k_region, Hmac(k_date, scope.region));
  ASSIGN_OR_RETURN(SecretBytes k_service, Hmac(k_region, scope.service));
  return Hmac(k_service, "aws4_request");
}

absl::StatusOr<std::string> Signature(const SecretBytes& signing_key,
                                      std::string_view string_to_sign) {
  ASSIGN_OR_RETURN(auto hmac, crypto::HmacSha256::New(signing_key));
  ASSIGN_OR_RETURN(auto tag, hmac->Compute(AsBytes(string_to_sign)));
  return crypto::HexEncode(tag);
}

std::string AmzDate(std::time_t time) {
  std::tm tm{};
  gmtime_r(&time, &tm);
  std::array<char, 32> buf{};
  const size_t n = std::strftime(buf.data(), buf.size(), "%Y%m%dT%H%M%SZ", &tm);
  return std::string(buf.data(), n);
}

absl::StatusOr<std::string> Sign(Request& request, const Credentials& credentials,
                                 std::string_view region, std::string_view service,
                                 const Options& options, std::time_t now) {
  if (credentials.secret_access_key == nullptr || credentials.access_key_id.empty()) {
    return InvalidArgumentError("SigV4: no credentials");
  }
  const bool has_host = std::any_of(request.headers.begin(), request.headers.end(),
                                    [](const auto& h) { return Lower(h.first) == "host"; });
  if (!has_host) return InvalidArgumentError("SigV4: the request has no host header");
  const std::string amz_date = AmzDate(now);
  request.headers.emplace_back("X-Amz-Date", amz_date);
  if (options.s3) request.headers.emplace_back("x-amz-content-sha256", request.payload_hash);
  if (!credentials.session_token.empty()) {
    request.headers.emplace_back("X-Amz-Security-Token", credentials.session_token);
  }
  const Scope scope{amz_date.substr(0, 8), std::string(region), std::string(service)};
  std::string signed_headers;
  const std::string canonical = CanonicalRequest(request, options, &signed_headers);
  ASSIGN_OR_RETURN(SecretBytes key, SigningKey(*credentials.secret_access_key, scope));
  ASSIGN_OR_RETURN(std::string signature, Signature(key, StringToSign(amz_date, scope, canonical)));
  return fmt::format("AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
                     credentials.access_key_id, scope.ToString(), signed_headers, signature);
}

}  // namespace keywarden::byok::sigv4
