#include "keywarden/service/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <utility>

namespace keywarden::service {
namespace {

constexpr const char* kCodeNames[Metrics::kCodes] = {
    "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED"};

template <typename... Args>
void Append(std::string& out, fmt::format_string<Args...> format, Args&&... args) {
  fmt::format_to(std::back_inserter(out), format, std::forward<Args>(args)...);
}

}  // namespace

void Metrics::RecordRequest(int grpc_code, std::chrono::nanoseconds latency) {
  requests_[static_cast<size_t>(std::clamp(grpc_code, 0, kCodes - 1))].fetch_add(
      1, std::memory_order_relaxed);
  const double seconds = std::chrono::duration<double>(latency).count();
  const auto it = std::lower_bound(kLatencyBuckets.begin(), kLatencyBuckets.end(), seconds);
  if (it != kLatencyBuckets.end()) {
    buckets_[static_cast<size_t>(it - kLatencyBuckets.begin())].fetch_add(
        1, std::memory_order_relaxed);
  }
  latency_count_.fetch_add(1, std::memory_order_relaxed);
  latency_sum_ns_.fetch_add(static_cast<uint64_t>(latency.count()), std::memory_order_relaxed);
}

std::string Metrics::Render() const {
  std::string out;
  Append(out, "# HELP keywarden_requests_total Key service requests by method and gRPC status.\n");
  Append(out, "# TYPE keywarden_requests_total counter\n");
  for (int code = 0; code < kCodes; ++code) {
    const uint64_t n = requests_[static_cast<size_t>(code)].load(std::memory_order_relaxed);
    if (n == 0 && code != 0) continue;
    Append(out, "keywarden_requests_total{{method=\"GetDataKey\",code=\"{}\"}} {}\n",
           kCodeNames[code], n);
  }
  Append(out, "# HELP keywarden_request_duration_seconds GetDataKey latency in the server.\n");
  Append(out, "# TYPE keywarden_request_duration_seconds histogram\n");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kLatencyBuckets.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    Append(out, "keywarden_request_duration_seconds_bucket{{method=\"GetDataKey\",le=\"{}\"}} {}\n",
           kLatencyBuckets[i], cumulative);
  }
  const uint64_t count = latency_count_.load(std::memory_order_relaxed);
  Append(out, "keywarden_request_duration_seconds_bucket{{method=\"GetDataKey\",le=\"+Inf\"}} {}\n",
         count);
  Append(out, "keywarden_request_duration_seconds_sum{{method=\"GetDataKey\"}} {:.9f}\n",
         static_cast<double>(latency_sum_ns_.load(std::memory_order_relaxed)) / 1e9);
  Append(out, "keywarden_request_duration_seconds_count{{method=\"GetDataKey\"}} {}\n", count);
  Append(out, "# HELP keywarden_store_errors_total Failed reads of the cluster store.\n");
  Append(out, "# TYPE keywarden_store_errors_total counter\n");
  Append(out, "keywarden_store_errors_total {}\n", store_errors_.load(std::memory_order_relaxed));
  Append(out, "# HELP keywarden_store_up 1 while the cluster store confirms this replica's KEK.\n");
  Append(out, "# TYPE keywarden_store_up gauge\n");
  Append(out, "keywarden_store_up {}\n", store_up_.load(std::memory_order_relaxed));
  return out;
}

}  // namespace keywarden::service
