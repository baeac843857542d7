// Unit tests for src/net/wireguard.cc: keys against RFC 7748 §6.1, the strict codecs, prefixes
// and endpoints, the UAPI text against what wg(8) sends and wireguard-go replies (captured in
// tests/data/net/), and UapiClient against fake sockets (timeouts, bounds, errors).
#include "keywarden/net/wireguard.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"
#include "tests/subprocess.h"

namespace keywarden::net {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

// ---- Test data ----

fs::path DataPath(std::string_view name) {
  return fs::path(KEYWARDEN_SOURCE_DIR) / "tests" / "data" / "net" / name;
}

std::string ReadData(std::string_view name) {
  const auto text = keywarden::testing::ReadFile(DataPath(name));
  if (!text.has_value()) ADD_FAILURE() << "cannot read " << DataPath(name);
  return text.value_or("");
}

std::vector<uint8_t> Hex(std::string_view hex) {
  auto bytes = crypto::HexDecode(hex);
  EXPECT_TRUE(bytes.ok()) << bytes.status();
  return bytes.value_or(std::vector<uint8_t>{});
}

PublicKey Key(std::string_view hex) {
  auto key = PublicKeyFromHex(hex);
  EXPECT_TRUE(key.ok()) << key.status();
  return key.value_or(PublicKey{});
}

SecretBytes Secret(std::string_view hex) { return SecretBytes(Hex(hex)); }

std::string Text(const SecretBytes& secret) {
  const auto bytes = secret.Reveal(InsecureSecretAccess::Get());
  return std::string(bytes.begin(), bytes.end());
}

struct Rfc7748 {
  std::string alice_private, alice_public, bob_private, bob_public, shared_secret;
};

Rfc7748 LoadRfc7748() {
  const nlohmann::json doc = nlohmann::json::parse(ReadData("rfc7748_x25519.json"));
  return {doc.at("alice_private"), doc.at("alice_public"), doc.at("bob_private"),
          doc.at("bob_public"), doc.at("shared_secret")};
}

// ---- Keys ----

TEST(WireGuardKeysTest, Rfc7748Section61) {
  const Rfc7748 v = LoadRfc7748();
  ASSERT_EQ(v.alice_private.size(), 64u);

  for (const auto& [priv, pub] :
       {std::pair{v.alice_private, v.alice_public}, std::pair{v.bob_private, v.bob_public}}) {
    // The public key of the private key as given (not clamped) ...
    auto public_key = PublicKeyOf(Secret(priv));
    ASSERT_TRUE(public_key.ok()) << public_key.status();
    EXPECT_EQ(PublicKeyToHex(*public_key), pub);
    // ... and of the clamped key WireGuard stores are the same.
    auto pair = KeyPair::FromPrivateKey(Secret(priv));
    ASSERT_TRUE(pair.ok()) << pair.status();
    const auto stored = pair->private_key().Reveal(InsecureSecretAccess::Get());
    std::vector<uint8_t> clamped = Hex(priv);
    clamped[0] &= 248;
    clamped[31] = static_cast<uint8_t>((clamped[31] & 127) | 64);
    EXPECT_EQ(std::vector<uint8_t>(stored.begin(), stored.end()), clamped);
    EXPECT_EQ(PublicKeyToHex(pair->public_key()), pub);
  }

  // Both sides compute the same shared secret K.
  auto alice = KeyPair::FromPrivateKey(Secret(v.alice_private));
  auto bob = KeyPair::FromPrivateKey(Secret(v.bob_private));
  ASSERT_TRUE(alice.ok() && bob.ok());
  auto k1 = alice->SharedSecret(Key(v.bob_public));
  auto k2 = bob->SharedSecret(Key(v.alice_public));
  ASSERT_TRUE(k1.ok() && k2.ok());
  EXPECT_EQ(crypto::HexEncode(k1->Reveal(InsecureSecretAccess::Get())), v.shared_secret);
  EXPECT_EQ(crypto::HexEncode(k2->Reveal(InsecureSecretAccess::Get())), v.shared_secret);

  // WireGuard's text form of the RFC keys (what `wg pubkey` prints, README.md).
  EXPECT_EQ(PublicKeyToBase64(Key(v.alice_public)), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
}

TEST(WireGuardKeysTest, GenerateKeyPairIsClampedAndFresh) {
  auto a = GenerateKeyPair();
  auto b = GenerateKeyPair();
  ASSERT_TRUE(a.ok() && b.ok());
  const auto k = a->private_key().Reveal(InsecureSecretAccess::Get());
  ASSERT_EQ(k.size(), kWireGuardKeySize);
  EXPECT_EQ(k[0] & 7, 0);
  EXPECT_EQ(k[31] & 0x80, 0);
  EXPECT_EQ(k[31] & 0x40, 0x40);
  auto derived = PublicKeyOf(a->private_key());
  ASSERT_TRUE(derived.ok());
  EXPECT_EQ(*derived, a->public_key());
  EXPECT_NE(a->public_key(), b->public_key());
}

TEST(WireGuardKeysTest, PublicKeyOfRefusesWrongSizes) {
  for (size_t size : {0, 31, 33, 64}) {
    EXPECT_EQ(PublicKeyOf(SecretBytes(size)).status().code(), absl::StatusCode::kInvalidArgument)
        << size;
  }
}

TEST(WireGuardKeysTest, Base64IsStrict) {
  const Rfc7748 v = LoadRfc7748();
  const PublicKey key = Key(v.bob_public);
  const std::string text = PublicKeyToBase64(key);
  ASSERT_EQ(text, "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=");
  auto back = PublicKeyFromBase64(text);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, key);

  const std::vector<std::string> bad = {
      "",
      text.substr(0, 43),                              // truncated
      text + "=",                                      // too long
      " " + text.substr(1),                            // whitespace
      text.substr(0, 42) + "9=",                       // non-canonical trailing bits
      text.substr(0, 43) + "A",                        // missing padding: decodes to 33 bytes
      "3p7bfXt9wbTTW2HC7OQ1Nz-DQ8hbeGdNrfx_FG-IK08=",  // URL-safe alphabet
      crypto::Base64Encode(std::vector<uint8_t>(31, 1)),
  };
  for (const std::string& b : bad) {
    EXPECT_EQ(PublicKeyFromBase64(b).status().code(), absl::StatusCode::kInvalidArgument) << b;
    EXPECT_FALSE(PrivateKeyFromBase64(b).ok()) << b;
  }

  auto priv_text = PrivateKeyToBase64(Secret(v.alice_private));
  ASSERT_TRUE(priv_text.ok());
  EXPECT_EQ(Text(*priv_text), "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=");
  auto priv = PrivateKeyFromBase64(Text(*priv_text));
  ASSERT_TRUE(priv.ok());
  EXPECT_EQ(crypto::HexEncode(priv->Reveal(InsecureSecretAccess::Get())), v.alice_private);
  EXPECT_FALSE(PrivateKeyToBase64(SecretBytes(31)).ok());
}

TEST(WireGuardKeysTest, HexIsStrictLowerCase) {
  const Rfc7748 v = LoadRfc7748();
  const PublicKey key = Key(v.alice_public);
  EXPECT_EQ(PublicKeyToHex(key), v.alice_public);

  std::string upper = v.alice_public;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::vector<std::string> bad = {
      "",
      v.alice_public.substr(0, 63),
      v.alice_public + "0",
      v.alice_public.substr(0, 62),
      upper,
      v.alice_public.substr(0, 63) + "g",
      " " + v.alice_public.substr(1),
      v.alice_public.substr(0, 32) + "\n" + v.alice_public.substr(33)};
  for (const std::string& b : bad) {
    EXPECT_EQ(PublicKeyFromHex(b).status().code(), absl::StatusCode::kInvalidArgument) << b;
    EXPECT_EQ(PrivateKeyFromHex(b).status().code(), absl::StatusCode::kInvalidArgument) << b;
  }

  auto hex = PrivateKeyToHex(Secret(v.bob_private));
  ASSERT_TRUE(hex.ok());
  EXPECT_EQ(Text(*hex), v.bob_private);
  auto priv = PrivateKeyFromHex(Text(*hex));
  ASSERT_TRUE(priv.ok());
  EXPECT_EQ(crypto::HexEncode(priv->Reveal(InsecureSecretAccess::Get())), v.bob_private);
  EXPECT_FALSE(PrivateKeyToHex(SecretBytes(33)).ok());

  // A refused private key is never quoted in the message.
  const std::string almost = v.bob_private.substr(0, 63) + "G";
  auto refused = PrivateKeyFromHex(almost);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(StatusMessage(refused.status()), Not(HasSubstr(v.bob_private.substr(0, 16))));
}

// ---- Addresses ----

TEST(IpAddressTest, CanonicalText) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"10.78.0.1", "10.78.0.1"},
      {"0.0.0.0", "0.0.0.0"},
      {"255.255.255.255", "255.255.255.255"},
      {"fd78:0:0:0:0:0:0:1", "fd78::1"},
      {"FD78::AB", "fd78::ab"},
      {"2001:0db8::0001", "2001:db8::1"},
      {"2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"},     // leftmost of two equal runs
      {"2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"},  // a single zero group stays
      {"2001:0:0:1:0:0:0:1", "2001:0:0:1::1"},           // the longer run
      {"::", "::"},
      {"::1", "::1"},
      {"1::", "1::"},
      {"::ffff:1.2.3.4", "::ffff:1.2.3.4"},
      {"::ffff:0102:0304", "::ffff:1.2.3.4"},
      {"::1.2.3.4", "::102:304"},
  };
  for (const auto& [in, want] : cases) {
    auto address = IpAddress::Parse(in);
    ASSERT_TRUE(address.ok()) << in << ": " << address.status();
    EXPECT_EQ(address->ToString(), want) << in;
    auto again = IpAddress::Parse(want);
    ASSERT_TRUE(again.ok()) << want;
    EXPECT_EQ(*again, *address) << in;
  }
  EXPECT_TRUE(IpAddress::Parse("10.0.0.1")->is_v4());
  EXPECT_FALSE(IpAddress::Parse("::ffff:10.0.0.1")->is_v4());
  EXPECT_LT(*IpAddress::Parse("255.255.255.255"), *IpAddress::Parse("::"));
}

