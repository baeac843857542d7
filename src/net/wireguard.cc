#include "keywarden/net/wireguard.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"

namespace keywarden::net {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

// ---- Locked text buffers ----

// SecretBuffer is a growable byte buffer in SecretBytes: every generation it outgrows is wiped
// when it is replaced (SecretBytes' move assignment), so no copy of the private key written into
// a request, or read from a get reply, is left in ordinary heap memory.
class SecretBuffer {
 public:
  void Append(std::span<const uint8_t> bytes) {
    Reserve(used_ + bytes.size());
    std::copy(bytes.begin(), bytes.end(),
              bytes_.MutableReveal(InsecureSecretAccess::Get()).begin() + used_);
    used_ += bytes.size();
  }
  void Append(std::string_view text) {
    Append(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(text.data()), text.size()));
  }
  // AppendHex writes `bytes` as lower-case hex straight into the buffer.
  void AppendHex(std::span<const uint8_t> bytes) {
    static constexpr char kDigits[] = "0123456789abcdef";
    Reserve(used_ + 2 * bytes.size());
    std::span<uint8_t> out = bytes_.MutableReveal(InsecureSecretAccess::Get());
    for (uint8_t b : bytes) {
      out[used_++] = static_cast<uint8_t>(kDigits[b >> 4]);
      out[used_++] = static_cast<uint8_t>(kDigits[b & 0xf]);
    }
  }
  // Tail returns writable space for `n` more bytes; Commit(k) keeps the first k of them.
  std::span<uint8_t> Tail(size_t n) {
    Reserve(used_ + n);
    return bytes_.MutableReveal(InsecureSecretAccess::Get()).subspan(used_, n);
  }
  void Commit(size_t n) { used_ += n; }

  size_t size() const { return used_; }
  std::string_view view() const {
    const auto all = bytes_.Reveal(InsecureSecretAccess::Get());
    return {reinterpret_cast<const char*>(all.data()), used_};
  }
  // Take returns the contents in a SecretBytes of exactly size() bytes.
  SecretBytes Take() {
    SecretBytes out(bytes_.Reveal(InsecureSecretAccess::Get()).first(used_));
    bytes_ = SecretBytes();
    used_ = 0;
    return out;
  }

 private:
  void Reserve(size_t needed) {
    if (needed <= bytes_.size()) return;
    SecretBytes bigger(std::max({needed, 2 * bytes_.size(), size_t{512}}));
    const auto old = bytes_.Reveal(InsecureSecretAccess::Get()).first(used_);
    std::copy(old.begin(), old.end(), bigger.MutableReveal(InsecureSecretAccess::Get()).begin());
    bytes_ = std::move(bigger);  // wipes the old generation
  }

  SecretBytes bytes_;
  size_t used_ = 0;
};

std::string_view AsText(std::span<const uint8_t> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// ---- Hex and decimal ----

int LowerHexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// DecodeKeyHex decodes exactly 64 lower-case hex digits into `out` (32 bytes). The error never
// quotes the text (it may be a private key).
absl::Status DecodeKeyHex(std::string_view text, std::span<uint8_t> out) {
  if (text.size() != 2 * kWireGuardKeySize) {
    return InvalidArgumentError("a WireGuard key in hex has {} characters; got {}",
                                2 * kWireGuardKeySize, text.size());
  }
  for (size_t i = 0; i < kWireGuardKeySize; ++i) {
    const int hi = LowerHexValue(text[2 * i]);
    const int lo = LowerHexValue(text[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      SecureWipe(out);
      return InvalidArgumentError(
          "a WireGuard key in hex is lower-case [0-9a-f] only; bad character at offset {}",
          hi < 0 ? 2 * i : 2 * i + 1);
    }
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return absl::OkStatus();
}

bool AllZero(std::span<const uint8_t> bytes) {
  uint8_t acc = 0;
  for (uint8_t b : bytes) acc |= b;
  return acc == 0;
}

// ParseDecimal accepts 1-20 decimal digits without sign or leading zeros, at most `max`.
std::optional<uint64_t> ParseDecimal(std::string_view text, uint64_t max) {
  if (text.empty() || text.size() > 20 || (text.size() > 1 && text[0] == '0')) return std::nullopt;
  uint64_t value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10) return std::nullopt;
    value = value * 10 + digit;
  }
  if (value > max) return std::nullopt;
  return value;
}

// ParseErrno accepts an optionally negative decimal (wireguard-go sends -EINVAL as "-22").
std::optional<int64_t> ParseErrno(std::string_view text) {
  const bool negative = !text.empty() && text[0] == '-';
  if (negative) text.remove_prefix(1);
  const auto magnitude = ParseDecimal(text, static_cast<uint64_t>(INT64_MAX));
  // "-0" is no number wireguard-go writes (found by fuzz/net_uapi_fuzzer.cc: "errno=-0" passed
  // ParseSetResponse, which accepts exactly "errno=0").
  if (!magnitude || (negative && *magnitude == 0)) return std::nullopt;
  const auto value = static_cast<int64_t>(*magnitude);
  return negative ? -value : value;
}

// ---- Interface names ----

absl::Status CheckInterfaceName(std::string_view name) {
  // Linux's dev_valid_name(): 1..IFNAMSIZ-1 bytes, not "." or "..", no '/', ':' or
  // whitespace. Printable ASCII only, since the name also becomes a file name and appears in
  // messages.
  constexpr size_t kMaxName = 15;
  if (name.empty() || name.size() > kMaxName) {
    return InvalidArgumentError("interface name \"{}\" must have 1 to {} characters; it has {}",
                                Printable(name), kMaxName, name.size());
  }
  if (name == "." || name == "..") {
    return InvalidArgumentError("interface name \"{}\" is not allowed", name);
  }
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u >= 0x7f || c == '/' || c == ':') {
      return InvalidArgumentError(
          "interface name \"{}\" may not contain '/', ':', whitespace or non-printable bytes",
          Printable(name));
    }
  }
  return absl::OkStatus();
}

