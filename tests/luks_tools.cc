#include "tests/luks_tools.h"

#include <nettle/xts.h>

#include <cstring>
#include <fstream>

#include "keywarden/crypto/sha256.h"

namespace keywarden::testing {

std::string NettleXtsDecryptSector(const std::string& key, uint64_t iv,
                                   const std::string& ciphertext) {
  if (key.size() != 64 || ciphertext.size() < XTS_BLOCK_SIZE) return "";
  xts_aes256_key ctx;
  xts_aes256_set_decrypt_key(&ctx, reinterpret_cast<const uint8_t*>(key.data()));
  uint8_t tweak[XTS_BLOCK_SIZE] = {};
  for (int i = 0; i < 8; ++i) tweak[i] = static_cast<uint8_t>(iv >> (8 * i));
  std::string out(ciphertext.size(), '\0');
  xts_aes256_decrypt_message(&ctx, tweak, ciphertext.size(), reinterpret_cast<uint8_t*>(out.data()),
                             reinterpret_cast<const uint8_t*>(ciphertext.data()));
  return out;
}

namespace {

uint64_t ReadBe64(const std::string& s, size_t at) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(s[at + i]);
  return v;
}

void WriteBe64(std::string& s, size_t at, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    s[at + i] = static_cast<char>(v & 0xff);
    v >>= 8;
  }
}

// Binary header fields (LUKS2 on-disk format, struct luks2_hdr_disk).
constexpr size_t kHdrSizeAt = 8, kSeqidAt = 16, kChecksumAlgAt = 72, kChecksumAt = 448;
constexpr size_t kBinaryHeaderSize = 4096;

}  // namespace

std::string RewriteLuks2Metadata(const std::filesystem::path& path,
                                 const std::function<void(nlohmann::json&)>& edit) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  if (!file) return "cannot open " + path.string();
  std::string primary(kBinaryHeaderSize, '\0');
  file.read(primary.data(), primary.size());
  if (primary.compare(0, 6, "LUKS\xba\xbe", 6) != 0) return "no LUKS2 primary header";
  const uint64_t hdr_size = ReadBe64(primary, kHdrSizeAt);
  if (hdr_size < 16384 || hdr_size > 4 * 1024 * 1024) return "odd hdr_size";
  if (std::strcmp(primary.data() + kChecksumAlgAt, "sha256") != 0) return "not sha256";

  std::string area(hdr_size, '\0');
  file.seekg(0);
  file.read(area.data(), area.size());
  const std::string json_text(area.data() + kBinaryHeaderSize);
  nlohmann::json json = nlohmann::json::parse(json_text, nullptr, false);
  if (json.is_discarded()) return "metadata is not JSON";
  edit(json);
  const std::string new_text = json.dump();
  if (new_text.size() >= hdr_size - kBinaryHeaderSize) return "edited JSON too large";

  for (uint64_t copy_offset : {uint64_t{0}, hdr_size}) {
    std::string header(hdr_size, '\0');
    file.seekg(static_cast<std::streamoff>(copy_offset));
    file.read(header.data(), header.size());
    if (!file) return "cannot read a header copy";
    WriteBe64(header, kSeqidAt, ReadBe64(header, kSeqidAt) + 1);
    std::fill(header.begin() + kBinaryHeaderSize, header.end(), '\0');
    std::memcpy(header.data() + kBinaryHeaderSize, new_text.data(), new_text.size());
    std::fill(header.begin() + kChecksumAt, header.begin() + kChecksumAt + 64, '\0');
    const auto digest =
        crypto::Sha256({std::span(reinterpret_cast<const uint8_t*>(header.data()), header.size())});
    std::memcpy(header.data() + kChecksumAt, digest.data(), digest.size());
    file.seekp(static_cast<std::streamoff>(copy_offset));
    file.write(header.data(), header.size());
    if (!file) return "cannot write a header copy";
  }
  file.flush();
  return "";
}

}  // namespace keywarden::testing
