// WireGuard for Keywarden's network encryption (DESIGN.md §7): node key pairs, allowed-IP
// prefixes, and a client for the cross-platform userspace API (UAPI) that wireguard-go serves on
// a unix socket, /var/run/wireguard/IFNAME.sock.
//
// The UAPI is the line protocol of https://www.wireguard.com/xplatform/#configuration-protocol
// ("get=1" / "set=1", then key=value lines, an empty line, and an "errno=N" reply). What this
// client sends and accepts follows wireguard-go's device/uapi.go (IpcHandle, IpcGetOperation,
// IpcSetOperation) and the reference consumer, wireguard-tools' src/ipc-uapi.h; docs/network.md
// describes the choices made here. Netlink (the kernel module) is not spoken: issue 7 targets
// wireguard-go.
//
// Typical use:
//
//   ASSIGN_OR_RETURN(net::KeyPair keys, net::GenerateKeyPair());
//   ASSIGN_OR_RETURN(net::UapiClient wg, net::UapiClient::ForInterface("kw0"));
//   net::DeviceUpdate update;
//   update.private_key = keys.private_key().Clone();
//   update.listen_port = 51820;
//   net::PeerUpdate& peer = update.peers.emplace_back();
//   peer.public_key = other_public_key;
//   ASSIGN_OR_RETURN(peer.endpoint, net::Endpoint::Parse("192.0.2.7:51820"));
//   peer.replace_allowed_ips = true;
//   peer.allowed_ips.push_back(net::Cidr::Host(other_tunnel_address));
//   RETURN_IF_ERROR(wg.Set(update));
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/crypto/x25519.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::net {

// ---- Keys -------------------------------------------------------------------------------------

// kWireGuardKeySize is the size of every WireGuard key: Curve25519 private and public keys and
// the optional preshared key.
inline constexpr size_t kWireGuardKeySize = 32;

// PublicKey is a node's Curve25519 public key (RFC 7748 u-coordinate, 32 bytes little-endian).
using PublicKey = crypto::X25519PublicKey;

// KeyPair is a node's Curve25519 key pair; the private key sits in SecretBytes, clamped
// (RFC 7748 §5) as WireGuard stores it. The X25519 arithmetic lives in keywarden_crypto (the
// only module that touches OpenSSL, STYLE.md "Layout"); this module reuses it.
using KeyPair = crypto::X25519KeyPair;

// GenerateKeyPair makes a fresh key pair from the CSPRNG (what `wg genkey | wg pubkey` does).
// Security: the private key never leaves SecretBytes; it reaches the interface only through
// UapiClient::Set.
absl::StatusOr<KeyPair> GenerateKeyPair();

// PublicKeyOf returns X25519(clamp(private_key), 9), the public key WireGuard derives from a
// 32-byte private key (clamped or not). INVALID_ARGUMENT for any other size.
absl::StatusOr<PublicKey> PublicKeyOf(const SecretBytes& private_key);

// PublicKeyToBase64 returns WireGuard's text form (`wg show`, wg-quick files): standard base64
// with padding, 44 characters.
std::string PublicKeyToBase64(const PublicKey& key);
// PublicKeyFromBase64 accepts exactly that form; wrong lengths, whitespace, bad padding and
// non-canonical trailing bits are INVALID_ARGUMENT.
absl::StatusOr<PublicKey> PublicKeyFromBase64(std::string_view text);
// PublicKeyToHex returns the UAPI form: 64 lower-case hex digits.
std::string PublicKeyToHex(const PublicKey& key);
// PublicKeyFromHex accepts exactly 64 lower-case hex digits (the UAPI's form); anything else,
// upper case included, is INVALID_ARGUMENT.
absl::StatusOr<PublicKey> PublicKeyFromHex(std::string_view text);

// The private-key codecs keep every byte, input and output, in SecretBytes. They take and
// return the key bytes as they are (no clamping; WireGuard clamps when it uses the key).
// INVALID_ARGUMENT when the key is not 32 bytes or the text is not the strict form above.
absl::StatusOr<SecretBytes> PrivateKeyToBase64(const SecretBytes& private_key);
absl::StatusOr<SecretBytes> PrivateKeyFromBase64(std::string_view text);
absl::StatusOr<SecretBytes> PrivateKeyToHex(const SecretBytes& private_key);
absl::StatusOr<SecretBytes> PrivateKeyFromHex(std::string_view text);

// ---- Addresses --------------------------------------------------------------------------------

// IpAddress is an IPv4 or IPv6 address (no zone). Comparable and ordered (IPv4 first).
class IpAddress {
 public:
  enum class Family { kIPv4, kIPv6 };

  // IpAddress() is 0.0.0.0.
  IpAddress() = default;
  // Parse accepts dotted-quad IPv4 (four decimal parts 0-255, no leading zeros) or IPv6 text
  // (inet_pton(3): hex groups, "::", an embedded dotted quad); no zone ("%eth0"), no brackets,
  // no surrounding whitespace. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<IpAddress> Parse(std::string_view text);
  static IpAddress V4(const std::array<uint8_t, 4>& bytes);
  static IpAddress V6(const std::array<uint8_t, 16>& bytes);

  Family family() const { return family_; }
  bool is_v4() const { return family_ == Family::kIPv4; }
  // bit_length is 32 or 128.
  int bit_length() const { return is_v4() ? 32 : 128; }
  // bytes are the 4 or 16 address bytes in network order.
  std::span<const uint8_t> bytes() const { return {bytes_.data(), is_v4() ? 4u : 16u}; }

  // ToString returns the canonical text: dotted quad, or RFC 5952 §4 for IPv6 (lower case,
  // longest run of two or more zero groups as "::", leftmost on a tie) with IPv4-mapped
  // addresses as ::ffff:a.b.c.d (§5) — the form wireguard-go's netip prints.
  std::string ToString() const;

  friend bool operator==(const IpAddress&, const IpAddress&) = default;
  friend auto operator<=>(const IpAddress&, const IpAddress&) = default;

 private:
  Family family_ = Family::kIPv4;
  std::array<uint8_t, 16> bytes_{};  // IPv4 uses the first 4
};

// Cidr is an address prefix such as an allowed IP ("10.78.0.2/32", "fd78::/64").
//
// Always canonical: the host bits (those past the prefix length) are zero. Parse refuses
// "10.0.0.5/24" instead of silently masking it, because WireGuard masks allowed IPs on insert
// (wireguard-go's allowedips, the kernel's allowedips.c) and reports the masked prefix in a
// get: a non-canonical desired state would never equal the interface's actual state, and a
// typo in a host part would widen a peer's allowed range unnoticed.
class Cidr {
 public:
  // Cidr() is 0.0.0.0/0.
  Cidr() = default;
  // Parse accepts ADDRESS/LENGTH with ADDRESS as IpAddress::Parse takes it and LENGTH a decimal
  // 0-32 (IPv4) or 0-128 (IPv6) without sign or leading zeros. The length is required (a bare
  // address is refused: write /32 or /128). INVALID_ARGUMENT, naming the canonical network,
  // when host bits are set.
  static absl::StatusOr<Cidr> Parse(std::string_view text);
  // Make checks the same rules for an address and length given separately.
  static absl::StatusOr<Cidr> Make(const IpAddress& address, int prefix_length);
  // Host returns the single-address prefix /32 or /128.
  static Cidr Host(const IpAddress& address);

  const IpAddress& address() const { return address_; }
  int prefix_length() const { return prefix_length_; }
  // Contains says whether `address` (of the same family) lies inside the prefix.
  bool Contains(const IpAddress& address) const;
  // ToString returns ADDRESS/LENGTH in canonical form; Parse(ToString()) == *this.
  std::string ToString() const;

  friend bool operator==(const Cidr&, const Cidr&) = default;
  friend auto operator<=>(const Cidr&, const Cidr&) = default;

 private:
  Cidr(const IpAddress& address, int prefix_length)
      : address_(address), prefix_length_(prefix_length) {}
  IpAddress address_;
  int prefix_length_ = 0;
};

// Endpoint is a peer's UDP address: an IP literal and a port (host names are resolved by the
// caller, not by the UAPI client).
struct Endpoint {
  IpAddress address;
  uint16_t port = 0;

  // Parse accepts "a.b.c.d:port" or "[ipv6]:port" with a decimal port 1-65535 (no leading
  // zeros) — the form wireguard-go prints. INVALID_ARGUMENT otherwise.
  static absl::StatusOr<Endpoint> Parse(std::string_view text);
  std::string ToString() const;

  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

// ---- UAPI -------------------------------------------------------------------------------------

// kDefaultUapiSocketDir is where wireguard-go creates IFNAME.sock on Linux.
inline constexpr std::string_view kDefaultUapiSocketDir = "/var/run/wireguard";

// PeerInfo is one peer as a get reports it.
struct PeerInfo {
  PublicKey public_key{};
  // has_preshared_key is true when a (non-zero) preshared key is set; the key itself is never
  // returned.
  bool has_preshared_key = false;
  // endpoint is the peer's current UDP address (configured, or learnt from its packets).
  std::optional<Endpoint> endpoint;
  std::vector<Cidr> allowed_ips;
  // last_handshake is the time of the most recent completed handshake; nullopt when none.
  std::optional<std::chrono::system_clock::time_point> last_handshake;
  uint64_t rx_bytes = 0;
  uint64_t tx_bytes = 0;
  // persistent_keepalive_interval is in seconds; 0 means off.
  uint16_t persistent_keepalive_interval = 0;
};

// Device is an interface's configuration and state as a get reports it.
//
// Security: a get returns the interface's private key (and preshared keys) in hex. The client
// reads the reply into locked memory, derives the public key from the private key and wipes the
// reply; the private key is not part of Device. A caller that needs the private key is the one
// that generated it and still holds it; everybody else (status pages, `net status`, logs,
// comparisons against the cluster registry) needs only the public key.
struct Device {
  // public_key is derived from the interface's private key; nullopt when none is set.
  std::optional<PublicKey> public_key;
  bool has_private_key() const { return public_key.has_value(); }
  // listen_port is the UDP port the interface is bound to; 0 when it is not bound.
  uint16_t listen_port = 0;
  // fwmark is the mark put on the interface's UDP packets; 0 when none.
  uint32_t fwmark = 0;
  // peers come in wireguard-go's (unspecified) order.
  std::vector<PeerInfo> peers;

  // FindPeer returns the peer with `key`, or nullptr.
  const PeerInfo* FindPeer(const PublicKey& key) const;
};

// PeerUpdate adds, changes or removes one peer.
struct PeerUpdate {
  PublicKey public_key{};
  // remove deletes the peer (if present). A removal carries no other field.
  bool remove = false;
  // update_only applies the other fields only if the peer exists; it is never created.
  bool update_only = false;
  // preshared_key sets the peer's preshared key (32 bytes); 32 zero bytes clear it.
  std::optional<SecretBytes> preshared_key;
  std::optional<Endpoint> endpoint;
  // persistent_keepalive_interval in seconds; 0 turns it off.
  std::optional<uint16_t> persistent_keepalive_interval;
  // replace_allowed_ips drops the peer's allowed IPs before adding `allowed_ips`; without it
  // `allowed_ips` are added to the existing ones. An allowed IP moves to this peer from any
  // other peer that had it (WireGuard's cryptokey routing maps each prefix to one peer).
  bool replace_allowed_ips = false;
  std::vector<Cidr> allowed_ips;
};

// DeviceUpdate is one set operation. Fields left unset are not changed.
struct DeviceUpdate {
  // private_key replaces the interface's private key (32 bytes, non-zero). Sessions keyed with
  // the old key end at once; peers must learn the new public key before they can handshake.
  std::optional<SecretBytes> private_key;
  // listen_port rebinds the interface's UDP socket (0 picks a free port).
  std::optional<uint16_t> listen_port;
  // fwmark sets the mark (0 removes it).
  std::optional<uint32_t> fwmark;
  // replace_peers removes every existing peer before `peers` are applied.
  bool replace_peers = false;
  std::vector<PeerUpdate> peers;
};

// UapiOptions bound every operation of a UapiClient.
struct UapiOptions {
  // timeout bounds one whole operation (connect, request, reply). wireguard-go answers in
  // microseconds; the bound exists for a wedged or malicious socket owner.
  std::chrono::milliseconds timeout = std::chrono::seconds(5);
  // max_response_bytes bounds a get reply (~400 bytes per peer with one allowed IP; the
  // default fits thousands of peers).
  size_t max_response_bytes = size_t{4} << 20;
};

// UapiClient configures one wireguard-go interface through its UAPI socket.
//
// Each Get and Set opens its own connection, sends one request and reads one reply, so a
// UapiClient is immutable and safe to use from several threads (wireguard-go serialises
// operations with its ipcMutex). Errors:
//   NOT_FOUND          no socket at socket_path() (no such interface, or wireguard-go is not
//                      running for it); the message names the path.
//   PERMISSION_DENIED  the socket (root-only, mode 0700 under wireguard-go's umask) cannot be
//                      opened by this process.
//   UNAVAILABLE        the socket exists but nobody accepts (a stale socket of a wireguard-go
//                      that died), or the connection closed early.
//   DEADLINE_EXCEEDED  no complete reply within UapiOptions::timeout.
//   RESOURCE_EXHAUSTED a reply longer than UapiOptions::max_response_bytes.
//   FAILED_PRECONDITION the socket path is not a socket; errno=-EADDRINUSE (listen port taken).
//   INVALID_ARGUMENT   an update this client refuses to send (checked before connecting, so
//                      nothing has changed), or errno=-EINVAL from wireguard-go.
//   others             an errno from wireguard-go (message: the number and its meaning) or a
//                      malformed reply (INTERNAL).
// Messages never contain key bytes.
class UapiClient {
 public:
  // ForInterface checks `interface_name` (a Linux interface name: 1-15 printable characters,
  // no '/', ':' or whitespace, not "." or "..") and that `socket_dir`/NAME.sock exists and is a
  // socket.
  static absl::StatusOr<UapiClient> ForInterface(
      std::string_view interface_name,
      std::filesystem::path socket_dir = std::filesystem::path(kDefaultUapiSocketDir),
      UapiOptions options = {});

  // Get reads the interface's configuration and peer state.
  absl::StatusOr<Device> Get() const;

  // Set applies `update` in one set operation. The update is checked first (ValidateUpdate);
  // a refused update sends nothing.
  //
  // Not atomic on the server: wireguard-go applies the lines in order and stops at the first
  // it refuses, leaving the earlier ones applied. Set therefore sends listen_port first (the
  // one check only the server can make: is the port free?) so that a port conflict fails
  // before anything else changes. Note that a refused listen_port leaves wireguard-go unbound
  // (listen_port 0 in a get) until a port is set again (tests/net_wireguard_test.cc).
  absl::Status Set(const DeviceUpdate& update) const;

  const std::string& interface_name() const { return interface_name_; }
  const std::filesystem::path& socket_path() const { return socket_path_; }

 private:
  UapiClient(std::string interface_name, std::filesystem::path socket_path, UapiOptions options)
      : interface_name_(std::move(interface_name)),
        socket_path_(std::move(socket_path)),
        options_(options) {}

  // Exchange sends `request` and returns the reply up to and including its empty line, in
  // locked memory.
  absl::StatusOr<SecretBytes> Exchange(std::span<const uint8_t> request, size_t max_reply) const;

  std::string interface_name_;
  std::filesystem::path socket_path_;
  UapiOptions options_;
};

// ---- The UAPI text, for tests and fuzzing -----------------------------------------------------

// ValidateUpdate checks what the client can check before sending: key sizes, a non-zero private
// key, non-zero peer keys, no peer named twice, a removal without other fields, an endpoint
// port, no allowed IP given to two peers, no peer equal to the device's own new public key.
absl::Status ValidateUpdate(const DeviceUpdate& update);

// SerializeSetRequest returns the complete set request ("set=1\n" ... "\n") in locked memory
// (it carries the private and preshared keys in hex). Order: listen_port, fwmark, private_key,
// replace_peers, then per peer public_key, update_only | remove, preshared_key, endpoint,
// persistent_keepalive_interval, replace_allowed_ips, allowed_ip...
absl::StatusOr<SecretBytes> SerializeSetRequest(const DeviceUpdate& update);

// ParseGetResponse parses a get reply: key=value lines, "errno=N" last, then the empty line
// (which may be absent from `reply`). Known keys must be well formed and in their section
// (device keys before the first public_key); keys this client does not know are skipped, as
// wg(8) does, so that newer or extended implementations stay readable. A non-zero errno is an
// error naming the number and its meaning.
absl::StatusOr<Device> ParseGetResponse(std::string_view reply);

// ParseSetResponse accepts exactly "errno=0\n\n"; "errno=N" with N != 0 is an error naming the
// number and its meaning; anything else is INTERNAL.
absl::Status ParseSetResponse(std::string_view reply);

// UapiErrnoStatus maps an errno value from wireguard-go (which sends it negated, e.g. -22) to a
// status whose message names the number, the symbol and its meaning.
absl::Status UapiErrnoStatus(int64_t errno_value);

}  // namespace keywarden::net