absl::Status WithContext(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return MakeStatus(status.code(), "{}: {}", context, StatusMessage(status));
}

// ---- Sockets ----

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

absl::Status SocketPathError(int err, const std::filesystem::path& path, std::string_view iface,
                             std::string_view what) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return NotFoundError(
          "WireGuard interface \"{}\" not found: no UAPI socket at {} (is wireguard-go running "
          "for it?)",
          iface, path.string());
    case EACCES:
    case EPERM:
      return PermissionDeniedError(
          "permission denied {} the UAPI socket {}: wireguard-go creates it for root only "
          "(mode 0700); run as root",
          what, path.string());
    case ECONNREFUSED:
      return UnavailableError(
          "UAPI socket {} refuses connections: a stale socket of a wireguard-go that exited?",
          path.string());
    case EAGAIN:
    case EINPROGRESS:  // connect() timed out (SO_SNDTIMEO)
    case ETIMEDOUT:
      return MakeStatus(absl::StatusCode::kDeadlineExceeded,
                        "UAPI socket {}: wireguard-go does not accept connections (backlog full)",
                        path.string());
    default:
      return UnavailableError("{} the UAPI socket {}: {}", what, path.string(), std::strerror(err));
  }
}

// WaitFor polls `fd` for `events` until `deadline`.
absl::Status WaitFor(int fd, short events, steady_clock::time_point deadline, milliseconds timeout,
                     const std::filesystem::path& path) {
  while (true) {
    const auto left =
        std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now()).count();
    if (left <= 0) {
      return MakeStatus(absl::StatusCode::kDeadlineExceeded, "no complete reply on {} within {} ms",
                        path.string(), timeout.count());
    }
    pollfd p{fd, events, 0};
    const int n = poll(&p, 1, static_cast<int>(std::min<int64_t>(left, INT_MAX)));
    if (n > 0) return absl::OkStatus();
    if (n < 0 && errno != EINTR) return UnavailableError("poll: {}", std::strerror(errno));
  }
}

// ReplyEnd returns the offset just past the reply's terminating empty line, searching from
// `from`, or npos. Reply lines are never empty, so the first "\n\n" (or a leading "\n") ends
// the reply.
size_t ReplyEnd(std::string_view text, size_t from) {
  for (size_t i = from; i < text.size(); ++i) {
    if (text[i] == '\n' && (i == 0 || text[i - 1] == '\n')) return i + 1;
  }
  return std::string_view::npos;
}

// ---- Addresses ----

std::string FormatV6(const std::array<uint8_t, 16>& b) {
  // RFC 5952 §5: IPv4-mapped addresses keep the dotted quad.
  if (std::all_of(b.begin(), b.begin() + 10, [](uint8_t x) { return x == 0; }) && b[10] == 0xff &&
      b[11] == 0xff) {
    return fmt::format("::ffff:{}.{}.{}.{}", b[12], b[13], b[14], b[15]);
  }
  std::array<unsigned, 8> groups{};
  for (size_t i = 0; i < 8; ++i) groups[i] = static_cast<unsigned>(b[2 * i] << 8 | b[2 * i + 1]);
  // RFC 5952 §4.2: "::" replaces the longest run of two or more zero groups, the first one when
  // runs tie.
  int best_start = -1, best_len = 0;
  for (int i = 0; i < 8;) {
    if (groups[i] != 0) {
      ++i;
      continue;
    }
    int j = i;
    while (j < 8 && groups[j] == 0) ++j;
    if (j - i > best_len && j - i >= 2) {
      best_start = i;
      best_len = j - i;
    }
    i = j;
  }
  std::string out;
  for (int i = 0; i < 8; ++i) {
    if (i == best_start) {
      out += "::";
      i += best_len - 1;
      continue;
    }
    if (!out.empty() && out.back() != ':') out += ':';
    out += fmt::format("{:x}", groups[i]);
  }
  return out;
}

