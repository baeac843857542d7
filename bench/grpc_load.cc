// keywarden_load: a closed-loop gRPC load generator for kms.API/GetDataKey (the key service,
// or keywarden_echo_server as the RPC floor). Used by scripts/bench-service.
//
//   keywarden_load --endpoint HOST:PORT --concurrency C --duration S [--warmup S]
//                  [--id-count K] [--length N] [--threads T] [--channels H]
//                  [--server-pid PID]... [--json]
//
// C calls are in flight at all times: each completion immediately starts the next call on the
// same slot. The client uses the asynchronous CompletionQueue API, one queue per client thread
// (default one thread), so that it stays cheap on a machine whose cores it shares with the
// server (about 17-23 µs of client CPU per call here, nearly all in gRPC and the kernel).
// Ids are drawn uniformly from K UUID-like ids (fixed seed: every run asks for the same ids).
//
// Timeline: [0, warmup) warm-up, not counted; [warmup, warmup + duration) the measurement
// window: every call that completes in it is counted, and its latency (from just before the
// call starts to its completion) is kept (all samples, exact percentiles, nearest rank); at warmup
// + duration no further calls start, and the run ends when the calls in flight have drained (each
// has a deadline of --timeout).
//
// With --server-pid, utime + stime of each PID is read from /proc/PID/stat at both ends of
// the window: server CPU per request, usually steadier than requests/s. When the first
// PID is pinned to a single core, the busy time of that core (/proc/stat) minus the CPU of the
// server PIDs pinned there is reported too: the share of the server's core that other processes
// took, which is what inflates p99 on a shared machine; likewise for the load generator's own
// core when it is pinned to one.
//
// Exit status: 0 when every call succeeded, 2 when some call failed (the report says which
// codes), 1 when the run could not start (bad flags, endpoint not reachable).
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kms.grpc.pb.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string endpoint;
  int concurrency = 32;
  double duration_s = 10;
  double warmup_s = 2;
  int id_count = 1000;
  uint32_t length = 32;
  int threads = 1;
  int channels = 1;
  double timeout_s = 5;
  std::vector<int> server_pids;
  bool json = false;
};

// MakeIds returns `count` distinct UUID-like ids (version-4 layout) from a fixed seed.
std::vector<std::string> MakeIds(int count) {
  std::mt19937_64 rng(0x6b657977617264);  // "keyward"
  std::vector<std::string> ids;
  ids.reserve(count);
  for (int i = 0; i < count; ++i) {
    const uint64_t a = rng();
    const uint64_t b = rng();
    ids.push_back(fmt::format("{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}", a >> 32,
                              (a >> 16) & 0xffff, a & 0xfff, 8 | ((b >> 60) & 0x3),
                              (b >> 48) & 0xfff, b & 0xffffffffffff));
  }
  return ids;
}

// Call is one slot of the closed loop: the state of the call it has in flight.
struct Call {
  kms::API::Stub* stub = nullptr;
  std::optional<grpc::ClientContext> context;  // a ClientContext serves one call only
  kms::GetDataKeyRequest request;
  kms::GetDataKeyResponse response;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<kms::GetDataKeyResponse>> reader;
  Clock::time_point start;
};

// WorkerResult is what one client thread saw.
struct WorkerResult {
  std::vector<uint64_t> latencies_ns;  // ok calls that completed in the window
  uint64_t ok = 0;                     // in the window
  std::map<int, uint64_t> errors;      // in the window, by grpc::StatusCode
  uint64_t outside_calls = 0;          // completed during warm-up or drain
  std::map<int, uint64_t> outside_errors;
};

