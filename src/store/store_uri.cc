#include <charconv>
#include <string>

#include "keywarden/status.h"
#include "keywarden/store/etcd_kek_store.h"
#include "keywarden/store/kek_store.h"
#include "keywarden/store/sqlite_kek_store.h"

namespace keywarden::store {
namespace {

constexpr std::string_view kSqliteScheme = "sqlite://";
constexpr std::string_view kEtcdScheme = "etcd://";

// PercentDecode decodes %XX escapes (RFC 3986 §2.1).
absl::StatusOr<std::string> PercentDecode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    unsigned value = 0;
    if (i + 2 >= text.size() ||
        std::from_chars(text.data() + i + 1, text.data() + i + 3, value, 16).ptr !=
            text.data() + i + 3) {
      return InvalidArgumentError("bad percent-escape in store URI");
    }
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

absl::Status ParseEtcdUri(std::string_view rest, StoreUri& uri) {
  const size_t question = rest.find('?');
  const std::string_view hosts = rest.substr(0, question);
  size_t start = 0;
  while (start <= hosts.size()) {
    const size_t comma = hosts.find(',', start);
    const std::string_view endpoint = hosts.substr(
        start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    RETURN_IF_ERROR(ValidateEtcdEndpoint(endpoint));
    uri.etcd_endpoints.emplace_back(endpoint);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  std::string_view query =
      question == std::string_view::npos ? std::string_view() : rest.substr(question + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const size_t eq = pair.find('=');
    if (eq == std::string_view::npos) {
      return InvalidArgumentError("store URI parameter \"{}\" has no value", Printable(pair));
    }
    const std::string_view name = pair.substr(0, eq);
    ASSIGN_OR_RETURN(std::string value, PercentDecode(pair.substr(eq + 1)));
    if (name == "ca") {
      uri.etcd_ca = value;
    } else if (name == "cert") {
      uri.etcd_cert = value;
    } else if (name == "key") {
      uri.etcd_key = value;
    } else if (name == "prefix") {
      uri.etcd_prefix = value;
    } else {
      return InvalidArgumentError(
          "unknown etcd store URI parameter \"{}\" (known: ca, cert, key, prefix)",
          Printable(name));
    }
  }
  if (uri.etcd_cert.empty() != uri.etcd_key.empty()) {
    return InvalidArgumentError("etcd store URI: cert and key must be given together");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StoreUri> ParseStoreUri(std::string_view text) {
  StoreUri uri;
  if (text.starts_with(kSqliteScheme)) {
    uri.kind = StoreUri::Kind::kSqlite;
    ASSIGN_OR_RETURN(uri.sqlite_path, PercentDecode(text.substr(kSqliteScheme.size())));
    if (uri.sqlite_path.empty()) return InvalidArgumentError("sqlite store URI has no path");
    return uri;
  }
  if (text.starts_with(kEtcdScheme)) {
    uri.kind = StoreUri::Kind::kEtcd;
    RETURN_IF_ERROR(ParseEtcdUri(text.substr(kEtcdScheme.size()), uri));
    return uri;
  }
  return InvalidArgumentError(
      "store URI \"{}\" is not sqlite://PATH or etcd://HOST:PORT[,HOST:PORT...]", Printable(text));
}

absl::StatusOr<std::unique_ptr<KekStore>> OpenKekStore(std::string_view text,
                                                       const StoreOptions& options) {
  ASSIGN_OR_RETURN(StoreUri uri, ParseStoreUri(text));
  if (uri.kind == StoreUri::Kind::kSqlite) return NewSqliteKekStore(uri.sqlite_path, options);
  EtcdOptions etcd;
  etcd.endpoints = std::move(uri.etcd_endpoints);
  etcd.ca_file = std::move(uri.etcd_ca);
  etcd.cert_file = std::move(uri.etcd_cert);
  etcd.key_file = std::move(uri.etcd_key);
  etcd.prefix = std::move(uri.etcd_prefix);
  etcd.store = options;
  return NewEtcdKekStore(etcd);
}

}  // namespace keywarden::store