// ---- Update checks and serialisation ----

constexpr std::string_view kPeerKeyNames[] = {"preshared_key",
                                              "protocol_version",
                                              "endpoint",
                                              "last_handshake_time_sec",
                                              "last_handshake_time_nsec",
                                              "tx_bytes",
                                              "rx_bytes",
                                              "persistent_keepalive_interval",
                                              "allowed_ip"};
constexpr std::string_view kDeviceKeyNames[] = {"private_key", "listen_port", "fwmark"};

bool IsOneOf(std::string_view key, std::span<const std::string_view> names) {
  return std::find(names.begin(), names.end(), key) != names.end();
}

}  // namespace

// ---- Keys ----

absl::StatusOr<KeyPair> GenerateKeyPair() { return KeyPair::Generate(); }

absl::StatusOr<PublicKey> PublicKeyOf(const SecretBytes& private_key) {
  ASSIGN_OR_RETURN(KeyPair pair, KeyPair::FromPrivateKey(private_key));
  return pair.public_key();
}

std::string PublicKeyToBase64(const PublicKey& key) {
  return crypto::EncodeWireGuardPublicKey(key);
}

absl::StatusOr<PublicKey> PublicKeyFromBase64(std::string_view text) {
  return crypto::DecodeWireGuardPublicKey(text);
}

std::string PublicKeyToHex(const PublicKey& key) { return crypto::HexEncode(key); }

absl::StatusOr<PublicKey> PublicKeyFromHex(std::string_view text) {
  PublicKey key{};
  RETURN_IF_ERROR(DecodeKeyHex(text, key));
  return key;
}

absl::StatusOr<SecretBytes> PrivateKeyToBase64(const SecretBytes& private_key) {
  if (private_key.size() != kWireGuardKeySize) {
    return InvalidArgumentError("WireGuard private key of {} bytes; want {}", private_key.size(),
                                kWireGuardKeySize);
  }
  return crypto::EncodeWireGuardPrivateKey(private_key);
}

absl::StatusOr<SecretBytes> PrivateKeyFromBase64(std::string_view text) {
  return crypto::DecodeWireGuardPrivateKey(text);
}

absl::StatusOr<SecretBytes> PrivateKeyToHex(const SecretBytes& private_key) {
  if (private_key.size() != kWireGuardKeySize) {
    return InvalidArgumentError("WireGuard private key of {} bytes; want {}", private_key.size(),
                                kWireGuardKeySize);
  }
  SecretBuffer out;
  out.AppendHex(private_key.Reveal(InsecureSecretAccess::Get()));
  return out.Take();
}

absl::StatusOr<SecretBytes> PrivateKeyFromHex(std::string_view text) {
  SecretBytes key(kWireGuardKeySize);
  RETURN_IF_ERROR(DecodeKeyHex(text, key.MutableReveal(InsecureSecretAccess::Get())));
  return key;
}

// ---- Addresses ----

absl::StatusOr<IpAddress> IpAddress::Parse(std::string_view text) {
  // INET6_ADDRSTRLEN - 1 characters is the longest address text ("ffff:...:255.255.255.255").
  // A NUL would end the C string inet_pton reads, and what follows it would be ignored
  // ("192.0.2.7\0junk" taken for 192.0.2.7; found by fuzz/net_uapi_fuzzer.cc).
  if (text.empty() || text.size() >= INET6_ADDRSTRLEN ||
      text.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("\"{}\" is not an IP address", Printable(text));
  }
  const std::string copy(text);  // inet_pton needs a NUL terminator
  IpAddress address;
  if (copy.find(':') != std::string::npos) {
    address.family_ = Family::kIPv6;
    if (inet_pton(AF_INET6, copy.c_str(), address.bytes_.data()) != 1) {
      return InvalidArgumentError("\"{}\" is not an IPv6 address (zones are not accepted)",
                                  Printable(text));
    }
    return address;
  }
  // glibc's inet_pton(AF_INET) takes exactly four decimal parts 0-255 without leading zeros
  // (no octal, hex or shortened forms, unlike inet_aton).
  if (inet_pton(AF_INET, copy.c_str(), address.bytes_.data()) != 1) {
    return InvalidArgumentError("\"{}\" is not an IPv4 address (want a.b.c.d)", Printable(text));
  }
  return address;
}

IpAddress IpAddress::V4(const std::array<uint8_t, 4>& bytes) {
  IpAddress address;
  std::copy(bytes.begin(), bytes.end(), address.bytes_.begin());
  return address;
}