TEST(IpAddressTest, RefusesNonCanonicalOrForeignForms) {
  for (const char* bad :
       {"", "01.2.3.4", "1.2.3", "1.2.3.4.5", "256.0.0.1", "0x1.2.3.4", " 1.2.3.4", "1.2.3.4 ",
        "fe80::1%eth0", "[::1]", "1::2::3", "::ffff:01.2.3.4", "12345::", "localhost", "1.2.3.4/32",
        "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255x"}) {
    EXPECT_EQ(IpAddress::Parse(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(CidrTest, ParsesCanonicalPrefixes) {
  for (const char* text :
       {"10.78.0.2/32", "10.78.0.0/24", "0.0.0.0/0", "10.0.0.0/8", "fd78::/64", "fd78::2/128",
        "::/0", "2001:db8::/32", "10.78.0.128/25", "::ffff:1.2.3.4/128"}) {
    auto cidr = Cidr::Parse(text);
    ASSERT_TRUE(cidr.ok()) << text << ": " << cidr.status();
    EXPECT_EQ(cidr->ToString(), text);
    EXPECT_EQ(*Cidr::Parse(cidr->ToString()), *cidr);
  }
  auto upper = Cidr::Parse("FD78:0::/64");
  ASSERT_TRUE(upper.ok());
  EXPECT_EQ(upper->ToString(), "fd78::/64");
}

TEST(CidrTest, RefusesHostBitsAndNamesTheNetwork) {
  auto v4 = Cidr::Parse("10.78.0.5/24");
  ASSERT_EQ(v4.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusMessage(v4.status()), HasSubstr("10.78.0.0/24"));
  auto v6 = Cidr::Parse("fd78::2/64");
  ASSERT_EQ(v6.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusMessage(v6.status()), HasSubstr("fd78::/64"));
  EXPECT_FALSE(Cidr::Parse("10.78.0.129/25").ok());
  EXPECT_FALSE(Cidr::Parse("0.0.0.1/0").ok());
}

TEST(CidrTest, RefusesMalformedLengths) {
  for (const char* bad : {"10.0.0.1", "10.0.0.1/", "10.0.0.1/33", "fd78::1/129", "10.0.0.0/08",
                          "10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.0/8/8", "/8", "10.0.0.0/ 8",
                          "10.0.0.0/8 ", "10.0.0.0/99999999999999999999999"}) {
    EXPECT_EQ(Cidr::Parse(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(Cidr::Make(*IpAddress::Parse("10.0.0.0"), 33).ok());
  EXPECT_FALSE(Cidr::Make(*IpAddress::Parse("10.0.0.0"), -1).ok());
}

TEST(CidrTest, HostAndContains) {
  const IpAddress a = *IpAddress::Parse("10.78.0.2");
  EXPECT_EQ(Cidr::Host(a).ToString(), "10.78.0.2/32");
  EXPECT_EQ(Cidr::Host(*IpAddress::Parse("fd78::2")).ToString(), "fd78::2/128");
  const Cidr net = *Cidr::Parse("10.78.0.0/24");
  EXPECT_TRUE(net.Contains(a));
  EXPECT_FALSE(net.Contains(*IpAddress::Parse("10.78.1.2")));
  EXPECT_FALSE(net.Contains(*IpAddress::Parse("::ffff:10.78.0.2")));  // other family
  EXPECT_TRUE(Cidr::Parse("0.0.0.0/0")->Contains(a));
  const Cidr odd = *Cidr::Parse("10.78.0.128/25");
  EXPECT_TRUE(odd.Contains(*IpAddress::Parse("10.78.0.200")));
  EXPECT_FALSE(odd.Contains(*IpAddress::Parse("10.78.0.127")));
  EXPECT_TRUE(Cidr::Parse("fd78::/64")->Contains(*IpAddress::Parse("fd78::ffff:1")));
  EXPECT_FALSE(Cidr::Parse("fd78::/64")->Contains(*IpAddress::Parse("fd78:0:0:1::1")));
}

TEST(EndpointTest, TextAfterANulIsNotIgnored) {
  // Found by fuzz/net_uapi_fuzzer.cc: inet_pton stopped at the NUL.
  using namespace std::string_view_literals;
  EXPECT_FALSE(IpAddress::Parse("192.0.2.7\0junk"sv).ok());
  EXPECT_FALSE(Endpoint::Parse("192.0.2.7\0\0:51820"sv).ok());
  EXPECT_FALSE(Cidr::Parse("10.0.0.0\0/8"sv).ok());
}

TEST(EndpointTest, ParsesAndFormats) {
  for (const char* text :
       {"192.0.2.7:51820", "[2001:db8::7]:51820", "[::ffff:1.2.3.4]:1", "10.0.0.1:65535"}) {
    auto endpoint = Endpoint::Parse(text);
    ASSERT_TRUE(endpoint.ok()) << text << ": " << endpoint.status();
    EXPECT_EQ(endpoint->ToString(), text);
  }
  for (const char* bad :
       {"", "192.0.2.7", "192.0.2.7:", "192.0.2.7:0", "192.0.2.7:65536", "192.0.2.7:051820",
        "2001:db8::7:51820", "[192.0.2.7]:51820", "[2001:db8::7]51820", "[2001:db8::7:51820",
        "host.example:51820", "[fe80::1%eth0]:51820", "192.0.2.7:51820 "}) {
    EXPECT_EQ(Endpoint::Parse(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

// ---- The set request ----

// SplitRequest returns the device lines (sorted: their order is ours to choose) and the peer
// sections (in order, each exactly as sent) of a set request.
struct SplitRequestResult {
  std::vector<std::string> device;
  std::vector<std::vector<std::string>> peers;
};
SplitRequestResult SplitRequest(std::string_view text) {
  SplitRequestResult out;
  EXPECT_TRUE(text.starts_with("set=1\n")) << text;
  EXPECT_TRUE(text.ends_with("\n\n")) << text;
  size_t pos = 0;
  bool first = true;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    const std::string line(text.substr(pos, nl - pos));
    pos = nl + 1;
    if (first) {
      first = false;
      continue;
    }
    if (line.empty()) break;
    if (line.starts_with("public_key=")) out.peers.emplace_back();
    (out.peers.empty() ? out.device : out.peers.back()).push_back(line);
  }
  std::sort(out.device.begin(), out.device.end());
  return out;
}

// The update `wg set` was given for wg_set_request.txt (tests/data/net/README.md).
DeviceUpdate WgSetEquivalent(const Rfc7748& v) {
  DeviceUpdate update;
  update.private_key = Secret(v.alice_private);
  update.listen_port = 51820;
  update.fwmark = 42;
  PeerUpdate& bob = update.peers.emplace_back();
  bob.public_key = Key(v.bob_public);
  std::vector<uint8_t> psk(32);
  for (size_t i = 0; i < psk.size(); ++i) psk[i] = static_cast<uint8_t>(i + 1);
  bob.preshared_key = SecretBytes(psk);
  bob.endpoint = *Endpoint::Parse("192.0.2.7:51820");
  bob.persistent_keepalive_interval = 25;
  bob.replace_allowed_ips = true;
  bob.allowed_ips = {*Cidr::Parse("10.78.0.2/32"), *Cidr::Parse("fd78::2/128")};
  PeerUpdate& carol = update.peers.emplace_back();
  carol.public_key = *PublicKeyFromBase64("17XoHTNuV4sTuNcG6C0GHjA4yWvOZs3PUNVmuW3buhA=");
  carol.remove = true;
  return update;
}

TEST(UapiSerializeTest, MatchesWhatWgSetSends) {
  const Rfc7748 v = LoadRfc7748();
  auto request = SerializeSetRequest(WgSetEquivalent(v));
  ASSERT_TRUE(request.ok()) << request.status();
  const std::string ours = Text(*request);
  const std::string theirs = ReadData("wg_set_request.txt");
  const SplitRequestResult a = SplitRequest(ours), b = SplitRequest(theirs);
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.peers, b.peers);
  // listen_port comes first (a port conflict fails before anything changes).
  EXPECT_TRUE(ours.starts_with("set=1\nlisten_port=51820\nfwmark=42\nprivate_key=")) << ours;
}

TEST(UapiSerializeTest, MatchesWhatWgSetconfSends) {
  const Rfc7748 v = LoadRfc7748();
  DeviceUpdate update;
  update.private_key = Secret(v.alice_private);
  update.listen_port = 51820;
  update.fwmark = 0;
  update.replace_peers = true;
  PeerUpdate& bob = update.peers.emplace_back();
  bob.public_key = Key(v.bob_public);
  std::vector<uint8_t> psk(32);
  for (size_t i = 0; i < psk.size(); ++i) psk[i] = static_cast<uint8_t>(i + 1);
  bob.preshared_key = SecretBytes(psk);
  bob.endpoint = *Endpoint::Parse("[2001:db8::7]:51820");
  bob.persistent_keepalive_interval = 25;
  bob.replace_allowed_ips = true;
  bob.allowed_ips = {*Cidr::Parse("10.78.0.0/24"), *Cidr::Parse("fd78::/64")};
  PeerUpdate& carol = update.peers.emplace_back();
  carol.public_key = *PublicKeyFromBase64("17XoHTNuV4sTuNcG6C0GHjA4yWvOZs3PUNVmuW3buhA=");
  carol.replace_allowed_ips = true;
  carol.allowed_ips = {*Cidr::Parse("10.78.0.3/32")};
  auto request = SerializeSetRequest(update);
  ASSERT_TRUE(request.ok()) << request.status();
  const SplitRequestResult a = SplitRequest(Text(*request));
  const SplitRequestResult b = SplitRequest(ReadData("wg_setconf_request.txt"));
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.peers, b.peers);
}

TEST(UapiSerializeTest, UpdateOnlyFollowsThePublicKey) {
  DeviceUpdate update;
  PeerUpdate& peer = update.peers.emplace_back();
  peer.public_key = Key(LoadRfc7748().bob_public);
  peer.update_only = true;
  peer.persistent_keepalive_interval = 0;
  auto request = SerializeSetRequest(update);
  ASSERT_TRUE(request.ok());
  EXPECT_EQ(Text(*request), "set=1\npublic_key=" + LoadRfc7748().bob_public +
                                "\nupdate_only=true\npersistent_keepalive_interval=0\n\n");
  auto empty = SerializeSetRequest(DeviceUpdate{});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(Text(*empty), "set=1\n\n");
}

TEST(UapiSerializeTest, RefusesBadUpdatesBeforeSending) {
  const Rfc7748 v = LoadRfc7748();
  const PublicKey bob = Key(v.bob_public);
  std::vector<std::pair<std::string, std::function<void(DeviceUpdate&)>>> cases = {
      {"short private key", [](DeviceUpdate& u) { u.private_key = SecretBytes(31); }},
      {"zero private key", [](DeviceUpdate& u) { u.private_key = SecretBytes(32); }},
      {"zero peer key", [](DeviceUpdate& u) { u.peers.emplace_back(); }},
      {"peer twice",
       [&](DeviceUpdate& u) {
         u.peers.emplace_back().public_key = bob;
         u.peers.emplace_back().public_key = bob;
       }},
      {"own key as peer",
       [&](DeviceUpdate& u) {
         u.private_key = Secret(v.alice_private);
         u.peers.emplace_back().public_key = Key(v.alice_public);
       }},
      {"removal with endpoint",
       [&](DeviceUpdate& u) {
         PeerUpdate& p = u.peers.emplace_back();
         p.public_key = bob;
         p.remove = true;
         p.endpoint = *Endpoint::Parse("192.0.2.7:1");
       }},
      {"removal with update_only",
       [&](DeviceUpdate& u) {
         PeerUpdate& p = u.peers.emplace_back();
         p.public_key = bob;
         p.remove = true;
         p.update_only = true;
       }},
      {"short preshared key",
       [&](DeviceUpdate& u) {
         PeerUpdate& p = u.peers.emplace_back();
         p.public_key = bob;
         p.preshared_key = SecretBytes(16);
       }},
      {"endpoint port 0",
       [&](DeviceUpdate& u) {
         PeerUpdate& p = u.peers.emplace_back();
         p.public_key = bob;
         p.endpoint = Endpoint{*IpAddress::Parse("192.0.2.7"), 0};
       }},
      {"allowed IP on two peers",
       [&](DeviceUpdate& u) {
         PeerUpdate& p = u.peers.emplace_back();
         p.public_key = bob;
         p.allowed_ips = {*Cidr::Parse("10.78.0.0/24")};
         PeerUpdate& q = u.peers.emplace_back();
         q.public_key = Key(v.alice_public);
         q.allowed_ips = {*Cidr::Parse("10.78.0.0/24")};
       }},
  };
  for (auto& [name, mutate] : cases) {
    DeviceUpdate update;
    mutate(update);
    EXPECT_EQ(ValidateUpdate(update).code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_EQ(SerializeSetRequest(update).status().code(), absl::StatusCode::kInvalidArgument)
        << name;
  }
}

// ---- The get reply ----

TEST(UapiParseTest, ParsesWireGuardGoReply) {
  const Rfc7748 v = LoadRfc7748();
  const std::string reply = ReadData("wireguard_go_get_reply.txt");
  auto device = ParseGetResponse(reply);
  ASSERT_TRUE(device.ok()) << device.status();
  // The private key (sent clamped) gives Alice's public key; the key itself is not kept.
  ASSERT_TRUE(device->has_private_key());
  EXPECT_EQ(PublicKeyToHex(*device->public_key), v.alice_public);
  EXPECT_EQ(device->listen_port, 51820);
  EXPECT_EQ(device->fwmark, 0u);
  ASSERT_EQ(device->peers.size(), 1u);
  const PeerInfo& bob = device->peers[0];
  EXPECT_EQ(PublicKeyToHex(bob.public_key), v.bob_public);
  EXPECT_EQ(device->FindPeer(Key(v.bob_public)), &bob);
  EXPECT_EQ(device->FindPeer(Key(v.alice_public)), nullptr);
  EXPECT_TRUE(bob.has_preshared_key);
  ASSERT_TRUE(bob.endpoint.has_value());
  EXPECT_EQ(bob.endpoint->ToString(), "192.0.2.2:51821");
  EXPECT_EQ(bob.allowed_ips,
            (std::vector<Cidr>{*Cidr::Parse("10.78.0.2/32"), *Cidr::Parse("fd78::2/128")}));
  ASSERT_TRUE(bob.last_handshake.has_value());
  EXPECT_EQ(
      std::chrono::duration_cast<std::chrono::nanoseconds>(bob.last_handshake->time_since_epoch())
          .count(),
      1795941550256821378);
  EXPECT_EQ(bob.tx_bytes, 436u);
  EXPECT_EQ(bob.rx_bytes, 348u);
  EXPECT_EQ(bob.persistent_keepalive_interval, 25);
}

TEST(UapiParseTest, EmptyDeviceAndPeerWithoutHandshake) {
  auto empty = ParseGetResponse("errno=0\n\n");
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_FALSE(empty->has_private_key());
  EXPECT_EQ(empty->listen_port, 0);
  EXPECT_TRUE(empty->peers.empty());

  const std::string bob = LoadRfc7748().bob_public;
  auto fresh = ParseGetResponse("listen_port=1\npublic_key=" + bob +
                                "\npreshared_key=" + std::string(64, '0') +
                                "\nprotocol_version=1\nlast_handshake_time_sec=0\n"
                                "last_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
                                "persistent_keepalive_interval=0\nerrno=0\n\n");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ASSERT_EQ(fresh->peers.size(), 1u);
  EXPECT_FALSE(fresh->peers[0].has_preshared_key);
  EXPECT_FALSE(fresh->peers[0].last_handshake.has_value());
  EXPECT_FALSE(fresh->peers[0].endpoint.has_value());
  EXPECT_TRUE(fresh->peers[0].allowed_ips.empty());
}

TEST(UapiParseTest, SkipsUnknownKeys) {
  const std::string bob = LoadRfc7748().bob_public;
  // Keys a newer or extended implementation may add (AmneziaWG's jc, a future peer key).
  auto device = ParseGetResponse("jc=4\nlisten_port=7\npublic_key=" + bob +
                                 "\nfuture_key=anything\nallowed_ip=10.0.0.0/8\nerrno=0\n\n");
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(device->listen_port, 7);
  ASSERT_EQ(device->peers.size(), 1u);
  EXPECT_EQ(device->peers[0].allowed_ips.size(), 1u);
}

TEST(UapiParseTest, ErrnoIsAnErrorWithItsMeaning) {
  auto einval = ParseGetResponse("errno=-22\n\n");
  ASSERT_EQ(einval.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusMessage(einval.status()), HasSubstr("errno=-22"));
  EXPECT_THAT(StatusMessage(einval.status()), HasSubstr("EINVAL"));

  const absl::Status in_use = ParseSetResponse("errno=-98\n\n");
  EXPECT_EQ(in_use.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(in_use), HasSubstr("EADDRINUSE"));
  EXPECT_THAT(StatusMessage(in_use), HasSubstr("listen port"));
  EXPECT_THAT(StatusMessage(ParseSetResponse("errno=-55\n\n")), HasSubstr("unexpected"));
  EXPECT_THAT(StatusMessage(ParseSetResponse("errno=-71\n\n")), HasSubstr("EPROTO"));
  EXPECT_EQ(ParseSetResponse("errno=-5\n\n").code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(StatusMessage(UapiErrnoStatus(-99999)), HasSubstr("unknown errno"));
  EXPECT_FALSE(UapiErrnoStatus(INT64_MIN).ok());
  EXPECT_TRUE(UapiErrnoStatus(0).ok());
}

TEST(UapiParseTest, RefusesMalformedReplies) {
  const Rfc7748 v = LoadRfc7748();
  const std::string pk = "public_key=" + v.bob_public + "\n";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"no errno", "listen_port=1\n\n"},
      {"empty", ""},
      {"unterminated line", "errno=0"},
      {"line after errno", "errno=0\nlisten_port=1\n\n"},
      {"data after the end", "errno=0\n\nerrno=0\n\n"},
      {"not key=value", "listen_port\nerrno=0\n\n"},
      {"empty key", "=1\nerrno=0\n\n"},
      {"errno not a number", "errno=zero\n\n"},
      {"peer key first", "endpoint=192.0.2.1:1\nerrno=0\n\n"},
      {"device key in peer", pk + "listen_port=1\nerrno=0\n\n"},
      {"repeated device key", "listen_port=1\nlisten_port=2\nerrno=0\n\n"},
      {"repeated peer key", pk + "tx_bytes=1\ntx_bytes=1\nerrno=0\n\n"},
      {"peer twice", pk + pk + "errno=0\n\n"},
      {"upper-case key", "public_key=" + std::string(64, 'A') + "\nerrno=0\n\n"},
      {"short private key", "private_key=" + v.alice_private.substr(2) + "\nerrno=0\n\n"},
      {"port too big", "listen_port=65536\nerrno=0\n\n"},
      {"port with sign", "listen_port=+1\nerrno=0\n\n"},
      {"port leading zero", "listen_port=01\nerrno=0\n\n"},
      {"fwmark too big", "fwmark=4294967296\nerrno=0\n\n"},
      {"protocol 2", pk + "protocol_version=2\nerrno=0\n\n"},
      {"bad endpoint", pk + "endpoint=192.0.2.1\nerrno=0\n\n"},
      {"host bits", pk + "allowed_ip=10.0.0.1/8\nerrno=0\n\n"},
      {"nsec too big", pk + "last_handshake_time_nsec=1000000000\nerrno=0\n\n"},
      {"sec too big", pk + "last_handshake_time_sec=99999999999999\nerrno=0\n\n"},
      {"rx overflow", pk + "rx_bytes=18446744073709551616\nerrno=0\n\n"},
      {"keepalive too big", pk + "persistent_keepalive_interval=65536\nerrno=0\n\n"},
      {"bad psk", pk + "preshared_key=00\nerrno=0\n\n"},
  };
  for (const auto& [name, reply] : cases) {
    auto device = ParseGetResponse(reply);
    EXPECT_FALSE(device.ok()) << name;
    EXPECT_EQ(device.status().code(), absl::StatusCode::kInternal)
        << name << ": " << device.status();
  }
}

TEST(UapiParseTest, ErrorsNeverQuoteSecrets) {
  const Rfc7748 v = LoadRfc7748();
  const std::string bad_private = v.alice_private.substr(0, 62) + "XY";
  auto device = ParseGetResponse("private_key=" + bad_private + "\nerrno=0\n\n");
  ASSERT_FALSE(device.ok());
  EXPECT_THAT(StatusMessage(device.status()), HasSubstr("private_key"));
  EXPECT_THAT(StatusMessage(device.status()), Not(HasSubstr(v.alice_private.substr(0, 16))));
  const std::string bad_psk = std::string(63, '7') + "Z";
  auto psk = ParseGetResponse("public_key=" + v.bob_public + "\npreshared_key=" + bad_psk +
                              "\nerrno=0\n\n");
  ASSERT_FALSE(psk.ok());
  EXPECT_THAT(StatusMessage(psk.status()), Not(HasSubstr("7777777777")));
}

TEST(UapiParseTest, SetReplyIsExactlyOneErrnoLine) {
  EXPECT_TRUE(ParseSetResponse("errno=0\n\n").ok());
  for (const char* bad :
       {"", "errno=0\n", "errno=0", "errno=\n\n", "errno=x\n\n", "errno=0\nfoo=1\n\n", "foo=0\n\n",
        "\n\n", "errno=0\n\n\n", "errno=-0\n\n"}) {
    EXPECT_EQ(ParseSetResponse(bad).code(), absl::StatusCode::kInternal) << bad;
  }
}

// ---- UapiClient against fake sockets ----

// FakeUapi listens on DIR/NAME.sock and runs `serve` for each connection (on its own thread).
class FakeUapi {
 public:
  FakeUapi(const fs::path& dir, std::string_view name, std::function<void(int fd)> serve)
      : serve_(std::move(serve)) {
    path_ = dir / (std::string(name) + ".sock");
    listen_fd_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    EXPECT_EQ(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    EXPECT_EQ(listen(listen_fd_, 4), 0);
    thread_ = std::thread([this] {
      while (true) {
        const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0 || stop_) {
          if (fd >= 0) close(fd);
          return;
        }
        serve_(fd);
        close(fd);
      }
    });
  }
  ~FakeUapi() {
    stop_ = true;
    shutdown(listen_fd_, SHUT_RDWR);  // wakes accept()
    thread_.join();
    close(listen_fd_);
  }

 private:
  fs::path path_;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::function<void(int)> serve_;
  std::thread thread_;
};

// ReadRequest reads until the request's empty line.
std::string ReadRequest(int fd) {
  std::string data;
  char buf[4096];
  while (!data.ends_with("\n\n")) {
    const ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  return data;
}

void WriteAll(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = send(fd, text.data(), text.size(), MSG_NOSIGNAL);
    if (n <= 0) return;
    text.remove_prefix(static_cast<size_t>(n));
  }
}

TEST(UapiClientTest, MissingInterfaceNamesTheSocketPath) {
  keywarden::testing::TempDir dir("kw-uapi");
  auto client = UapiClient::ForInterface("kwmissing0", dir.path());
  ASSERT_EQ(client.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(StatusMessage(client.status()), HasSubstr((dir.path() / "kwmissing0.sock").string()));
  EXPECT_THAT(StatusMessage(client.status()), HasSubstr("kwmissing0"));
  EXPECT_EQ(UapiClient::ForInterface("kw0", dir.path() / "no-such-dir").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(UapiClientTest, RefusesBadInterfaceNames) {
  keywarden::testing::TempDir dir("kw-uapi");
  for (const char* bad :
       {"", ".", "..", "a/b", "../x", "wg:0", "wg 0", "wg\n", "0123456789abcdef", "wg\x7f"}) {
    EXPECT_EQ(UapiClient::ForInterface(bad, dir.path()).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  const fs::path deep = dir.path() / std::string(120, 'd');
  EXPECT_EQ(UapiClient::ForInterface("kw0", deep).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(UapiClientTest, RegularFileAndStaleSocket) {
  keywarden::testing::TempDir dir("kw-uapi");
  dir.WriteFile("kwfile0.sock", "not a socket");
  EXPECT_EQ(UapiClient::ForInterface("kwfile0", dir.path()).status().code(),
            absl::StatusCode::kFailedPrecondition);

  // A socket file nobody listens on: what a SIGKILLed wireguard-go leaves behind.
  const fs::path stale = dir / "kwstale0.sock";
  const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, stale.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  close(fd);
  auto client = UapiClient::ForInterface("kwstale0", dir.path());
  ASSERT_TRUE(client.ok()) << client.status();
  auto device = client->Get();
  ASSERT_EQ(device.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(StatusMessage(device.status()), HasSubstr("stale"));
}

TEST(UapiClientTest, GetAndSetAgainstAFakeServer) {
  keywarden::testing::TempDir dir("kw-uapi");
  const std::string reply = ReadData("wireguard_go_get_reply.txt");
  std::vector<std::string> requests;
  std::mutex mu;
  FakeUapi server(dir.path(), "kwfake0", [&](int fd) {
    const std::string request = ReadRequest(fd);
    {
      std::lock_guard<std::mutex> lock(mu);
      requests.push_back(request);
    }
    if (request == "get=1\n\n") {
      WriteAll(fd, reply);
    } else if (request.find("listen_port=1\n") != std::string::npos) {
      WriteAll(fd, "errno=-98\n\n");
    } else {
      WriteAll(fd, "errno=0\n\n");
    }
  });
  auto client = UapiClient::ForInterface("kwfake0", dir.path());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_EQ(client->interface_name(), "kwfake0");
  EXPECT_EQ(client->socket_path(), dir / "kwfake0.sock");

  auto device = client->Get();
  ASSERT_TRUE(device.ok()) << device.status();
  EXPECT_EQ(PublicKeyToHex(*device->public_key), LoadRfc7748().alice_public);

  const DeviceUpdate update = WgSetEquivalent(LoadRfc7748());
  EXPECT_TRUE(client->Set(update).ok());
  DeviceUpdate port;
  port.listen_port = 1;
  const absl::Status refused = client->Set(port);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(StatusMessage(refused), HasSubstr("kwfake0"));
  EXPECT_THAT(StatusMessage(refused), HasSubstr("EADDRINUSE"));

  // A refused update never reaches the socket.
  DeviceUpdate bad;
  bad.private_key = SecretBytes(5);
  const absl::Status not_sent = client->Set(bad);
  EXPECT_EQ(not_sent.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusMessage(not_sent), HasSubstr("nothing sent"));

  std::lock_guard<std::mutex> lock(mu);
  ASSERT_EQ(requests.size(), 3u);
  auto expected = SerializeSetRequest(update);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(requests[1], Text(*expected));
  EXPECT_EQ(requests[2], "set=1\nlisten_port=1\n\n");
}

TEST(UapiClientTest, TimesOutOnASilentServer) {
  keywarden::testing::TempDir dir("kw-uapi");
  std::atomic<bool> done{false};
  FakeUapi server(dir.path(), "kwslow0", [&](int fd) {
    (void)ReadRequest(fd);
    WriteAll(fd, "listen_port=1\n");  // a partial reply, then silence
    while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  auto client =
      UapiClient::ForInterface("kwslow0", dir.path(), {.timeout = std::chrono::milliseconds(200)});
  ASSERT_TRUE(client.ok());
  auto device = client->Get();
  done = true;
  EXPECT_EQ(device.status().code(), absl::StatusCode::kDeadlineExceeded) << device.status();
}

TEST(UapiClientTest, BoundsTheReply) {
  keywarden::testing::TempDir dir("kw-uapi");
  std::atomic<bool> done{false};
  FakeUapi server(dir.path(), "kwbig0", [&](int fd) {
    (void)ReadRequest(fd);
    const std::string line = "allowed_ip=10.0.0.0/8\n";
    while (!done) {
      if (send(fd, line.data(), line.size(), MSG_NOSIGNAL) <= 0) return;
    }
  });
  auto client = UapiClient::ForInterface("kwbig0", dir.path(), {.max_response_bytes = 64 * 1024});
  ASSERT_TRUE(client.ok());
  auto device = client->Get();
  done = true;
  EXPECT_EQ(device.status().code(), absl::StatusCode::kResourceExhausted) << device.status();
}

TEST(UapiClientTest, EarlyCloseAndTrailingBytes) {
  keywarden::testing::TempDir dir("kw-uapi");
  FakeUapi closes(dir.path(), "kwclose0", [](int fd) {
    (void)ReadRequest(fd);
    WriteAll(fd, "listen_port=1\n");
  });
  auto client = UapiClient::ForInterface("kwclose0", dir.path());
  ASSERT_TRUE(client.ok());
  EXPECT_EQ(client->Get().status().code(), absl::StatusCode::kUnavailable);

  FakeUapi chatty(dir.path(), "kwchat0", [](int fd) {
    (void)ReadRequest(fd);
    WriteAll(fd, "errno=0\n\nerrno=0\n\n");
  });
  auto chatty_client = UapiClient::ForInterface("kwchat0", dir.path());
  ASSERT_TRUE(chatty_client.ok());
  EXPECT_EQ(chatty_client->Set(DeviceUpdate{}).code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace keywarden::net
