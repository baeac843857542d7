// The Azure Blob DEK store of user-managed mode, with SharedKey authorization:
//   storage://azure?account=A&container=C&key=BASE64[&endpoint=URL][&prefix=keywarden/deks/]
// (endpoint defaults to https://A.blob.core.windows.net; Azurite's is
// http://127.0.0.1:PORT/devstoreaccount1). Wrapped DEKs are block blobs named
// PREFIX + "key-" + encoded id; conditional writes use If-None-Match: * and If-Match: ETag.
// docs/byok.md, "Azure Blob".
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::byok {

struct AzureBlobConfig {
  std::string account;
  std::string container;
  SecretBytes key;       // the storage account key (decoded from base64)
  std::string endpoint;  // empty: https://ACCOUNT.blob.core.windows.net
  std::string prefix = "keywarden/deks/";
};

// NewAzureBlobDekStore checks the configuration (nothing is sent).
absl::StatusOr<std::unique_ptr<DekStore>> NewAzureBlobDekStore(AzureBlobConfig config,
                                                               const RemoteOptions& options);

// CreateAzureContainer creates the container (private access); OK if it exists already.
absl::Status CreateAzureContainer(const AzureBlobConfig& config, const RemoteOptions& options);

// AzureSharedKeySignature returns the SharedKey signature of a request
// (base64(HMAC-SHA256(key, string-to-sign))), for tests against published examples.
// `headers` are the request's headers (any case); `path` is the URL path as sent;
// `query` the decoded query parameters.
absl::StatusOr<std::string> AzureSharedKeySignature(
    const SecretBytes& key, std::string_view account, std::string_view method,
    std::string_view path, const std::vector<std::pair<std::string, std::string>>& query,
    const std::vector<std::pair<std::string, std::string>>& headers);

// RegisterAzure registers `storage://azure`.
void RegisterAzure();

}  // namespace keywarden::byok