IpAddress IpAddress::V6(const std::array<uint8_t, 16>& bytes) {
  IpAddress address;
  address.family_ = Family::kIPv6;
  address.bytes_ = bytes;
  return address;
}

std::string IpAddress::ToString() const {
  if (is_v4()) return fmt::format("{}.{}.{}.{}", bytes_[0], bytes_[1], bytes_[2], bytes_[3]);
  return FormatV6(bytes_);
}

absl::StatusOr<Cidr> Cidr::Make(const IpAddress& address, int prefix_length) {
  if (prefix_length < 0 || prefix_length > address.bit_length()) {
    return InvalidArgumentError("prefix length {} is out of range for {} (0-{})", prefix_length,
                                address.ToString(), address.bit_length());
  }
  const Cidr cidr(address, prefix_length);
  // Mask the host bits and compare: a prefix with host bits set is refused, not masked.
  std::array<uint8_t, 16> masked{};
  const auto bytes = address.bytes();
  for (size_t i = 0; i < bytes.size(); ++i) {
    const int bits = std::clamp(prefix_length - static_cast<int>(8 * i), 0, 8);
    masked[i] = static_cast<uint8_t>(bytes[i] & (0xff00 >> bits));
  }
  if (!std::equal(bytes.begin(), bytes.end(), masked.begin())) {
    IpAddress network;
    if (address.is_v4()) {
      network = IpAddress::V4({masked[0], masked[1], masked[2], masked[3]});
    } else {
      network = IpAddress::V6(masked);
    }
    return InvalidArgumentError(
        "{}/{} has host bits set; the network is {}/{} (or use /{} for the single address)",
        address.ToString(), prefix_length, network.ToString(), prefix_length, address.bit_length());
  }
  return cidr;
}

absl::StatusOr<Cidr> Cidr::Parse(std::string_view text) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) {
    return InvalidArgumentError("\"{}\" is not ADDRESS/LENGTH (write /32 or /128 for one address)",
                                Printable(text));
  }
  auto address = IpAddress::Parse(text.substr(0, slash));
  if (!address.ok()) {
    return InvalidArgumentError("\"{}\": {}", Printable(text), StatusMessage(address.status()));
  }
  const auto length = ParseDecimal(text.substr(slash + 1), 128);
  if (!length) {
    return InvalidArgumentError("\"{}\": the prefix length must be a decimal without leading zeros",
                                Printable(text));
  }
  return Make(*address, static_cast<int>(*length));
}

Cidr Cidr::Host(const IpAddress& address) { return Cidr(address, address.bit_length()); }

bool Cidr::Contains(const IpAddress& address) const {
  if (address.family() != address_.family()) return false;
  const auto a = address.bytes();
  const auto n = address_.bytes();
  for (size_t i = 0; i < a.size(); ++i) {
    const int bits = std::clamp(prefix_length_ - static_cast<int>(8 * i), 0, 8);
    const auto mask = static_cast<uint8_t>(0xff00 >> bits);
    if ((a[i] & mask) != n[i]) return false;
  }
  return true;
}

std::string Cidr::ToString() const {
  return fmt::format("{}/{}", address_.ToString(), prefix_length_);
}

