// Test helpers that read and write parts of files (disk images, FUSE-served volumes) and make
// reproducible pseudo-random contents for them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace keywarden::testing {

// RandomText returns `n` pseudo-random bytes, the same for the same `seed` (std::mt19937_64):
// test data, not key material.
std::string RandomText(size_t n, uint64_t seed);

// WriteAt writes `data` into the existing file `path` at byte `offset` (without truncating it)
// and flushes. An error is a fatal failure, which returns from WriteAt only.
void WriteAt(const std::filesystem::path& path, uint64_t offset, const std::string& data);

// ReadAt returns `n` bytes of `path` from byte `offset`; fails the current test when fewer can be
// read (the missing bytes are then zeros).
std::string ReadAt(const std::filesystem::path& path, uint64_t offset, size_t n);

}  // namespace keywarden::testing
