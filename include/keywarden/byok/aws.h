// AWS KMS as a KEK provider and S3 (or an S3-compatible store such as GCS's XML API with HMAC
// keys) as a DEK store, over HTTPS with AWS Signature Version 4. docs/byok-aws.md.
//
//   kms://aws?keyID=ID&region=R&accessKeyID=A&accessKey=S[&sessionToken=T][&endpoint=URL]
//   storage://aws?bucket=B&region=R&accessKeyID=A&accessKey=S[&sessionToken=T][&endpoint=URL]
//            [&prefix=P]
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::byok {

// AwsCredentials are an access key pair, with the session token of temporary (STS)
// credentials if any. The secret never appears in logs, errors or Describe().
struct AwsCredentials {
  std::string access_key_id;
  SecretBytes secret_access_key;
  std::string session_token;
};

// AwsKmsConfig names one symmetric KMS key (key id, key ARN, alias name or alias ARN).
struct AwsKmsConfig {
  std::string key_id;
  std::string region;
  AwsCredentials credentials;
  // endpoint: empty = https://kms.REGION.amazonaws.com; http:// only to loopback (moto).
  std::string endpoint;
};

// S3Config names a bucket and the prefix under which the DEKs live, one object per id:
// PREFIX + "key-" + the id with every byte but A-Z a-z 0-9 - . _ written ~XY (percent-encoding
// with '~' for '%', so object names need no escaping in URLs; docs/byok-aws.md).
struct S3Config {
  std::string bucket, region;
  AwsCredentials credentials;
  // endpoint: empty = https://s3.REGION.amazonaws.com with virtual-hosted-style requests
  // (BUCKET.s3.REGION.amazonaws.com; path-style when the bucket name has a '.'); when set,
  // path-style requests to it (MinIO, moto, https://storage.googleapis.com).
  std::string endpoint;
  std::string prefix = "keywarden/deks/";
  // list_page_size is ListObjectsV2's max-keys (1 to 1000).
  int list_page_size = 1000;
};

// NewAwsKmsProvider returns a provider that wraps with KMS Encrypt and unwraps with KMS Decrypt
// (KeyId given, so a blob made under another key is refused), both under the encryption
// context {"keywarden": "wrapped-dek-v1"}. kek_id() is "aws-kms:" + key_id. INVALID_ARGUMENT for
// a bad configuration; no request is sent before the first Wrap/Unwrap.
absl::StatusOr<std::unique_ptr<KekProvider>> NewAwsKmsProvider(AwsKmsConfig config,
                                                               const RemoteOptions& options);

// NewS3DekStore returns a DekStore on an S3 bucket whose conditional writes (PUT with
// If-None-Match: * / If-Match: ETag) decide races. INVALID_ARGUMENT for a bad configuration; no
// request is sent before the first operation.
absl::StatusOr<std::unique_ptr<DekStore>> NewS3DekStore(S3Config config,
                                                        const RemoteOptions& options);

// AwsKmsConfigFromParams and S3ConfigFromParams build configurations from a URI's decoded
// query parameters (the forms above). INVALID_ARGUMENT naming the missing or unknown parameter
// (never quoting accessKey).
absl::StatusOr<AwsKmsConfig> AwsKmsConfigFromParams(
    const std::map<std::string, std::string>& params);
absl::StatusOr<S3Config> S3ConfigFromParams(const std::map<std::string, std::string>& params);

// RegisterAws registers "aws" for kms:// and storage:// URIs with byok's registry
// (RegisterKekProvider / RegisterDekStore); RegisterAllProviders calls it.
void RegisterAws();

}  // namespace keywarden::byok
