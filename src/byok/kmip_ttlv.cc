// KMIP TTLV encoding and strict decoding, KMIP 1.2 §9.1. See kmip_ttlv.h.
#include "src/byok/kmip_ttlv.h"

#include <utility>

#include "keywarden/secret_bytes.h"
#include "keywarden/status.h"

namespace keywarden::byok::kmip {
namespace {

size_t Padded(size_t n) { return (n + 7) / 8 * 8; }

void PutU32(std::vector<uint8_t>& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}
void PutU64(std::vector<uint8_t>& out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(v >> shift));
}
uint32_t GetU32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}
uint64_t GetU64(const uint8_t* p) { return (uint64_t{GetU32(p)} << 32) | GetU32(p + 4); }

void EncodeInto(const Item& item, std::vector<uint8_t>& out) {
  out.push_back(static_cast<uint8_t>(item.tag >> 16));
  out.push_back(static_cast<uint8_t>(item.tag >> 8));
  out.push_back(static_cast<uint8_t>(item.tag));
  out.push_back(static_cast<uint8_t>(item.type));
  switch (item.type) {
    case ItemType::kStructure: {
      const size_t length_at = out.size();
      PutU32(out, 0);
      for (const Item& child : item.children) EncodeInto(child, out);
      const uint32_t length = static_cast<uint32_t>(out.size() - length_at - 4);
      for (int i = 0; i < 4; ++i) out[length_at + i] = static_cast<uint8_t>(length >> (24 - 8 * i));
      return;
    }
    case ItemType::kInteger:
    case ItemType::kEnumeration:
    case ItemType::kInterval:
      PutU32(out, 4);
      PutU32(out, static_cast<uint32_t>(item.integer));
      PutU32(out, 0);
      return;
    case ItemType::kLongInteger:
    case ItemType::kDateTime:
    case ItemType::kBoolean:
      PutU32(out, 8);
      PutU64(out, static_cast<uint64_t>(item.integer));
      return;
    case ItemType::kBigInteger:
    case ItemType::kTextString:
    case ItemType::kByteString:
      PutU32(out, static_cast<uint32_t>(item.bytes.size()));
      out.insert(out.end(), item.bytes.begin(), item.bytes.end());
      out.resize(out.size() + Padded(item.bytes.size()) - item.bytes.size(), 0);
      return;
  }
}

