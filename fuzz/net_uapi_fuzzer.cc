// Fuzzes what the WireGuard module reads from wireguard-go's UAPI socket and from configuration
// (include/keywarden/net/wireguard.h): get and set replies, and the IpAddress / Cidr / Endpoint
// parsers. The first input byte picks the parser.
// Invariants: no crash; an accepted address, prefix or endpoint formats to text that parses back
// to the same value, and IPv4 text is accepted only in its canonical form (so it formats back to
// the input); a prefix has no host bits set; a parsed get reply, written back in wireguard-go's
// format, parses to the same device; a set reply is accepted only as "errno=0\n\n"; errors are
// never OK and their messages printable ASCII.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "keywarden/crypto/encoding.h"
#include "keywarden/net/wireguard.h"

namespace {

namespace net = keywarden::net;

void Check(bool ok) {
  if (!ok) std::abort();
}

bool Printable(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && static_cast<unsigned char>(c) < 0x7f;
  });
}

// Printable(status) checks a status's message (absl::string_view is not std::string_view here).
bool Printable(const absl::Status& status) {
  return Printable(std::string_view(status.message().data(), status.message().size()));
}

void CheckAddress(std::string_view text) {
  auto address = net::IpAddress::Parse(text);
  if (!address.ok()) {
    Check(address.status().code() == absl::StatusCode::kInvalidArgument &&
          Printable(address.status()));
    return;
  }
  const std::string formatted = address->ToString();
  auto again = net::IpAddress::Parse(formatted);
  Check(again.ok() && *again == *address && again->ToString() == formatted);
  if (address->is_v4()) Check(formatted == text);
  Check(address->bytes().size() == (address->is_v4() ? 4u : 16u));
}

void CheckCidr(std::string_view text) {
  auto cidr = net::Cidr::Parse(text);
  if (!cidr.ok()) {
    Check(cidr.status().code() == absl::StatusCode::kInvalidArgument && Printable(cidr.status()));
    return;
  }
  const std::string formatted = cidr->ToString();
  auto again = net::Cidr::Parse(formatted);
  Check(again.ok() && *again == *cidr && again->ToString() == formatted);
  if (cidr->address().is_v4()) Check(formatted == text);
  Check(cidr->prefix_length() >= 0 && cidr->prefix_length() <= cidr->address().bit_length());
  // Canonical: the network address lies in its own prefix and Make accepts it as it is.
  Check(cidr->Contains(cidr->address()));
  auto made = net::Cidr::Make(cidr->address(), cidr->prefix_length());
  Check(made.ok() && *made == *cidr);
}

void CheckEndpoint(std::string_view text) {
  auto endpoint = net::Endpoint::Parse(text);
  if (!endpoint.ok()) {
    Check(endpoint.status().code() == absl::StatusCode::kInvalidArgument &&
          Printable(endpoint.status()));
    return;
  }
  Check(endpoint->port != 0);
  const std::string formatted = endpoint->ToString();
  auto again = net::Endpoint::Parse(formatted);
  Check(again.ok() && *again == *endpoint && again->ToString() == formatted);
  if (endpoint->address.is_v4()) Check(formatted == text);
}

// FormatGetReply writes `device` as wireguard-go answers get=1 (without the private key, which
// Device does not keep).
std::string FormatGetReply(const net::Device& device) {
  std::string out;
  out += "listen_port=" + std::to_string(device.listen_port) + "\n";
  if (device.fwmark != 0) out += "fwmark=" + std::to_string(device.fwmark) + "\n";
  for (const net::PeerInfo& peer : device.peers) {
    out += "public_key=" + net::PublicKeyToHex(peer.public_key) + "\n";
    if (peer.has_preshared_key) out += "preshared_key=" + std::string(64, '1') + "\n";
    out += "protocol_version=1\n";
    if (peer.endpoint.has_value()) out += "endpoint=" + peer.endpoint->ToString() + "\n";
    if (peer.last_handshake.has_value()) {
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                          peer.last_handshake->time_since_epoch())
                          .count();
      out += "last_handshake_time_sec=" + std::to_string(ns / 1'000'000'000) + "\n";
      out += "last_handshake_time_nsec=" + std::to_string(ns % 1'000'000'000) + "\n";
    } else {
      out += "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n";
    }
    out += "tx_bytes=" + std::to_string(peer.tx_bytes) + "\n";
    out += "rx_bytes=" + std::to_string(peer.rx_bytes) + "\n";
    out += "persistent_keepalive_interval=" + std::to_string(peer.persistent_keepalive_interval) +
           "\n";
    for (const net::Cidr& cidr : peer.allowed_ips) out += "allowed_ip=" + cidr.ToString() + "\n";
  }
  out += "errno=0\n\n";
  return out;
}

bool SamePeer(const net::PeerInfo& a, const net::PeerInfo& b) {
  return a.public_key == b.public_key && a.has_preshared_key == b.has_preshared_key &&
         a.endpoint == b.endpoint && a.allowed_ips == b.allowed_ips &&
         a.last_handshake == b.last_handshake && a.rx_bytes == b.rx_bytes &&
         a.tx_bytes == b.tx_bytes &&
         a.persistent_keepalive_interval == b.persistent_keepalive_interval;
}

void CheckGetReply(std::string_view text) {
  auto device = net::ParseGetResponse(text);
  if (!device.ok()) {
    Check(Printable(device.status()));
    return;
  }
  for (const net::PeerInfo& peer : device->peers) {
    Check(device->FindPeer(peer.public_key) == &peer);  // peers are distinct
    for (const net::Cidr& cidr : peer.allowed_ips) {
      Check(net::Cidr::Parse(cidr.ToString()).ok());
    }
  }
  auto again = net::ParseGetResponse(FormatGetReply(*device));
  Check(again.ok());
  Check(again->listen_port == device->listen_port && again->fwmark == device->fwmark);
  Check(!again->public_key.has_value());
  Check(again->peers.size() == device->peers.size());
  for (size_t i = 0; i < device->peers.size(); ++i) {
    Check(SamePeer(again->peers[i], device->peers[i]));
  }
}

void CheckSetReply(std::string_view text) {
  const absl::Status status = net::ParseSetResponse(text);
  if (status.ok()) {
    Check(text == "errno=0\n\n");
  } else {
    Check(Printable(status));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 5) {
    case 0:
      CheckGetReply(text);
      break;
    case 1:
      CheckSetReply(text);
      break;
    case 2:
      CheckAddress(text);
      break;
    case 3:
      CheckCidr(text);
      break;
    case 4:
      CheckEndpoint(text);
      break;
  }
  return 0;
}
