// Test helpers: locating and loading the public test vectors in ../shared/vectors.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "keywarden/secret_bytes.h"

namespace keywarden::testing {

// VectorsDir returns the vectors directory: $KEYWARDEN_VECTORS_DIR if set, else the path
// compiled in (CMake's KEYWARDEN_VECTORS_DIR, by default ../shared/vectors beside the source).
std::filesystem::path VectorsDir();

// LoadJson parses VectorsDir()/relative; fails the current test (ADD_FAILURE) and returns
// null when the file is missing or malformed.
nlohmann::json LoadJson(std::string_view relative);

// ReadText returns the contents of VectorsDir()/relative ("" and a test failure if missing).
std::string ReadText(std::string_view relative);

// Hex decodes hex that a vector file holds (the test fails on malformed hex).
std::vector<uint8_t> Hex(std::string_view hex);
// SecretHex decodes hex straight into a SecretBytes.
SecretBytes SecretHex(std::string_view hex);
// Bytes views a string's characters as bytes.
std::vector<uint8_t> Bytes(std::string_view text);

}  // namespace keywarden::testing
