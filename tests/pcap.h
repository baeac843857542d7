// Test harness: an underlay packet capture with tcpdump in a network namespace, and a census of
// what it saw (WireGuard UDP, ARP, anything else, and whether a plaintext pattern crossed).
// Used by the network tests to show that only WireGuard messages cross the underlay.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

struct Frame {
  std::vector<uint8_t> bytes;
};

// ReadPcap reads a classic pcap file (tcpdump -w, this host's byte order) of Ethernet frames;
// `error` receives what was wrong ("" when nothing).
std::vector<Frame> ReadPcap(const std::filesystem::path& path, std::string* error);

struct Census {
  int arp = 0;
  int wireguard_udp = 0;           // UDP between WireGuard ports carrying WireGuard messages
  std::vector<std::string> other;  // one line per frame of any other kind
  bool pattern_seen = false;       // `pattern` appeared in some frame
};

// Classify sorts frames: ARP, WireGuard messages (type 1-4 and three zero bytes, WireGuard paper
// §5.4) in UDP between `wireguard_port` on both sides, or other; and looks for `pattern`.
Census Classify(const std::vector<Frame>& frames, const std::vector<uint8_t>& pattern,
                uint16_t wireguard_port);

// PacketCapture runs tcpdump on `device` in network namespace `netns` into DIR/NAME.pcap.
class PacketCapture {
 public:
  // Start returns once tcpdump listens (or fails, with tcpdump's log).
  ::testing::AssertionResult Start(const std::string& netns, const std::string& device,
                                   const std::filesystem::path& dir, const std::string& name);
  // Stop lets the last packets arrive, ends tcpdump with SIGINT and returns the frames (a test
  // failure is added when tcpdump or the file misbehaved).
  std::vector<Frame> Stop();

 private:
  Background dump_;
  std::filesystem::path pcap_;
};

}  // namespace keywarden::testing
