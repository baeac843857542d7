// KMIP TTLV encoder and strict decoder. The known encodings are the examples of KMIP 1.2
// specification §9.1.2 (tag 0x420020, "Compromise Date", used as a neutral tag there); each was
// cross-checked byte for byte against PyKMIP 0.10's kmip.core.primitives encoders.
#include "src/byok/kmip_ttlv.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "keywarden/status.h"

namespace keywarden::byok::kmip {
namespace {

using ::testing::HasSubstr;

std::vector<uint8_t> Hex(std::string_view hex) {
  std::vector<uint8_t> out;
  std::string digits;
  for (char c : hex) {
    if (c != ' ') digits.push_back(c);
  }
  for (size_t i = 0; i + 1 < digits.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(digits.substr(i, 2), nullptr, 16)));
  }
  return out;
}

struct Known {
  const char* name;
  Item item;
  const char* hex;
};

std::vector<Known> KnownEncodings() {
  const uint8_t big[] = {0x00, 0x00, 0x00, 0x00, 0x03, 0xFD, 0x35, 0xEB,
                         0x6B, 0xC2, 0xDF, 0x46, 0x18, 0x08, 0x00, 0x00};
  const uint8_t three[] = {0x01, 0x02, 0x03};
  return {
      {"Integer 8", Item::Integer(0x420020, 8), "420020 02 00000004 00000008 00000000"},
      {"Long Integer 123456789000000000", Item::LongInteger(0x420020, 123456789000000000),
       "420020 03 00000008 01B69B4BA5749200"},
      {"Big Integer 1234567890000000000000000000", Item::BigInteger(0x420020, big),
       "420020 04 00000010 0000000003FD35EB 6BC2DF4618080000"},
      {"Enumeration 255", Item::Enumeration(0x420020, 255), "420020 05 00000004 000000FF 00000000"},
      {"Boolean True", Item::Boolean(0x420020, true), "420020 06 00000008 0000000000000001"},
      {"Text String Hello World", Item::TextString(0x420020, "Hello World"),
       "420020 07 0000000B 48656C6C6F20576F 726C640000000000"},
      {"Byte String 010203", Item::ByteString(0x420020, three),
       "420020 08 00000003 0102030000000000"},
      // Friday, March 14, 2008, 11:56:40 GMT.
      {"Date-Time", Item::DateTime(0x420020, 0x47DA67F8), "420020 09 00000008 0000000047DA67F8"},
      // 10 days.
      {"Interval", Item::Interval(0x420020, 864000), "420020 0A 00000004 000D2F00 00000000"},
      // A Structure holding an Enumeration 254 (tag 0x420004) and an Integer 255 (0x420005).
      {"Structure",
       Item::Structure(0x420020, {Item::Enumeration(0x420004, 254), Item::Integer(0x420005, 255)}),
       "420020 01 00000020 420004 05 00000004 000000FE 00000000"
       " 420005 02 00000004 000000FF 00000000"},
  };
}

TEST(KmipTtlvTest, KnownEncodingsEncodeAndDecode) {
  for (const Known& k : KnownEncodings()) {
    SCOPED_TRACE(k.name);
    const std::vector<uint8_t> expected = Hex(k.hex);
    EXPECT_EQ(Encode(k.item), expected);
    auto decoded = Decode(expected);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->tag, k.item.tag);
    EXPECT_EQ(decoded->type, k.item.type);
    EXPECT_EQ(decoded->integer, k.item.integer);
    EXPECT_EQ(decoded->bytes, k.item.bytes);
    EXPECT_EQ(decoded->children.size(), k.item.children.size());
    EXPECT_EQ(Encode(*decoded), expected);
  }
}

TEST(KmipTtlvTest, NegativeIntegerAndFind) {
  const Item s =
      Item::Structure(0x420078, {Item::Integer(0x42006A, -2), Item::TextString(0x420094, "a"),
                                 Item::TextString(0x420094, "b")});
  auto decoded = Decode(Encode(s));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  ASSERT_NE(decoded->Find(0x42006A), nullptr);
  EXPECT_EQ(decoded->Find(0x42006A)->integer, -2);
  EXPECT_EQ(decoded->Find(0x420094)->text(), "a");
  EXPECT_EQ(decoded->FindAll(0x420094).size(), 2u);
  EXPECT_EQ(decoded->Find(0x420001), nullptr);
}

