// XML bodies of S3 and Azure Blob. See xml.h.
#include "src/byok/xml.h"

#include <libxml/parser.h>
#include <libxml/tree.h>

#include <memory>
#include <mutex>

#include "keywarden/status.h"

namespace keywarden::byok::xml {
namespace {

struct DocFree {
  void operator()(xmlDoc* doc) const { xmlFreeDoc(doc); }
};
using Doc = std::unique_ptr<xmlDoc, DocFree>;

// Read parses `body`, or returns null (not XML, or too large).
Doc Read(std::string_view body) {
  if (body.empty() || body.size() > kMaxXmlBody) return nullptr;
  // libxml2's global state, once, before threads parse concurrently.
  static std::once_flag init;
  std::call_once(init, [] { xmlInitParser(); });
  // UTF-8 whatever the document declares (S3 and Azure answer in UTF-8).
  Doc doc(xmlReadMemory(body.data(), static_cast<int>(body.size()), "response.xml", "UTF-8",
                        XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING));
  // Neither service sends a DTD; one could only declare entities (amplification), so refuse it.
  if (doc != nullptr && (doc->intSubset != nullptr || doc->extSubset != nullptr)) return nullptr;
  return doc;
}

bool IsElement(const xmlNode* node, std::string_view name) {
  return node->type == XML_ELEMENT_NODE && node->name != nullptr &&
         name == reinterpret_cast<const char*>(node->name);
}

// Text returns the text content of an element, or "".
std::string Text(const xmlNode* node) {
  xmlChar* text = xmlNodeGetContent(node);
  if (text == nullptr) return "";
  std::string out(reinterpret_cast<const char*>(text));
  xmlFree(text);
  return out;
}

}  // namespace

ErrorFields ParseError(std::string_view body) {
  ErrorFields fields;
  const Doc doc = Read(body);
  if (doc == nullptr) return fields;
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  for (const xmlNode* n = root != nullptr ? root->children : nullptr; n != nullptr; n = n->next) {
    if (IsElement(n, "Code")) fields.code = Text(n);
    if (IsElement(n, "Message")) fields.message = Text(n);
  }
  return fields;
}

absl::StatusOr<S3ListPage> ParseS3ListPage(std::string_view body) {
  const Doc doc = Read(body);
  if (doc == nullptr) return UnavailableError("S3: malformed ListObjectsV2 response");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || !IsElement(root, "ListBucketResult")) {
    return UnavailableError("S3: ListObjectsV2 response without ListBucketResult");
  }
  S3ListPage page;
  for (const xmlNode* n = root->children; n != nullptr; n = n->next) {
    if (IsElement(n, "Contents")) {
      for (const xmlNode* c = n->children; c != nullptr; c = c->next) {
        if (IsElement(c, "Key")) page.keys.push_back(Text(c));
      }
    } else if (IsElement(n, "IsTruncated")) {
      page.truncated = Text(n) == "true";
    } else if (IsElement(n, "NextContinuationToken")) {
      page.next_token = Text(n);
    }
  }
  return page;
}

absl::StatusOr<AzureListPage> ParseAzureListPage(std::string_view body) {
  const Doc doc = Read(body);
  if (doc == nullptr) return UnavailableError("Azure Blob: malformed List Blobs response");
  const xmlNode* root = xmlDocGetRootElement(doc.get());
  if (root == nullptr || !IsElement(root, "EnumerationResults")) {
    return UnavailableError("Azure Blob: List Blobs response without EnumerationResults");
  }
  AzureListPage page;
  for (const xmlNode* n = root->children; n != nullptr; n = n->next) {
    if (IsElement(n, "Blobs")) {
      for (const xmlNode* blob = n->children; blob != nullptr; blob = blob->next) {
        if (!IsElement(blob, "Blob")) continue;
        for (const xmlNode* c = blob->children; c != nullptr; c = c->next) {
          if (IsElement(c, "Name")) page.names.push_back(Text(c));
        }
      }
    } else if (IsElement(n, "NextMarker")) {
      page.next_marker = Text(n);
    }
  }
  return page;
}

}  // namespace keywarden::byok::xml
