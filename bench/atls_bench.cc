// aTLS benchmarks (Google Benchmark): client and server in one process, one server worker
// thread and the benchmark thread as the client (two busy threads, as on a 2-core node), over
// 127.0.0.1, with the fake HMAC issuer/validator of tests/atls_fakes.h (a real TPM quote and its
// verification cost comes on top). Arg 0 = plain mode (server attests), 1 = mutual mode,
// 2 = join mode (only the client attests; the server validates it, as the join service does).
//
//   BM_AtlsHandshake     Connect and close: one full TLS 1.3 handshake with a fresh nonce, a
//                        fresh P-256 key and certificate per attesting side, issue + validate
//   BM_AtlsConnectCall   a fresh connection per call: the shape of a verified join
//   BM_AtlsCall          calls on one established connection (64-byte request and response)
//
// items_per_second is per wall-clock second. process_cpu_us is the CPU time of the whole process
// (client + server + poller) per item; minus the "CPU" column (the client thread) it gives the
// server's share, which is what a service pays per connection.
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>

#include "keywarden/crypto/atls.h"
#include "tests/atls_fakes.h"

namespace keywarden {
namespace {

using crypto::AtlsClient;
using crypto::AtlsServer;

double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1e-6;
}

struct Setup {
  std::unique_ptr<AtlsServer> server;
  std::unique_ptr<AtlsClient> client;
};

enum Mode { kPlain = 0, kMutual = 1, kJoin = 2 };

Setup MakeSetup(int64_t mode) {
  const SecretBytes key = atls_fakes::FakeMacKey();
  crypto::AtlsServerOptions server_options;
  if (mode != kJoin)
    server_options.issuer = std::make_shared<atls_fakes::FakeIssuer>("server", key);
  if (mode != kPlain) {
    server_options.client_validator = std::make_shared<atls_fakes::FakeValidator>(key);
  }
  server_options.worker_threads = 1;
  auto server = AtlsServer::Start(
      std::move(server_options),
      [](std::string_view, std::string_view request,
         const crypto::PeerInfo&) -> absl::StatusOr<std::string> { return std::string(request); });
  if (!server.ok()) std::abort();
  crypto::AtlsClientOptions client_options;
  if (mode != kJoin) {
    client_options.server_validator = std::make_shared<atls_fakes::FakeValidator>(key);
  } else {
    client_options.accept_unattested_server = true;
  }
  if (mode != kPlain) client_options.issuer = std::make_shared<atls_fakes::FakeIssuer>("node", key);
  auto client = AtlsClient::New(std::move(client_options));
  if (!client.ok()) std::abort();
  return {*std::move(server), *std::move(client)};
}

constexpr std::chrono::seconds kTimeout{10};

template <typename Body>
void Run(benchmark::State& state, Body body) {
  const double cpu_start = ProcessCpuSeconds();
  for (auto _ : state) {
    if (!body()) {
      state.SkipWithError("aTLS operation failed");
      break;
    }
  }
  const double cpu = ProcessCpuSeconds() - cpu_start;
  state.SetItemsProcessed(state.iterations());
  state.counters["process_cpu_us"] =
      state.iterations() > 0 ? 1e6 * cpu / static_cast<double>(state.iterations()) : 0.0;
}

void BM_AtlsHandshake(benchmark::State& state) {
  Setup setup = MakeSetup(state.range(0));
  const std::string endpoint = setup.server->endpoint();
  Run(state, [&] { return setup.client->Connect(endpoint, kTimeout).ok(); });
  setup.server->Shutdown();
}
BENCHMARK(BM_AtlsHandshake)
    ->Arg(kPlain)
    ->Arg(kMutual)
    ->Arg(kJoin)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_AtlsConnectCall(benchmark::State& state) {
  Setup setup = MakeSetup(state.range(0));
  const std::string endpoint = setup.server->endpoint();
  const std::string request(64, 'r');
  Run(state, [&] { return setup.client->Call(endpoint, "join", request, kTimeout).ok(); });
  setup.server->Shutdown();
}
BENCHMARK(BM_AtlsConnectCall)
    ->Arg(kPlain)
    ->Arg(kMutual)
    ->Arg(kJoin)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

void BM_AtlsCall(benchmark::State& state) {
  Setup setup = MakeSetup(state.range(0));
  auto connection = setup.client->Connect(setup.server->endpoint(), kTimeout);
  if (!connection.ok()) {
    state.SkipWithError("connect failed");
    return;
  }
  const std::string request(64, 'r');
  Run(state, [&] { return (*connection)->Call("echo", request, kTimeout).ok(); });
  connection->reset();
  setup.server->Shutdown();
}
BENCHMARK(BM_AtlsCall)
    ->Arg(kPlain)
    ->Arg(kMutual)
    ->Arg(kJoin)
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace keywarden

BENCHMARK_MAIN();
