// The XML that S3 (and GCS's XML API) and Azure Blob answer with, parsed with libxml2: error
// bodies and list pages. Shared by the S3 and Azure Blob DEK stores, and fuzzed
// (fuzz/byok_xml_fuzzer.cc): these bytes come from the network.
//
// Parsing never touches the network (XML_PARSE_NONET); a document with a DTD (which neither
// service sends, and which could only declare entities) is refused, so no entity is expanded;
// the body is read as UTF-8 whatever it declares; bodies over kMaxXmlBody are refused before
// parsing. So every text a parser returns is at most as long as the body.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::byok::xml {

inline constexpr size_t kMaxXmlBody = 16 << 20;

// ErrorFields are an error body's <Code> and <Message> (children of the root element), each ""
// when absent or when the body is not XML.
struct ErrorFields {
  std::string code;
  std::string message;
};
ErrorFields ParseError(std::string_view body);

// S3ListPage is one ListObjectsV2 page (ListBucketResult): the Contents/Key values, IsTruncated
// and NextContinuationToken.
struct S3ListPage {
  std::vector<std::string> keys;
  bool truncated = false;
  std::string next_token;
};
// ParseS3ListPage: UNAVAILABLE ("S3: ...") for a body that is not XML or whose root is not
// ListBucketResult (a proxy's page, a truncated answer).
absl::StatusOr<S3ListPage> ParseS3ListPage(std::string_view body);

// AzureListPage is one List Blobs page (EnumerationResults): Blobs/Blob/Name values and
// NextMarker.
struct AzureListPage {
  std::vector<std::string> names;
  std::string next_marker;
};
// ParseAzureListPage: UNAVAILABLE ("Azure Blob: ...") for a body that is not XML or whose root
// is not EnumerationResults.
absl::StatusOr<AzureListPage> ParseAzureListPage(std::string_view body);

}  // namespace keywarden::byok::xml
