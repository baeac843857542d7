// Metrics: the key service's Prometheus counters and histograms, lock-free on the request path,
// rendered in the Prometheus text exposition format (version 0.0.4).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace keywarden::service {

class Metrics {
 public:
  // Latency bucket upper bounds, in seconds.
  static constexpr std::array<double, 12> kLatencyBuckets = {
      0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0};
  static constexpr int kCodes = 17;  // gRPC status codes 0..16

  // RecordRequest counts one GetDataKey call with its gRPC status code and latency.
  void RecordRequest(int grpc_code, std::chrono::nanoseconds latency);
  // RecordStoreError counts one failed read of the cluster store.
  void RecordStoreError() { store_errors_.fetch_add(1, std::memory_order_relaxed); }
  // SetStoreUp sets the keywarden_store_up gauge (1 while the store confirms the KEK).
  void SetStoreUp(bool up) { store_up_.store(up ? 1 : 0, std::memory_order_relaxed); }

  // Render returns every metric in the Prometheus text format.
  std::string Render() const;

 private:
  std::array<std::atomic<uint64_t>, kCodes> requests_{};
  std::array<std::atomic<uint64_t>, kLatencyBuckets.size()> buckets_{};  // non-cumulative
  std::atomic<uint64_t> latency_count_{0};
  std::atomic<uint64_t> latency_sum_ns_{0};
  std::atomic<uint64_t> store_errors_{0};
  std::atomic<int> store_up_{1};
};

}  // namespace keywarden::service