// Worker drives `calls` on its own completion queue until `window_end`, then drains them.
class Worker {
 public:
  Worker(std::vector<Call*> calls, const std::vector<std::string>& ids, const Options& options,
         Clock::time_point window_start, Clock::time_point window_end, uint64_t seed)
      : calls_(std::move(calls)),
        ids_(ids),
        length_(options.length),
        timeout_(std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::duration<double>(options.timeout_s))),
        window_start_(window_start),
        window_end_(window_end),
        rng_(seed),
        pick_(0, ids.size() - 1) {
    // Enough for ~100 k calls/s per thread without reallocating in the window.
    result_.latencies_ns.reserve(static_cast<size_t>(std::min(100000.0 * options.duration_s, 1e7)) +
                                 1024);
  }

  void Run() {
    for (Call* call : calls_) Start(call);
    size_t in_flight = calls_.size();
    while (in_flight > 0) {
      void* tag = nullptr;
      bool ok = false;
      if (!cq_.Next(&tag, &ok)) break;
      const Clock::time_point now = Clock::now();
      Call* call = static_cast<Call*>(tag);
      Record(*call, now);
      if (now < window_end_) {
        Start(call);
      } else {
        --in_flight;
      }
    }
    cq_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (cq_.Next(&tag, &ok)) {
    }
  }

  WorkerResult& result() { return result_; }

 private:
  void Start(Call* call) {
    call->reader.reset();
    call->context.reset();
    call->context.emplace();
    call->request.set_data_key_id(ids_[pick_(rng_)]);
    call->request.set_length(length_);
    call->start = Clock::now();
    // gRPC takes deadlines on the system clock only.
    call->context->set_deadline(std::chrono::system_clock::now() + timeout_);
    call->reader = call->stub->AsyncGetDataKey(&*call->context, call->request, &cq_);
    call->reader->Finish(&call->response, &call->status, call);
  }

  void Record(const Call& call, Clock::time_point now) {
    const bool in_window = now >= window_start_ && now < window_end_;
    if (!in_window) {
      ++result_.outside_calls;
      if (!call.status.ok()) ++result_.outside_errors[call.status.error_code()];
      return;
    }
    if (!call.status.ok()) {
      ++result_.errors[call.status.error_code()];
      return;
    }
    ++result_.ok;
    const int64_t ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(now - call.start).count();
    result_.latencies_ns.push_back(static_cast<uint64_t>(std::max<int64_t>(ns, 0)));
  }

  std::vector<Call*> calls_;
  const std::vector<std::string>& ids_;
  const uint32_t length_;
  const std::chrono::system_clock::duration timeout_;
  const Clock::time_point window_start_;
  const Clock::time_point window_end_;
  grpc::CompletionQueue cq_;
  std::mt19937_64 rng_;
  std::uniform_int_distribution<size_t> pick_;
  WorkerResult result_;
};

// CpuSeconds returns utime + stime of `pid` (all its threads, live and dead) from
// /proc/PID/stat, or nullopt if the process is gone.
std::optional<double> CpuSeconds(int pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  // The command name (field 2) may contain spaces and parentheses: fields resume after the
  // last ')'. Field 3 is the first token there; utime and stime are fields 14 and 15.
  const size_t paren = line.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream fields(line.substr(paren + 1));
  std::string token;
  uint64_t utime = 0;
  uint64_t stime = 0;
  for (int field = 3; field <= 15 && fields >> token; ++field) {
    if (field == 14) utime = std::stoull(token);
    if (field == 15) stime = std::stoull(token);
  }
  if (!fields) return std::nullopt;
  return static_cast<double>(utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// SoleCore returns the CPU that `pid` is pinned to, or nullopt if it may run on several.
std::optional<int> SoleCore(int pid) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(pid, sizeof(set), &set) != 0 || CPU_COUNT(&set) != 1) return std::nullopt;
  for (int core = 0; core < CPU_SETSIZE; ++core) {
    if (CPU_ISSET(core, &set)) return core;
  }
  return std::nullopt;
}

// CoreBusySeconds returns the time CPU `core` has not been idle (user, nice, system, irq,
// softirq, steal; not idle or iowait) from /proc/stat.
std::optional<double> CoreBusySeconds(int core) {
  std::ifstream in("/proc/stat");
  const std::string label = fmt::format("cpu{}", core);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string name;
    fields >> name;
    if (name != label) continue;
    uint64_t busy = 0;
    uint64_t value = 0;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    for (int field = 0; field < 8 && fields >> value; ++field) {
      if (field != 3 && field != 4) busy += value;
    }
    return static_cast<double>(busy) / static_cast<double>(sysconf(_SC_CLK_TCK));
  }
  return std::nullopt;
}

double SelfCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& tv) { return tv.tv_sec + tv.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

const char* CodeName(int code) {
  switch (static_cast<grpc::StatusCode>(code)) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "CODE_UNKNOWN";
  }
}

