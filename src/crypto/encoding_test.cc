#include "keywarden/crypto/encoding.h"

#include <gtest/gtest.h>

#include <string>

namespace keywarden::crypto {
namespace {

std::string Text(const SecretBytes& s) {
  const auto v = s.Reveal(InsecureSecretAccess::Get());
  return std::string(v.begin(), v.end());
}

TEST(HexTest, RoundTripLowerCase) {
  const std::vector<uint8_t> bytes = {0x00, 0x01, 0xab, 0xff};
  EXPECT_EQ(HexEncode(bytes), "0001abff");
  EXPECT_EQ(*HexDecode("0001abff"), bytes);
  EXPECT_EQ(*HexDecode("0001ABFF"), bytes);
  EXPECT_TRUE(HexDecode("")->empty());
}

TEST(HexTest, RefusesMalformed) {
  EXPECT_EQ(HexDecode("abc").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(HexDecode("zz").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(HexDecode("0g").ok());
  EXPECT_FALSE(HexDecode(" 00").ok());
  EXPECT_FALSE(HexDecode("0x00").ok());
}

TEST(HexTest, SecretVariants) {
  SecretBytes s(std::vector<uint8_t>{0xde, 0xad});
  EXPECT_EQ(Text(HexEncodeSecret(s)), "dead");
  auto back = HexDecodeSecret("DEAD");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->Reveal(InsecureSecretAccess::Get())[0], 0xde);
  EXPECT_FALSE(HexDecodeSecret("dea").ok());
}

TEST(HexTest, ErrorsDoNotQuoteInput) {
  auto r = HexDecodeSecret("0123456789abcdefXY");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(std::string(r.status().message()).find("0123456789"), std::string::npos);
}

// RFC 4648 §10 test vectors.
TEST(Base64Test, Rfc4648Vectors) {
  const std::pair<std::string, std::string> cases[] = {
      {"", ""},
      {"f", "Zg=="},
      {"fo", "Zm8="},
      {"foo", "Zm9v"},
      {"foob", "Zm9vYg=="},
      {"fooba", "Zm9vYmE="},
      {"foobar", "Zm9vYmFy"},
  };
  for (const auto& [plain, encoded] : cases) {
    const std::vector<uint8_t> bytes(plain.begin(), plain.end());
    EXPECT_EQ(Base64Encode(bytes), encoded);
    auto decoded = Base64Decode(encoded);
    ASSERT_TRUE(decoded.ok()) << encoded;
    EXPECT_EQ(*decoded, bytes);
    auto secret = Base64DecodeSecret(encoded);
    ASSERT_TRUE(secret.ok());
    EXPECT_EQ(secret->size(), plain.size());
    EXPECT_EQ(Text(Base64EncodeSecret(SecretBytes(bytes))), encoded);
  }
}

TEST(Base64Test, RefusesNonCanonicalOrMalformed) {
  for (const char* bad :
       {"Zg=", "Zg", "Z===", "Zh==", "Zm9=", "Zm 9v", "Zm9v\n", "Zm-v", "Zm_v", "=Zm9",
        "Zg==Zg==", "Zm=v", "====", "Zm9vYg=9" /* found by encoding_fuzzer */}) {
    EXPECT_EQ(Base64Decode(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_FALSE(Base64DecodeSecret(bad).ok()) << bad;
  }
}

}  // namespace
}  // namespace keywarden::crypto
