#include "tests/pcap.h"

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <thread>

namespace keywarden::testing {
namespace {

uint16_t Be16(const std::vector<uint8_t>& b, size_t at) {
  return static_cast<uint16_t>(b[at] << 8 | b[at + 1]);
}

}  // namespace

std::vector<Frame> ReadPcap(const std::filesystem::path& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  const std::vector<uint8_t> data((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  auto u32 = [&](size_t at) {
    uint32_t v;
    std::memcpy(&v, data.data() + at, 4);
    return v;  // the file is in this host's byte order (written here)
  };
  std::vector<Frame> frames;
  error->clear();
  if (data.size() < 24 || (u32(0) != 0xa1b2c3d4 && u32(0) != 0xa1b23c4d)) {
    *error = "not a pcap file in host byte order";
    return frames;
  }
  if (u32(20) != 1) {
    *error = "link type " + std::to_string(u32(20)) + ", want Ethernet (1)";
    return frames;
  }
  for (size_t at = 24; at + 16 <= data.size();) {
    const uint32_t length = u32(at + 8);
    at += 16;
    if (at + length > data.size()) {
      *error = "truncated record";
      break;
    }
    frames.push_back({std::vector<uint8_t>(data.begin() + at, data.begin() + at + length)});
    at += length;
  }
  return frames;
}

Census Classify(const std::vector<Frame>& frames, const std::vector<uint8_t>& pattern,
                uint16_t wireguard_port) {
  Census census;
  for (const Frame& frame : frames) {
    const auto& f = frame.bytes;
    if (std::search(f.begin(), f.end(), pattern.begin(), pattern.end()) != f.end()) {
      census.pattern_seen = true;
    }
    if (f.size() < 14) {
      census.other.push_back("runt frame");
      continue;
    }
    const uint16_t ethertype = Be16(f, 12);
    if (ethertype == 0x0806) {
      ++census.arp;
      continue;
    }
    if (ethertype != 0x0800 || f.size() < 14 + 20) {
      census.other.push_back(fmt::format(
          "ethertype {:#06x}{}", ethertype,
          ethertype == 0x86dd && f.size() > 54
              ? fmt::format(" (IPv6 next header {}, to {:02x}{:02x}::)", f[20], f[38], f[39])
              : ""));
      continue;
    }
    const size_t ip = 14;
    const size_t ihl = (f[ip] & 0xf) * 4u;
    const int protocol = f[ip + 9];
    if (protocol != 17 || f.size() < ip + ihl + 8) {
      census.other.push_back(fmt::format("IPv4 protocol {} to {}.{}.{}.{}", protocol, f[ip + 16],
                                         f[ip + 17], f[ip + 18], f[ip + 19]));
      continue;
    }
    const size_t udp = ip + ihl;
    const uint16_t sport = Be16(f, udp), dport = Be16(f, udp + 2);
    const size_t payload = udp + 8;
    const bool wg_message = f.size() >= payload + 4 && f[payload] >= 1 && f[payload] <= 4 &&
                            f[payload + 1] == 0 && f[payload + 2] == 0 && f[payload + 3] == 0;
    if (sport == wireguard_port && dport == wireguard_port && wg_message) {
      ++census.wireguard_udp;
    } else {
      census.other.push_back("UDP " + std::to_string(sport) + " -> " + std::to_string(dport));
    }
  }
  return census;
}

::testing::AssertionResult PacketCapture::Start(const std::string& netns, const std::string& device,
                                                const std::filesystem::path& dir,
                                                const std::string& name) {
  pcap_ = dir / (name + ".pcap");
  const std::filesystem::path log = dir / (name + ".log");
  BackgroundOptions options;
  options.log = log;
  // -Z root: Debian's tcpdump otherwise drops to the tcpdump user, who cannot write a private
  // scratch directory. --immediate-mode and -U: take each packet from the kernel and write it at
  // once; otherwise packets still in the kernel's ring buffer when SIGINT arrives are never
  // written (tcpdump counts them as "received by filter", not "captured").
  ::testing::AssertionResult started =
      dump_.Start({"ip", "netns", "exec", netns, "tcpdump", "-i", device, "-n", "--immediate-mode",
                   "-U", "-Z", "root", "-w", pcap_.string()},
                  options);
  if (!started) return started;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (ReadFile(log).value_or("").find("listening on") == std::string::npos) {
    if (!dump_.Running() || std::chrono::steady_clock::now() > deadline) {
      return ::testing::AssertionFailure() << "tcpdump did not start: " << dump_.Log();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return ::testing::AssertionSuccess();
}

std::vector<Frame> PacketCapture::Stop() {
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let the last packets arrive
  dump_.Signal(SIGINT);
  EXPECT_EQ(dump_.Wait(std::chrono::seconds(10)), 0) << dump_.Log();
  std::string error;
  std::vector<Frame> frames = ReadPcap(pcap_, &error);
  EXPECT_EQ(error, "") << pcap_;
  return frames;
}

}  // namespace keywarden::testing
