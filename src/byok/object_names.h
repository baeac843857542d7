// Object names for DEK ids in object stores (S3, GCS, Azure Blob): PREFIX + "key-" + EncodeId(id).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace keywarden::byok {

// EncodeObjectId writes every byte but A-Z a-z 0-9 '-' '.' '_' as "~XY" (upper-case hex), '~'
// included: percent-encoding with '~' as the escape, so names hold unreserved characters only
// and appear in URLs unescaped (servers that re-encode paths still verify signatures), and
// Constellation-style ids keep their plain names.
std::string EncodeObjectId(std::string_view id);
// DecodeObjectId reverses EncodeObjectId; nullopt for a name it would not have made.
std::optional<std::string> DecodeObjectId(std::string_view name);

}  // namespace keywarden::byok