// ValidUtf8 checks RFC 3629 UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool ValidUtf8(std::span<const uint8_t> s) {
  size_t i = 0;
  while (i < s.size()) {
    const uint8_t c = s[i];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (s.size() - i <= n) return false;
    for (size_t k = 1; k <= n; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

class Decoder {
 public:
  explicit Decoder(std::span<const uint8_t> bytes) : bytes_(bytes) {}

  // DecodeAt parses the item at `offset` that must end by `end`; returns the offset after it.
  absl::StatusOr<size_t> DecodeAt(size_t offset, size_t end, int depth, Item& item) {
    if (depth > kMaxDepth) return Error(offset, "structures nested deeper than {}", kMaxDepth);
    if (end - offset < kHeaderSize) return Error(offset, "truncated item header");
    const uint8_t* p = bytes_.data() + offset;
    item.tag = (uint32_t{p[0]} << 16) | (uint32_t{p[1]} << 8) | p[2];
    if (p[0] != 0x42 && p[0] != 0x54)
      return Error(offset, "tag 0x{:06x} outside KMIP ranges", item.tag);
    const uint8_t type = p[3];
    const uint32_t length = GetU32(p + 4);
    const size_t value_at = offset + kHeaderSize;
    const size_t room = end - value_at;
    if (length > room) return Error(offset, "length {} exceeds the {} bytes left", length, room);
    const size_t padded = Padded(length);
    if (padded > room) return Error(offset, "padding of a {}-byte value exceeds the input", length);
    const uint8_t* v = bytes_.data() + value_at;
    for (size_t i = length; i < padded; ++i) {
      if (v[i] != 0) return Error(value_at + i, "non-zero padding byte");
    }
    switch (type) {
      case static_cast<uint8_t>(ItemType::kStructure): {
        item.type = ItemType::kStructure;
        if (length % 8 != 0)
          return Error(offset, "structure length {} not a multiple of 8", length);
        size_t at = value_at;
        const size_t struct_end = value_at + length;
        while (at < struct_end) {
          Item child;
          auto next = DecodeAt(at, struct_end, depth + 1, child);
          if (!next.ok()) return next.status();
          at = *next;
          item.children.push_back(std::move(child));
        }
        return struct_end;
      }
      case static_cast<uint8_t>(ItemType::kInteger):
      case static_cast<uint8_t>(ItemType::kEnumeration):
      case static_cast<uint8_t>(ItemType::kInterval): {
        item.type = static_cast<ItemType>(type);
        if (length != 4)
          return Error(offset, "type 0x{:02x} with length {} (must be 4)", type, length);
        const uint32_t raw = GetU32(v);
        item.integer =
            item.type == ItemType::kInteger ? int64_t{static_cast<int32_t>(raw)} : int64_t{raw};
        return value_at + 8;
      }
      case static_cast<uint8_t>(ItemType::kLongInteger):
      case static_cast<uint8_t>(ItemType::kDateTime):
      case static_cast<uint8_t>(ItemType::kBoolean): {
        item.type = static_cast<ItemType>(type);
        if (length != 8)
          return Error(offset, "type 0x{:02x} with length {} (must be 8)", type, length);
        const uint64_t raw = GetU64(v);
        if (item.type == ItemType::kBoolean && raw > 1) return Error(offset, "boolean not 0 or 1");
        item.integer = static_cast<int64_t>(raw);
        return value_at + 8;
      }
      case static_cast<uint8_t>(ItemType::kBigInteger):
        item.type = ItemType::kBigInteger;
        if (length == 0 || length % 8 != 0) {
          return Error(offset, "big integer length {} not a positive multiple of 8", length);
        }
        item.bytes.assign(v, v + length);
        return value_at + length;
      case static_cast<uint8_t>(ItemType::kTextString):
      case static_cast<uint8_t>(ItemType::kByteString):
        item.type = static_cast<ItemType>(type);
        item.bytes.assign(v, v + length);
        if (item.type == ItemType::kTextString && !ValidUtf8(item.bytes)) {
          return Error(offset, "text string not valid UTF-8");
        }
        return value_at + padded;
      default:
        return Error(offset, "unknown item type 0x{:02x}", type);
    }
  }

 private:
  template <typename... Args>
  static absl::Status Error(size_t offset, fmt::format_string<Args...> f, Args&&... args) {
    return InvalidArgumentError("malformed KMIP TTLV at byte {}: {}", offset,
                                fmt::format(f, std::forward<Args>(args)...));
  }

  std::span<const uint8_t> bytes_;
};

}  // namespace

Item::~Item() {
  if (!bytes.empty()) SecureWipe(bytes);
}

Item Item::Structure(uint32_t tag, std::vector<Item> children) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kStructure;
  item.children = std::move(children);
  return item;
}
Item Item::Integer(uint32_t tag, int32_t value) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kInteger;
  item.integer = value;
  return item;
}
Item Item::LongInteger(uint32_t tag, int64_t value) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kLongInteger;
  item.integer = value;
  return item;
}
Item Item::BigInteger(uint32_t tag, std::span<const uint8_t> twos_complement) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kBigInteger;
  item.bytes.assign(twos_complement.begin(), twos_complement.end());
  return item;
}
Item Item::Enumeration(uint32_t tag, uint32_t value) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kEnumeration;
  item.integer = value;
  return item;
}
Item Item::Boolean(uint32_t tag, bool value) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kBoolean;
  item.integer = value ? 1 : 0;
  return item;
}
Item Item::TextString(uint32_t tag, std::string_view value) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kTextString;
  item.bytes.assign(value.begin(), value.end());
  return item;
}
Item Item::ByteString(uint32_t tag, std::span<const uint8_t> value) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kByteString;
  item.bytes.assign(value.begin(), value.end());
  return item;
}
Item Item::DateTime(uint32_t tag, int64_t seconds_since_epoch) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kDateTime;
  item.integer = seconds_since_epoch;
  return item;
}
Item Item::Interval(uint32_t tag, uint32_t seconds) {
  Item item;
  item.tag = tag;
  item.type = ItemType::kInterval;
  item.integer = seconds;
  return item;
}

const Item* Item::Find(uint32_t wanted) const {
  for (const Item& child : children) {
    if (child.tag == wanted) return &child;
  }
  return nullptr;
}

std::vector<const Item*> Item::FindAll(uint32_t wanted) const {
  std::vector<const Item*> found;
  for (const Item& child : children) {
    if (child.tag == wanted) found.push_back(&child);
  }
  return found;
}

std::vector<uint8_t> Encode(const Item& item) {
  std::vector<uint8_t> out;
  EncodeInto(item, out);
  return out;
}

absl::StatusOr<Item> Decode(std::span<const uint8_t> bytes) {
  if (bytes.size() > kMaxMessageSize) {
    return InvalidArgumentError("KMIP message of {} bytes exceeds the {}-byte limit", bytes.size(),
                                kMaxMessageSize);
  }
  Decoder decoder(bytes);
  Item item;
  auto end = decoder.DecodeAt(0, bytes.size(), 0, item);
  if (!end.ok()) return end.status();
  if (*end != bytes.size()) {
    return InvalidArgumentError("malformed KMIP TTLV: {} bytes after the item",
                                bytes.size() - *end);
  }
  return item;
}

absl::StatusOr<size_t> MessageSize(std::span<const uint8_t> header) {
  if (header.size() < kHeaderSize) return InvalidArgumentError("truncated KMIP message header");
  if (header[0] != 0x42 || header[3] != static_cast<uint8_t>(ItemType::kStructure)) {
    return InvalidArgumentError("KMIP message does not start with a structure");
  }
  const uint32_t length = GetU32(header.data() + 4);
  if (length > kMaxMessageSize - kHeaderSize) {
    return InvalidArgumentError("KMIP message announces {} bytes, over the {}-byte limit", length,
                                kMaxMessageSize);
  }
  return kHeaderSize + length;
}

}  // namespace keywarden::byok::kmip