absl::StatusOr<Endpoint> Endpoint::Parse(std::string_view text) {
  std::string_view host, port;
  if (!text.empty() && text[0] == '[') {
    const size_t close = text.find("]:");
    if (close == std::string_view::npos) {
      return InvalidArgumentError("endpoint \"{}\" is not [IPV6]:PORT", Printable(text));
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else {
    const size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) {
      return InvalidArgumentError("endpoint \"{}\" is not IPV4:PORT or [IPV6]:PORT",
                                  Printable(text));
    }
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
  }
  Endpoint endpoint;
  auto address = IpAddress::Parse(host);
  if (!address.ok()) {
    return InvalidArgumentError("endpoint \"{}\": {}", Printable(text),
                                StatusMessage(address.status()));
  }
  const bool bracketed = text[0] == '[';
  if (bracketed == address->is_v4()) {
    return InvalidArgumentError("endpoint \"{}\": IPv6 addresses go in brackets, IPv4 ones not",
                                Printable(text));
  }
  const auto number = ParseDecimal(port, 65535);
  if (!number || *number == 0) {
    return InvalidArgumentError("endpoint \"{}\": the port must be 1-65535", Printable(text));
  }
  endpoint.address = *address;
  endpoint.port = static_cast<uint16_t>(*number);
  return endpoint;
}

std::string Endpoint::ToString() const {
  if (address.is_v4()) return fmt::format("{}:{}", address.ToString(), port);
  return fmt::format("[{}]:{}", address.ToString(), port);
}

// ---- Device ----

const PeerInfo* Device::FindPeer(const PublicKey& key) const {
  for (const PeerInfo& peer : peers) {
    if (peer.public_key == key) return &peer;
  }
  return nullptr;
}

// ---- The UAPI text ----

absl::Status UapiErrnoStatus(int64_t errno_value) {
  if (errno_value == 0) return absl::OkStatus();
  const int64_t e = errno_value == INT64_MIN ? INT64_MAX : std::abs(errno_value);
  const char* name = e <= INT_MAX ? strerrorname_np(static_cast<int>(e)) : nullptr;
  const char* desc = e <= INT_MAX ? strerrordesc_np(static_cast<int>(e)) : nullptr;
  // What wireguard-go means by the codes it sends (ipc/uapi_unix.go, device/uapi.go).
  std::string_view meaning = "";
  absl::StatusCode code = absl::StatusCode::kUnknown;
  switch (e) {
    case EINVAL:
      meaning = "; wireguard-go refused a key or value of the request";
      code = absl::StatusCode::kInvalidArgument;
      break;
    case EADDRINUSE:
      meaning = "; wireguard-go could not bind the listen port";
      code = absl::StatusCode::kFailedPrecondition;
      break;
    case EPROTO:
      meaning = "; wireguard-go could not parse a request line";
      code = absl::StatusCode::kInternal;
      break;
    case EIO:
      meaning = "; wireguard-go failed to read or write the socket";
      code = absl::StatusCode::kUnavailable;
      break;
    case 55:  // ENOANO, wireguard-go's IpcErrorUnknown
      meaning = "; wireguard-go's code for an unexpected internal error";
      code = absl::StatusCode::kInternal;
      break;
    case EPERM:
    case EACCES:
      code = absl::StatusCode::kPermissionDenied;
      break;
    default:
      break;
  }
  return MakeStatus(code, "wireguard-go replied errno={} ({}: {}{})", errno_value,
                    name != nullptr ? name : "unknown errno",
                    desc != nullptr ? desc : "no description", meaning);
}

absl::Status ValidateUpdate(const DeviceUpdate& update) {
  std::optional<PublicKey> own_public_key;
  if (update.private_key.has_value()) {
    if (update.private_key->size() != kWireGuardKeySize) {
      return InvalidArgumentError("private key of {} bytes; want {}", update.private_key->size(),
                                  kWireGuardKeySize);
    }
    if (AllZero(update.private_key->Reveal(InsecureSecretAccess::Get()))) {
      // In the UAPI an all-zero private_key removes the key; a zero key in an update is far more
      // likely a bug (an unfilled buffer) than a wish to disable the interface.
      return InvalidArgumentError("refusing an all-zero private key");
    }
    ASSIGN_OR_RETURN(own_public_key, PublicKeyOf(*update.private_key));
  }
  std::set<PublicKey> seen;
  std::set<Cidr> allowed;
  for (size_t i = 0; i < update.peers.size(); ++i) {
    const PeerUpdate& peer = update.peers[i];
    const std::string id = fmt::format("peer {} ({})", i, PublicKeyToBase64(peer.public_key));
    if (AllZero(peer.public_key)) return InvalidArgumentError("peer {}: all-zero public key", i);
    if (!seen.insert(peer.public_key).second) {
      // xplatform: "The same public key value may not repeat during a single message."
      return InvalidArgumentError("{} appears twice in one update", id);
    }
    if (own_public_key.has_value() && peer.public_key == *own_public_key) {
      return InvalidArgumentError("{} is the interface's own public key", id);
    }
    if (peer.remove) {
      if (peer.update_only || peer.preshared_key.has_value() || peer.endpoint.has_value() ||
          peer.persistent_keepalive_interval.has_value() || peer.replace_allowed_ips ||
          !peer.allowed_ips.empty()) {
        return InvalidArgumentError("{}: a removal carries no other field", id);
      }
      continue;
    }
    if (peer.preshared_key.has_value() && peer.preshared_key->size() != kWireGuardKeySize) {
      return InvalidArgumentError("{}: preshared key of {} bytes; want {}", id,
                                  peer.preshared_key->size(), kWireGuardKeySize);
    }
    if (peer.endpoint.has_value() && peer.endpoint->port == 0) {
      return InvalidArgumentError("{}: endpoint port 0", id);
    }
    for (const Cidr& cidr : peer.allowed_ips) {
      if (!allowed.insert(cidr).second) {
        return InvalidArgumentError("allowed IP {} is given twice (a prefix maps to one peer)",
                                    cidr.ToString());
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<SecretBytes> SerializeSetRequest(const DeviceUpdate& update) {
  RETURN_IF_ERROR(ValidateUpdate(update));
  SecretBuffer out;
  auto line = [&out](std::string_view key, std::string_view value) {
    out.Append(key);
    out.Append("=");
    out.Append(value);
    out.Append("\n");
  };
  out.Append("set=1\n");
  // listen_port first: the one line only the server can refuse (port in use), before anything
  // has changed.
  if (update.listen_port.has_value()) line("listen_port", fmt::format("{}", *update.listen_port));
  if (update.fwmark.has_value()) line("fwmark", fmt::format("{}", *update.fwmark));
  if (update.private_key.has_value()) {
    out.Append("private_key=");
    out.AppendHex(update.private_key->Reveal(InsecureSecretAccess::Get()));
    out.Append("\n");
  }
  if (update.replace_peers) line("replace_peers", "true");
  for (const PeerUpdate& peer : update.peers) {
    line("public_key", PublicKeyToHex(peer.public_key));
    if (peer.remove) {
      line("remove", "true");
      continue;
    }
    // update_only must follow public_key at once: wireguard-go creates the peer on the
    // public_key line and drops it again at update_only if it was new.
    if (peer.update_only) line("update_only", "true");
    if (peer.preshared_key.has_value()) {
      out.Append("preshared_key=");
      out.AppendHex(peer.preshared_key->Reveal(InsecureSecretAccess::Get()));
      out.Append("\n");
    }
    if (peer.endpoint.has_value()) line("endpoint", peer.endpoint->ToString());
    if (peer.persistent_keepalive_interval.has_value()) {
      line("persistent_keepalive_interval", fmt::format("{}", *peer.persistent_keepalive_interval));
    }
    if (peer.replace_allowed_ips) line("replace_allowed_ips", "true");
    for (const Cidr& cidr : peer.allowed_ips) line("allowed_ip", cidr.ToString());
  }
  out.Append("\n");
  return out.Take();
}

namespace {

// PeerState is a peer being parsed: its fields and which keys were seen.
struct PeerState {
  PeerInfo info;
  std::set<std::string_view> seen;
  uint64_t handshake_sec = 0;
  uint64_t handshake_nsec = 0;
};

absl::Status FinishPeer(PeerState& state, Device& device) {
  // Seconds bounded so that the time point fits system_clock's 64-bit nanoseconds.
  constexpr uint64_t kMaxSeconds = uint64_t{1} << 33;
  if (state.handshake_sec > kMaxSeconds) {
    return InternalError("peer {}: last_handshake_time_sec {} is out of range",
                         PublicKeyToBase64(state.info.public_key), state.handshake_sec);
  }
  if (state.handshake_sec != 0 || state.handshake_nsec != 0) {
    state.info.last_handshake = std::chrono::system_clock::time_point(
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::seconds(state.handshake_sec) +
            std::chrono::nanoseconds(state.handshake_nsec)));
  }
  device.peers.push_back(std::move(state.info));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Device> ParseGetResponse(std::string_view reply) {
  Device device;
  std::optional<PeerState> peer;
  std::set<PublicKey> peer_keys;
  std::set<std::string_view> device_seen;
  std::optional<int64_t> errno_value;
  size_t line_number = 0;
  size_t pos = 0;
  while (pos < reply.size()) {
    const size_t newline = reply.find('\n', pos);
    ++line_number;
    if (newline == std::string_view::npos) {
      return InternalError("malformed UAPI get reply: line {} is not terminated", line_number);
    }
    const std::string_view line = reply.substr(pos, newline - pos);
    pos = newline + 1;
    if (line.empty()) {
      if (pos != reply.size()) {
        return InternalError("malformed UAPI get reply: data after the empty line {}", line_number);
      }
      break;
    }
    if (errno_value.has_value()) {
      return InternalError("malformed UAPI get reply: line {} follows the errno line", line_number);
    }
    const size_t eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return InternalError("malformed UAPI get reply: line {} is not key=value", line_number);
    }
    const std::string_view key = line.substr(0, eq);
    const std::string_view value = line.substr(eq + 1);
    // Values are quoted in errors except for keys that carry secrets.
    const bool secret = key == "private_key" || key == "preshared_key";
    auto bad = [&](std::string_view why) {
      return InternalError("malformed UAPI get reply: line {} ({}{}{}): {}", line_number,
                           Printable(key, 40), secret ? "" : "=", secret ? "" : Printable(value),
                           why);
    };

    if (key == "errno") {
      errno_value = ParseErrno(value);
      if (!errno_value.has_value()) return bad("not a decimal number");
      continue;
    }
    if (key == "public_key") {
      if (peer.has_value()) RETURN_IF_ERROR(FinishPeer(*peer, device));
      peer.emplace();
      if (!DecodeKeyHex(value, peer->info.public_key).ok()) return bad("not 64 lower-case hex");
      if (!peer_keys.insert(peer->info.public_key).second) return bad("peer listed twice");
      continue;
    }
    if (!peer.has_value()) {
      if (!IsOneOf(key, kDeviceKeyNames)) {
        if (IsOneOf(key, kPeerKeyNames)) return bad("a peer key before any public_key");
        continue;  // unknown device key: skipped, as wg(8) does
      }
      if (!device_seen.insert(key).second) return bad("key repeated");
      if (key == "private_key") {
        SecretBytes private_key(kWireGuardKeySize);
        if (!DecodeKeyHex(value, private_key.MutableReveal(InsecureSecretAccess::Get())).ok()) {
          return bad("not 64 lower-case hex");
        }
        ASSIGN_OR_RETURN(device.public_key, PublicKeyOf(private_key));
      } else if (key == "listen_port") {
        const auto port = ParseDecimal(value, 65535);
        if (!port) return bad("not a port number");
        device.listen_port = static_cast<uint16_t>(*port);
      } else {  // fwmark
        const auto mark = ParseDecimal(value, UINT32_MAX);
        if (!mark) return bad("not a 32-bit decimal");
        device.fwmark = static_cast<uint32_t>(*mark);
      }
      continue;
    }
    // The peer section.
    if (!IsOneOf(key, kPeerKeyNames)) {
      if (IsOneOf(key, kDeviceKeyNames)) return bad("a device key inside a peer section");
      continue;  // unknown peer key: skipped, as wg(8) does
    }
    if (key != "allowed_ip" && !peer->seen.insert(key).second) return bad("key repeated");
    PeerInfo& info = peer->info;
    if (key == "preshared_key") {
      std::array<uint8_t, kWireGuardKeySize> psk{};
      const bool ok = DecodeKeyHex(value, psk).ok();
      info.has_preshared_key = ok && !AllZero(psk);
      SecureWipe(psk);
      if (!ok) return bad("not 64 lower-case hex");
    } else if (key == "protocol_version") {
      if (value != "1") return bad("unsupported protocol version (this client speaks 1)");
    } else if (key == "endpoint") {
      auto endpoint = Endpoint::Parse(value);
      if (!endpoint.ok()) return bad(StatusMessage(endpoint.status()));
      info.endpoint = *endpoint;
    } else if (key == "last_handshake_time_sec") {
      const auto sec = ParseDecimal(value, INT64_MAX);
      if (!sec) return bad("not a decimal");
      peer->handshake_sec = *sec;
    } else if (key == "last_handshake_time_nsec") {
      const auto nsec = ParseDecimal(value, 999'999'999);
      if (!nsec) return bad("not a decimal below 10^9");
      peer->handshake_nsec = *nsec;
    } else if (key == "tx_bytes" || key == "rx_bytes") {
      const auto bytes = ParseDecimal(value, UINT64_MAX);
      if (!bytes) return bad("not a 64-bit decimal");
      (key == "tx_bytes" ? info.tx_bytes : info.rx_bytes) = *bytes;
    } else if (key == "persistent_keepalive_interval") {
      const auto seconds = ParseDecimal(value, 65535);
      if (!seconds) return bad("not a 16-bit decimal");
      info.persistent_keepalive_interval = static_cast<uint16_t>(*seconds);
    } else {  // allowed_ip
      auto cidr = Cidr::Parse(value);
      if (!cidr.ok()) return bad(StatusMessage(cidr.status()));
      info.allowed_ips.push_back(*cidr);
    }
  }
  if (!errno_value.has_value()) {
    return InternalError("malformed UAPI get reply: no errno line");
  }
  RETURN_IF_ERROR(UapiErrnoStatus(*errno_value));
  if (peer.has_value()) RETURN_IF_ERROR(FinishPeer(*peer, device));
  return device;
}

absl::Status ParseSetResponse(std::string_view reply) {
  constexpr std::string_view kPrefix = "errno=";
  std::string_view line = reply;
  if (line.ends_with("\n\n")) {
    line.remove_suffix(2);
  } else {
    return InternalError("malformed UAPI set reply: not a line and an empty line ({} bytes)",
                         reply.size());
  }
  if (!line.starts_with(kPrefix) || line.find('\n') != std::string_view::npos) {
    return InternalError("malformed UAPI set reply \"{}\": want errno=N", Printable(line));
  }
  const auto value = ParseErrno(line.substr(kPrefix.size()));
  if (!value.has_value()) {
    return InternalError("malformed UAPI set reply \"{}\": errno is not a number", Printable(line));
  }
  return UapiErrnoStatus(*value);
}

// ---- UapiClient ----

absl::StatusOr<UapiClient> UapiClient::ForInterface(std::string_view interface_name,
                                                    std::filesystem::path socket_dir,
                                                    UapiOptions options) {
  RETURN_IF_ERROR(CheckInterfaceName(interface_name));
  if (options.timeout <= milliseconds(0)) {
    return InvalidArgumentError("UAPI timeout must be positive");
  }
  std::filesystem::path path = socket_dir / (std::string(interface_name) + ".sock");
  if (path.native().size() >= sizeof(sockaddr_un{}.sun_path)) {
    return InvalidArgumentError("UAPI socket path {} is longer than a unix socket path may be",
                                path.string());
  }
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return SocketPathError(errno, path, interface_name, "looking up");
  }
  if (!S_ISSOCK(st.st_mode)) {
    return FailedPreconditionError("{} exists but is not a unix socket", path.string());
  }
  return UapiClient(std::string(interface_name), std::move(path), options);
}

absl::StatusOr<SecretBytes> UapiClient::Exchange(std::span<const uint8_t> request,
                                                 size_t max_reply) const {
  const auto deadline = steady_clock::now() + options_.timeout;
  Fd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return UnavailableError("socket(AF_UNIX): {}", std::strerror(errno));
  // SO_SNDTIMEO bounds a blocking connect() on a unix socket whose accept backlog is full.
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(options_.timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>(options_.timeout.count() % 1000 * 1000);
  (void)setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& path = socket_path_.native();
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);  // length checked by ForInterface
  while (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    if (errno != EINTR)
      return SocketPathError(errno, socket_path_, interface_name_, "connecting to");
  }
  if (fcntl(fd.get(), F_SETFL, O_NONBLOCK) != 0) {
    return UnavailableError("fcntl(O_NONBLOCK): {}", std::strerror(errno));
  }

  size_t sent = 0;
  while (sent < request.size()) {
    const ssize_t n = send(fd.get(), request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      RETURN_IF_ERROR(WaitFor(fd.get(), POLLOUT, deadline, options_.timeout, socket_path_));
    } else if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
      // wireguard-go stops reading a set at the first line it refuses and then closes the
      // connection; its errno reply may be waiting. Read it.
      break;
    } else {
      return UnavailableError("sending to {}: {}", socket_path_.string(), std::strerror(errno));
    }
  }

  SecretBuffer reply;
  size_t end = std::string_view::npos;
  while (end == std::string_view::npos) {
    if (reply.size() >= max_reply) {
      return MakeStatus(absl::StatusCode::kResourceExhausted, "UAPI reply from {} exceeds {} bytes",
                        socket_path_.string(), max_reply);
    }
    const std::span<uint8_t> tail = reply.Tail(std::min<size_t>(4096, max_reply - reply.size()));
    const ssize_t n = recv(fd.get(), tail.data(), tail.size(), 0);
    if (n > 0) {
      const size_t before = reply.size();
      reply.Commit(static_cast<size_t>(n));
      end = ReplyEnd(reply.view(), before);
    } else if (n == 0) {
      return UnavailableError(
          "{} closed the connection after {} bytes, before the reply ended (wireguard-go "
          "exited?)",
          socket_path_.string(), reply.size());
    } else if (errno == EINTR) {
      continue;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      RETURN_IF_ERROR(WaitFor(fd.get(), POLLIN, deadline, options_.timeout, socket_path_));
    } else {
      return UnavailableError("reading from {}: {}", socket_path_.string(), std::strerror(errno));
    }
  }
  if (end != reply.size()) {
    return InternalError("UAPI reply from {} has {} bytes after its end", socket_path_.string(),
                         reply.size() - end);
  }
  return reply.Take();
}

absl::StatusOr<Device> UapiClient::Get() const {
  // Transport errors name the socket path themselves.
  const std::string context = fmt::format("UAPI get on {}", interface_name_);
  constexpr std::string_view kRequest = "get=1\n\n";
  auto reply = Exchange(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kRequest.data()), kRequest.size()),
      options_.max_response_bytes);
  if (!reply.ok()) return WithContext(reply.status(), context);
  // The reply holds the private key in hex; it stays in `reply` (locked, wiped when freed).
  auto device = ParseGetResponse(AsText(reply->Reveal(InsecureSecretAccess::Get())));
  if (!device.ok()) return WithContext(device.status(), context);
  return device;
}

absl::Status UapiClient::Set(const DeviceUpdate& update) const {
  const std::string context = fmt::format("UAPI set on {}", interface_name_);
  auto request = SerializeSetRequest(update);
  if (!request.ok()) return WithContext(request.status(), context + ": nothing sent");
  constexpr size_t kMaxSetReply = 64;  // "errno=-2147483648\n\n"
  auto reply = Exchange(request->Reveal(InsecureSecretAccess::Get()), kMaxSetReply);
  if (!reply.ok()) return WithContext(reply.status(), context);
  const absl::Status status = ParseSetResponse(AsText(reply->Reveal(InsecureSecretAccess::Get())));
  if (!status.ok() && status.code() != absl::StatusCode::kInternal) {
    return WithContext(status, context +
                                   " (wireguard-go applies a set line by line: the lines before "
                                   "the refused one took effect)");
  }
  return WithContext(status, context);
}

}  // namespace keywarden::net
