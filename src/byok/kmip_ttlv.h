// KMIP TTLV (Tag-Type-Length-Value) encoding, KMIP 1.2 specification §9.1 (unchanged through
// KMIP 1.4): a 3-byte tag, a 1-byte type, a 4-byte big-endian length of the value, and the value
// padded with zero bytes to a multiple of 8. A Structure's value is the concatenation of its
// members' encodings. docs/byok-kmip.md.
//
// The decoder parses bytes a KMIP server sent, so it is strict: every length must fit its type
// (Integer/Enumeration/Interval 4, Long Integer/Date-Time/Boolean 8, Big Integer a non-zero
// multiple of 8), padding bytes must be zero, Booleans 0 or 1, Text Strings valid UTF-8, tags in
// the KMIP (0x42xxxx) or extension (0x54xxxx) ranges, a Structure's members must fill it exactly,
// nesting is bounded and so is the total size. fuzz/kmip_ttlv_fuzzer.cc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::byok::kmip {

// ItemType is the TTLV type byte (KMIP 1.2 §9.1.1.2).
enum class ItemType : uint8_t {
  kStructure = 0x01,
  kInteger = 0x02,
  kLongInteger = 0x03,
  kBigInteger = 0x04,
  kEnumeration = 0x05,
  kBoolean = 0x06,
  kTextString = 0x07,
  kByteString = 0x08,
  kDateTime = 0x09,
  kInterval = 0x0A,
};

// kHeaderSize is the size of an item's tag, type and length.
inline constexpr size_t kHeaderSize = 8;
// kMaxMessageSize bounds a decoded message (and the client's reads); Encrypt/Decrypt messages of
// a wrapped DEK are a few hundred bytes.
inline constexpr size_t kMaxMessageSize = 64 * 1024;
// kMaxDepth bounds Structure nesting (a KMIP response is ~5 deep).
inline constexpr int kMaxDepth = 16;

// Item is one TTLV item. Integer, Enumeration, Interval, Long Integer, Date-Time and Boolean keep
// their value in `integer` (Enumeration and Interval as unsigned 32-bit values); Text String,
// Byte String and Big Integer (two's complement, big-endian, as on the wire) in `bytes`;
// Structure in `children`. `bytes` may carry key material (the Data of a Decrypt response), so it
// is wiped when the item is destroyed.
struct Item {
  uint32_t tag = 0;
  ItemType type = ItemType::kStructure;
  int64_t integer = 0;
  std::vector<uint8_t> bytes;
  std::vector<Item> children;

  Item() = default;
  Item(const Item&) = default;
  Item& operator=(const Item&) = default;
  Item(Item&&) noexcept = default;
  Item& operator=(Item&&) noexcept = default;
  ~Item();

  static Item Structure(uint32_t tag, std::vector<Item> children);
  static Item Integer(uint32_t tag, int32_t value);
  static Item LongInteger(uint32_t tag, int64_t value);
  static Item BigInteger(uint32_t tag, std::span<const uint8_t> twos_complement);
  static Item Enumeration(uint32_t tag, uint32_t value);
  static Item Boolean(uint32_t tag, bool value);
  static Item TextString(uint32_t tag, std::string_view value);
  static Item ByteString(uint32_t tag, std::span<const uint8_t> value);
  static Item DateTime(uint32_t tag, int64_t seconds_since_epoch);
  static Item Interval(uint32_t tag, uint32_t seconds);

  // Find returns the first member of this Structure with `tag`, or null.
  const Item* Find(uint32_t tag) const;
  // FindAll returns every member with `tag`, in order.
  std::vector<const Item*> FindAll(uint32_t tag) const;
  // text returns a Text String's value.
  std::string_view text() const {
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }
};

// Encode returns the TTLV encoding of `item`. Values are encoded from the field the type uses;
// a Structure's length is computed from its members.
std::vector<uint8_t> Encode(const Item& item);

// Decode parses exactly one item that fills `bytes` (at most kMaxMessageSize). INVALID_ARGUMENT
// naming the offset and the rule broken for anything malformed; never quotes the bytes.
absl::StatusOr<Item> Decode(std::span<const uint8_t> bytes);

// MessageSize reads the first kHeaderSize bytes of a message (a Structure) and returns the size
// of the whole encoding, header included, for framing a read from a stream. INVALID_ARGUMENT when
// the header is not a Structure's or announces more than kMaxMessageSize bytes.
absl::StatusOr<size_t> MessageSize(std::span<const uint8_t> header);

}  // namespace keywarden::byok::kmip
