#include "tests/vectors.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"

namespace keywarden::testing {

std::filesystem::path VectorsDir() {
  if (const char* env = std::getenv("KEYWARDEN_VECTORS_DIR"); env != nullptr && *env != '\0') {
    return env;
  }
  return KEYWARDEN_VECTORS_DIR;
}

std::string ReadText(std::string_view relative) {
  const std::filesystem::path path = VectorsDir() / relative;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "cannot open vector file " << path;
    return "";
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

nlohmann::json LoadJson(std::string_view relative) {
  const std::string text = ReadText(relative);
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded()) {
    ADD_FAILURE() << "vector file " << relative << " is not JSON";
    return nullptr;
  }
  return doc;
}

std::vector<uint8_t> Hex(std::string_view hex) {
  auto bytes = crypto::HexDecode(hex);
  if (!bytes.ok()) {
    ADD_FAILURE() << "bad hex in vector: " << StatusMessage(bytes.status());
    return {};
  }
  return *std::move(bytes);
}

SecretBytes SecretHex(std::string_view hex) { return SecretBytes(Hex(hex)); }

std::vector<uint8_t> Bytes(std::string_view text) {
  return std::vector<uint8_t>(text.begin(), text.end());
}

}  // namespace keywarden::testing