TEST(KmipTtlvTest, EmptyStringsAndStructure) {
  for (const Item& item : {Item::TextString(0x420020, ""), Item::ByteString(0x420020, {}),
                           Item::Structure(0x420020, {})}) {
    const auto bytes = Encode(item);
    EXPECT_EQ(bytes.size(), kHeaderSize);
    auto decoded = Decode(bytes);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(decoded->type, item.type);
  }
}

// Each case breaks one rule of the decoder.
TEST(KmipTtlvTest, RejectsMalformed) {
  const struct {
    const char* name;
    const char* hex;
    const char* why;
  } cases[] = {
      {"empty", "", "truncated item header"},
      {"short header", "420020 02 000000", "truncated item header"},
      {"integer length 8", "420020 02 00000008 0000000800000000", "must be 4"},
      {"long integer length 4", "420020 03 00000004 0000000800000000", "must be 8"},
      {"enumeration non-zero padding", "420020 05 00000004 000000FF 00000001", "padding"},
      {"text non-zero padding", "420020 07 00000001 4100000000000001", "padding"},
      {"bytes missing padding", "420020 08 00000003 010203", "padding"},
      {"length beyond input", "420020 08 00000010 0102030000000000", "exceeds"},
      {"boolean 2", "420020 06 00000008 0000000000000002", "boolean"},
      {"big integer length 4", "420020 04 00000004 0000000100000000", "big integer"},
      {"big integer empty", "420020 04 00000000", "big integer"},
      {"unknown type", "420020 0B 00000004 0000000100000000", "unknown item type"},
      {"type 0", "420020 00 00000000", "unknown item type"},
      {"tag outside ranges", "430020 02 00000004 0000000800000000", "outside KMIP ranges"},
      {"trailing bytes", "420020 02 00000004 0000000800000000 00", "after the item"},
      {"two items", "420020 02 00000004 0000000800000000 420020 02 00000004 0000000800000000",
       "after the item"},
      {"structure length not multiple of 8", "420020 01 00000004 0000000000000000",
       "multiple of 8"},
      {"structure member overruns it", "420020 01 00000008 420004 05 00000004 000000FE 00000000",
       "exceeds"},
      {"invalid UTF-8", "420020 07 00000002 C328000000000000", "UTF-8"},
      {"overlong UTF-8", "420020 07 00000002 C0AF000000000000", "UTF-8"},
      {"UTF-16 surrogate", "420020 07 00000003 EDA0800000000000", "UTF-8"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    auto decoded = Decode(Hex(c.hex));
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(StatusMessage(decoded.status()), HasSubstr(c.why));
  }
}

TEST(KmipTtlvTest, ExtensionTagsAccepted) {
  auto decoded = Decode(Hex("540001 02 00000004 0000000100000000"));
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(decoded->tag, 0x540001u);
}

TEST(KmipTtlvTest, NestingIsBounded) {
  Item item = Item::Integer(0x420020, 1);
  for (int i = 0; i < kMaxDepth; ++i) item = Item::Structure(0x420020, {std::move(item)});
  EXPECT_TRUE(Decode(Encode(item)).ok());
  item = Item::Structure(0x420020, {std::move(item)});
  auto decoded = Decode(Encode(item));
  ASSERT_FALSE(decoded.ok());
  EXPECT_THAT(StatusMessage(decoded.status()), HasSubstr("nested deeper"));
}

TEST(KmipTtlvTest, SizeIsBounded) {
  const std::vector<uint8_t> big(kMaxMessageSize, 0);
  const auto bytes = Encode(Item::ByteString(0x420020, big));
  auto decoded = Decode(bytes);
  ASSERT_FALSE(decoded.ok());
  EXPECT_THAT(StatusMessage(decoded.status()), HasSubstr("limit"));
}

TEST(KmipTtlvTest, MessageSize) {
  const auto bytes = Encode(Item::Structure(0x42007B, {Item::Integer(0x42000D, 1)}));
  auto size = MessageSize(std::span(bytes).first(kHeaderSize));
  ASSERT_TRUE(size.ok()) << size.status();
  EXPECT_EQ(*size, bytes.size());
  EXPECT_FALSE(MessageSize(std::span(bytes).first(7)).ok());
  EXPECT_FALSE(MessageSize(Hex("42007B 02 00000004")).ok());  // not a structure
  EXPECT_FALSE(MessageSize(Hex("42007B 01 7FFFFFF8")).ok());  // over the limit
  EXPECT_TRUE(MessageSize(Hex("42007B 01 00000000")).ok());
}

}  // namespace
}  // namespace keywarden::byok::kmip
