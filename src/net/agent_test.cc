// PlanPeers: the difference between an interface's peers and the registry's, as UAPI updates.
#include "keywarden/net/agent.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "keywarden/crypto/random.h"

namespace keywarden::net {
namespace {

PublicKey Key(uint8_t fill) {
  PublicKey key;
  key.fill(fill);
  return key;
}

Cidr C(std::string_view text) { return Cidr::Parse(text).value(); }
Endpoint E(std::string_view text) { return Endpoint::Parse(text).value(); }

PeerInfo Current(uint8_t key, std::string_view endpoint, std::vector<Cidr> ips,
                 uint16_t keepalive = 0) {
  PeerInfo peer;
  peer.public_key = Key(key);
  peer.endpoint = E(endpoint);
  peer.allowed_ips = std::move(ips);
  peer.persistent_keepalive_interval = keepalive;
  return peer;
}

DesiredPeer Desired(std::string node, uint8_t key, std::string_view endpoint,
                    std::vector<Cidr> ips) {
  return DesiredPeer{std::move(node), Key(key), E(endpoint), std::move(ips), 1};
}

TEST(PlanPeers, UpToDateInterfaceNeedsNothing) {
  Device device;
  device.peers = {Current(1, "10.0.0.1:51820", {C("10.9.0.1/32"), C("fd00::1/128")})};
  // Allowed IPs compare as sets (wireguard-go reports them in its own order).
  EXPECT_TRUE(PlanPeers(device,
                        {Desired("a", 1, "10.0.0.1:51820", {C("fd00::1/128"), C("10.9.0.1/32")})},
                        0)
                  .empty());
}

TEST(PlanPeers, AddsMissingRemovesDepartedUpdatesChanged) {
  Device device;
  device.peers = {Current(1, "10.0.0.1:51820", {C("10.9.0.1/32")}),
                  Current(2, "10.0.0.2:51820", {C("10.9.0.2/32")}),
                  Current(3, "10.0.0.3:51820", {C("10.9.0.3/32")})};
  const std::vector<DesiredPeer> desired = {
      Desired("a", 1, "10.0.0.1:51820", {C("10.9.0.1/32")}),   // unchanged
      Desired("b", 2, "10.0.0.22:51820", {C("10.9.0.2/32")}),  // moved
      Desired("d", 4, "10.0.0.4:51820", {C("10.9.0.4/32")})};  // joined; 3 left
  std::vector<PeerUpdate> plan = PlanPeers(device, desired, 0);
  ASSERT_EQ(plan.size(), 3u);
  EXPECT_EQ(plan[0].public_key, Key(3));
  EXPECT_TRUE(plan[0].remove);
  EXPECT_EQ(plan[1].public_key, Key(2));
  EXPECT_FALSE(plan[1].remove);
  EXPECT_EQ(plan[1].endpoint, E("10.0.0.22:51820"));
  EXPECT_TRUE(plan[1].replace_allowed_ips);
  EXPECT_EQ(plan[2].public_key, Key(4));
  EXPECT_EQ(plan[2].allowed_ips, std::vector<Cidr>{C("10.9.0.4/32")});
  // The plan is what the UAPI client accepts.
  DeviceUpdate update;
  update.peers = std::move(plan);
  EXPECT_TRUE(ValidateUpdate(update).ok()) << ValidateUpdate(update);
}

TEST(PlanPeers, ARotatedKeyReplacesThePeerAndMovesItsAddresses) {
  Device device;
  device.peers = {Current(1, "10.0.0.1:51820", {C("10.9.0.1/32")})};
  std::vector<PeerUpdate> plan =
      PlanPeers(device, {Desired("a", 9, "10.0.0.1:51820", {C("10.9.0.1/32")})}, 25);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_TRUE(plan[0].remove);
  EXPECT_EQ(plan[0].public_key, Key(1));
  EXPECT_EQ(plan[1].public_key, Key(9));
  EXPECT_EQ(plan[1].persistent_keepalive_interval, std::optional<uint16_t>(25));
  DeviceUpdate update;
  update.peers = std::move(plan);
  EXPECT_TRUE(ValidateUpdate(update).ok());
}

TEST(PlanPeers, KeepaliveChangeIsAnUpdate) {
  Device device;
  device.peers = {Current(1, "10.0.0.1:51820", {C("10.9.0.1/32")}, 0)};
  EXPECT_EQ(PlanPeers(device, {Desired("a", 1, "10.0.0.1:51820", {C("10.9.0.1/32")})}, 25).size(),
            1u);
  EXPECT_TRUE(PlanPeers(device, {}, 0).size() == 1 && PlanPeers(device, {}, 0)[0].remove);
}

TEST(PlanPeers, ACreatedPeerGetsAKeepaliveKickThatIsSwitchedOffAfterwards) {
  Device device;
  device.peers = {Current(1, "10.0.0.1:51820", {C("10.9.0.1/32")}, 0),
                  Current(2, "10.0.0.2:51820", {C("10.9.0.2/32")}, 0)};
  const std::vector<DesiredPeer> desired = {
      Desired("a", 1, "10.0.0.1:51820", {C("10.9.0.1/32")}),   // unchanged
      Desired("b", 2, "10.0.0.22:51820", {C("10.9.0.2/32")}),  // moved: updated, no kick
      Desired("c", 7, "10.0.0.3:51820", {C("10.9.0.3/32")})};  // new key: created, kicked
  const std::vector<PeerUpdate> plan = PlanPeers(device, desired, 0);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_EQ(plan[0].public_key, Key(2));
  EXPECT_EQ(plan[0].persistent_keepalive_interval, std::optional<uint16_t>(0));
  EXPECT_EQ(plan[1].public_key, Key(7));
  EXPECT_EQ(plan[1].persistent_keepalive_interval, std::optional<uint16_t>(kHandshakeKickSeconds));
  const std::vector<PeerUpdate> off = KickFollowUp(plan, 0);
  ASSERT_EQ(off.size(), 1u);
  EXPECT_EQ(off[0].public_key, Key(7));
  EXPECT_TRUE(off[0].update_only);
  EXPECT_FALSE(off[0].remove);
  EXPECT_EQ(off[0].persistent_keepalive_interval, std::optional<uint16_t>(0));
  EXPECT_FALSE(off[0].endpoint.has_value());
  DeviceUpdate update;
  update.peers = KickFollowUp(plan, 0);
  EXPECT_TRUE(ValidateUpdate(update).ok()) << ValidateUpdate(update);
  // No kick when asked not to (an agent's first reconcile).
  const std::vector<PeerUpdate> quiet = PlanPeers(device, desired, 0, /*kick_created=*/false);
  EXPECT_EQ(quiet.back().persistent_keepalive_interval, std::optional<uint16_t>(0));
  EXPECT_TRUE(KickFollowUp(quiet, 0).empty());
  // With a configured keepalive, switching it on at creation is the kick: nothing to undo.
  const std::vector<PeerUpdate> with_keepalive = PlanPeers(device, desired, 25);
  EXPECT_EQ(with_keepalive.back().persistent_keepalive_interval, std::optional<uint16_t>(25));
  EXPECT_TRUE(KickFollowUp(with_keepalive, 25).empty());
}

// A signer for `node` under a fresh authority (what the join service issues).
std::unique_ptr<NodeSigner> TestSigner(const std::string& node) {
  auto authority = NewAuthorityFromSeed(crypto::RandomSecret(32).value()).value();
  NodeSigningKey key = GenerateNodeSigningKey().value();
  NodeCredential credential;
  credential.node = node;
  credential.signing_key = key.public_key();
  credential.cluster_id = std::string(64, 'c');
  credential.ek_fingerprint = std::string(64, 'e');
  credential.not_after = std::chrono::system_clock::now() + std::chrono::hours(1);
  return NewNodeSigner(authority->Issue(credential).value(), std::move(key)).value();
}

NodeEntry TestEntry(const std::string& node) {
  NodeEntry entry;
  entry.node = node;
  entry.public_key = Key(7);
  entry.endpoint = E("10.0.0.1:51820");
  entry.allowed_ips = {C("10.9.0.1/32")};
  entry.epoch = 1;
  entry.issued_at = std::chrono::system_clock::now();
  return entry;
}

TEST(ReplaceableNodeSigner, RecordsCarryTheCurrentSignersCredential) {
  auto first = TestSigner("a");
  auto second = TestSigner("a");
  const Ed25519PublicKey first_key = first->public_key();
  const Ed25519PublicKey second_key = second->public_key();
  ASSERT_NE(first_key, second_key);
  ReplaceableNodeSigner signer(std::move(first));
  EXPECT_EQ(signer.public_key(), first_key);
  auto record = signer.Record(TestEntry("a"));
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(ParseRecord(*record).value().credential.signing_key, first_key);

  signer.Replace(std::move(second));
  EXPECT_EQ(signer.public_key(), second_key);
  record = signer.Record(TestEntry("a"));
  ASSERT_TRUE(record.ok()) << record.status();
  EXPECT_EQ(ParseRecord(*record).value().credential.signing_key, second_key);
  // The wrapped signer's checks still apply: another node's entry is refused.
  EXPECT_EQ(signer.Record(TestEntry("b")).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace keywarden::net