// JsonString quotes `s` as a JSON string.
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      out += fmt::format("\\u{:04x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

// PercentileUs returns the nearest-rank `p` quantile (0 < p <= 1) of `sorted`, in µs.
double PercentileUs(const std::vector<uint64_t>& sorted, double p) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  rank = std::clamp<size_t>(rank, 1, sorted.size());
  return sorted[rank - 1] / 1e3;
}

// ServerSample is what --server-pid records for one PID at both ends of the window.
struct ServerSample {
  explicit ServerSample(int p) : pid(p) {}

  int pid = 0;
  std::optional<int> core = SoleCore(pid);
  std::optional<double> cpu_begin;
  std::optional<double> cpu_end;

  std::optional<double> cpu_s() const {
    if (!cpu_begin || !cpu_end) return std::nullopt;
    return *cpu_end - *cpu_begin;
  }
};

int Run(const Options& options) {
  const std::vector<std::string> ids = MakeIds(options.id_count);

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<kms::API::Stub>> stubs;
  for (int i = 0; i < options.channels; ++i) {
    grpc::ChannelArguments args;
    // Distinct arguments give each channel its own subchannel, hence its own connection.
    args.SetInt("keywarden.load.channel", i);
    channels.push_back(
        grpc::CreateCustomChannel(options.endpoint, grpc::InsecureChannelCredentials(), args));
    if (!channels.back()->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::seconds(5))) {
      fmt::print(stderr, "keywarden_load: cannot connect to {} within 5 s\n", options.endpoint);
      return 1;
    }
    stubs.push_back(kms::API::NewStub(channels.back()));
  }

  std::vector<Call> calls(options.concurrency);
  std::vector<std::vector<Call*>> per_thread(options.threads);
  for (int i = 0; i < options.concurrency; ++i) {
    calls[i].stub = stubs[i % options.channels].get();
    per_thread[i % options.threads].push_back(&calls[i]);
  }

  const auto to_duration = [](double s) {
    return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
  };
  const Clock::time_point begin = Clock::now();
  const Clock::time_point window_start = begin + to_duration(options.warmup_s);
  const Clock::time_point window_end = window_start + to_duration(options.duration_s);

  std::vector<std::unique_ptr<Worker>> workers;
  for (int t = 0; t < options.threads; ++t) {
    workers.push_back(std::make_unique<Worker>(std::move(per_thread[t]), ids, options, window_start,
                                               window_end, 1000 + t));
  }
  std::vector<std::thread> threads;
  for (auto& worker : workers) threads.emplace_back([&worker] { worker->Run(); });

  // This thread only samples CPU at both ends of the window.
  std::vector<ServerSample> servers;
  for (int pid : options.server_pids) servers.emplace_back(pid);
  // -1: no single core to watch.
  const int server_core = servers.empty() ? -1 : servers[0].core.value_or(-1);
  const int client_core = SoleCore(getpid()).value_or(-1);
  std::optional<double> client_core_busy_begin;
  std::optional<double> client_core_busy_end;
  std::optional<double> core_busy_begin;
  std::optional<double> core_busy_end;
  std::this_thread::sleep_until(window_start);
  const Clock::time_point cpu_begin = Clock::now();
  const double self_begin = SelfCpuSeconds();
  for (ServerSample& s : servers) s.cpu_begin = CpuSeconds(s.pid);
  if (server_core >= 0) core_busy_begin = CoreBusySeconds(server_core);
  if (client_core >= 0) client_core_busy_begin = CoreBusySeconds(client_core);
  std::this_thread::sleep_until(window_end);
  const Clock::time_point cpu_end = Clock::now();
  const double self_end = SelfCpuSeconds();
  for (ServerSample& s : servers) s.cpu_end = CpuSeconds(s.pid);
  if (server_core >= 0) core_busy_end = CoreBusySeconds(server_core);
  if (client_core >= 0) client_core_busy_end = CoreBusySeconds(client_core);
  for (std::thread& thread : threads) thread.join();

  WorkerResult total;
  for (auto& worker : workers) {
    WorkerResult& r = worker->result();
    total.ok += r.ok;
    total.outside_calls += r.outside_calls;
    for (auto [code, n] : r.errors) total.errors[code] += n;
    for (auto [code, n] : r.outside_errors) total.outside_errors[code] += n;
    total.latencies_ns.insert(total.latencies_ns.end(), r.latencies_ns.begin(),
                              r.latencies_ns.end());
    r.latencies_ns = {};
  }
  std::sort(total.latencies_ns.begin(), total.latencies_ns.end());
  uint64_t errors = 0;
  for (auto [code, n] : total.errors) errors += n;
  uint64_t outside_errors = 0;
  for (auto [code, n] : total.outside_errors) outside_errors += n;

  const double rate = static_cast<double>(total.ok) / options.duration_s;
  const double cpu_window_s = std::chrono::duration<double>(cpu_end - cpu_begin).count();
  // CPU per request: CPU rate over the sampled window divided by the request rate, so that a
  // sampling thread woken late does not skew the figure.
  const auto us_per_request = [&](double cpu_s) {
    return rate > 0 && cpu_window_s > 0 ? cpu_s / cpu_window_s / rate * 1e6 : 0.0;
  };
  const double client_cpu_s = self_end - self_begin;
  const double p50 = PercentileUs(total.latencies_ns, 0.50);
  const double p99 = PercentileUs(total.latencies_ns, 0.99);
  const double p999 = PercentileUs(total.latencies_ns, 0.999);
  const double max = total.latencies_ns.empty() ? 0 : total.latencies_ns.back() / 1e3;

  double server_cpu_sum_s = 0;
  bool server_cpu_complete = !servers.empty();
  for (const ServerSample& s : servers) {
    if (s.cpu_s()) {
      server_cpu_sum_s += *s.cpu_s();
    } else {
      server_cpu_complete = false;
    }
  }
  // The share of the server's core that the server PIDs pinned there did not use.
  std::optional<double> core_other;
  if (core_busy_begin && core_busy_end && cpu_window_s > 0) {
    double other_s = *core_busy_end - *core_busy_begin;
    for (const ServerSample& s : servers) {
      if (s.core == server_core && s.cpu_s()) other_s -= *s.cpu_s();
    }
    core_other = std::clamp(other_s / cpu_window_s, 0.0, 1.0);
  }
  // The same for this process's core, when it is pinned to one (and it is not the server's).
  std::optional<double> client_core_other;
  if (client_core_busy_begin && client_core_busy_end && cpu_window_s > 0 &&
      client_core != server_core) {
    const double other_s = *client_core_busy_end - *client_core_busy_begin - client_cpu_s;
    client_core_other = std::clamp(other_s / cpu_window_s, 0.0, 1.0);
  }

  if (options.json) {
    std::string out = "{";
    out += fmt::format(
        "\"endpoint\":{},\"concurrency\":{},\"threads\":{},\"channels\":{},\"warmup_s\":{},"
        "\"duration_s\":{},\"id_count\":{},\"length\":{},",
        JsonString(options.endpoint), options.concurrency, options.threads, options.channels,
        options.warmup_s, options.duration_s, options.id_count, options.length);
    out += fmt::format("\"requests\":{},\"ok\":{},\"errors\":{{", total.ok + errors, total.ok);
    bool first = true;
    for (auto [code, n] : total.errors) {
      out += fmt::format("{}\"{}\":{}", first ? "" : ",", CodeName(code), n);
      first = false;
    }
    out += fmt::format(
        "}},\"requests_per_s\":{:.1f},\"latency_us\":{{\"p50\":{:.1f},\"p99\":{:.1f},"
        "\"p99_9\":{:.1f},\"max\":{:.1f}}},",
        rate, p50, p99, p999, max);
    out += "\"server_cpu\":[";
    first = true;
    for (const ServerSample& s : servers) {
      out += first ? "" : ",";
      first = false;
      const std::optional<double> cpu = s.cpu_s();
      out += fmt::format("{{\"pid\":{},\"cpu_s\":{},\"us_per_request\":{}}}", s.pid,
                         cpu ? fmt::format("{:.3f}", *cpu) : "null",
                         cpu ? fmt::format("{:.2f}", us_per_request(*cpu)) : "null");
    }
    out += "],\"server_core\":";
    out += server_core >= 0 ? fmt::format("{}", server_core) : "null";
    out += ",\"server_core_other_share\":";
    out += core_other ? fmt::format("{:.3f}", *core_other) : "null";
    out += ",\"server_cpu_us_per_request\":";
    out += server_cpu_complete ? fmt::format("{:.2f}", us_per_request(server_cpu_sum_s)) : "null";
    out += fmt::format(",\"client_cpu_us_per_request\":{:.2f},", us_per_request(client_cpu_s));
    out += "\"client_core_other_share\":";
    out += client_core_other ? fmt::format("{:.3f},", *client_core_other) : "null,";
    out += fmt::format("\"outside_window\":{{\"calls\":{},\"errors\":{}}}}}", total.outside_calls,
                       outside_errors);
    fmt::print("{}\n", out);
  } else {
    fmt::print(
        "keywarden_load: {}, concurrency {}, {} client thread(s), {} channel(s), {} ids, "
        "length {}\n",
        options.endpoint, options.concurrency, options.threads, options.channels, options.id_count,
        options.length);
    fmt::print("window       {:.1f} s after {:.1f} s warm-up\n", options.duration_s,
               options.warmup_s);
    fmt::print("requests     {} ({} ok, {} failed)\n", total.ok + errors, total.ok, errors);
    for (auto [code, n] : total.errors) fmt::print("  {:<20} {}\n", CodeName(code), n);
    fmt::print("throughput   {:.0f} requests/s\n", rate);
    fmt::print("latency      p50 {:.1f} µs, p99 {:.1f} µs, p99.9 {:.1f} µs, max {:.1f} µs\n", p50,
               p99, p999, max);
    for (const ServerSample& s : servers) {
      if (const std::optional<double> cpu = s.cpu_s()) {
        fmt::print("server cpu   pid {}: {:.2f} µs/request ({:.0f} % of a core)\n", s.pid,
                   us_per_request(*cpu), 100 * *cpu / cpu_window_s);
      } else {
        fmt::print("server cpu   pid {}: not readable\n", s.pid);
      }
    }
    if (core_other) {
      fmt::print("server core  cpu{}: {:.0f} % taken by other processes\n", server_core,
                 100 * *core_other);
    }
    fmt::print("client cpu   {:.2f} µs/request\n", us_per_request(client_cpu_s));
    if (client_core_other) {
      fmt::print("client core  cpu{}: {:.0f} % taken by other processes\n", client_core,
                 100 * *client_core_other);
    }
    fmt::print("outside      {} calls during warm-up and drain, {} failed\n", total.outside_calls,
               outside_errors);
  }
  return errors + outside_errors == 0 ? 0 : 2;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  CLI::App app{
      "keywarden_load: closed-loop load on kms.API/GetDataKey; reports requests/s and "
      "p50/p99/p99.9/max latency over the measurement window.",
      "keywarden_load"};
  app.add_option("--endpoint", options.endpoint, "HOST:PORT of the kms.API service")->required();
  app.add_option("--concurrency", options.concurrency, "calls in flight at all times")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  app.add_option("--duration", options.duration_s, "measurement window, seconds")
      ->check(CLI::Range(0.001, 3600.0))
      ->capture_default_str();
  app.add_option("--warmup", options.warmup_s, "warm-up before the window, seconds")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--id-count", options.id_count, "number of distinct data_key_ids")
      ->check(CLI::Range(1, 10000000))
      ->capture_default_str();
  app.add_option("--length", options.length, "requested key length, bytes")->capture_default_str();
  app.add_option("--threads", options.threads, "client threads (one completion queue each)")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--channels", options.channels, "client channels (one connection each)")
      ->check(CLI::Range(1, 1024))
      ->capture_default_str();
  app.add_option("--timeout", options.timeout_s, "deadline of each call, seconds")
      ->check(CLI::Range(0.001, 3600.0))
      ->capture_default_str();
  app.add_option("--server-pid", options.server_pids,
                 "PID whose utime+stime to sample over the window (repeatable)");
  app.add_flag("--json", options.json, "print one JSON line instead of text");
  CLI11_PARSE(app, argc, argv);
  if (options.threads > options.concurrency) {
    fmt::print(stderr, "keywarden_load: --threads {} exceeds --concurrency {}\n", options.threads,
               options.concurrency);
    return 1;
  }
  return Run(options);
}
