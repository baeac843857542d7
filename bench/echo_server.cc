// keywarden_echo_server: a trivial kms.API service that gives the RPC floor for
// scripts/bench-service. GetDataKey parses the request and answers with `length` zero bytes:
// no key, no crypto, no store, so what remains is the cost of gRPC and protobuf.
//
// The server is built the way `keywarden serve` builds its own (src/service/server.cc):
// grpc::ServerBuilder, the default grpc.health.v1 service, insecure credentials, gRPC's default
// server options, AddListeningPort, BuildAndStart, Wait; and, by default, GetDataKey as a raw
// callback method (kms::API::WithRawCallbackMethod_GetDataKey) that parses and serializes the
// messages itself, as `keywarden serve` does. `--api sync` serves the generated synchronous
// kms::API::Service instead (the "synchronous echo" of DESIGN.md §9). Never use it for
// anything but benchmarks: the "keys" are zeros.
//
//   keywarden_echo_server --listen 127.0.0.1:0 [--api callback|sync] [--threads N]
//
// Prints "listening on HOST:PORT" on stdout once it accepts calls (with port 0, the port the
// kernel chose). SIGTERM or SIGINT shuts it down cleanly.
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <pthread.h>
#include <signal.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "kms.grpc.pb.h"

namespace {

// kMaxLength bounds the answer so that a stray request cannot make the server allocate
// gigabytes; the real service's limit is far below it.
constexpr uint32_t kMaxLength = 1 << 20;

// Echo answers `request` with request.length() zero bytes.
grpc::Status Echo(const kms::GetDataKeyRequest& request, kms::GetDataKeyResponse* response) {
  if (request.length() > kMaxLength) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        fmt::format("length {} exceeds {}", request.length(), kMaxLength));
  }
  response->mutable_data_key()->assign(request.length(), '\0');
  return grpc::Status::OK;
}

// SyncEchoService is the generated synchronous service. Thread-safe (stateless).
class SyncEchoService final : public kms::API::Service {
 public:
  grpc::Status GetDataKey(grpc::ServerContext* /*context*/, const kms::GetDataKeyRequest* request,
                          kms::GetDataKeyResponse* response) override {
    return Echo(*request, response);
  }
};

// CallbackEchoService serves GetDataKey as `keywarden serve` does: a raw callback method that
// parses the request and serializes the answer itself, finishing inline on the gRPC thread
// that delivered the call. Thread-safe (stateless).
class CallbackEchoService final
    : public kms::API::WithRawCallbackMethod_GetDataKey<kms::API::Service> {
 public:
  grpc::ServerUnaryReactor* GetDataKey(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(Handle(request, response));
    return reactor;
  }

 private:
  static grpc::Status Handle(const grpc::ByteBuffer* request, grpc::ByteBuffer* response) {
    kms::GetDataKeyRequest parsed;
    grpc::ByteBuffer copy(*request);  // shares the slices; ProtoBufferReader needs non-const
    grpc::ProtoBufferReader reader(&copy);
    if (!parsed.ParseFromZeroCopyStream(&reader)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "request is not a valid kms.GetDataKeyRequest");
    }
    kms::GetDataKeyResponse answer;
    if (grpc::Status status = Echo(parsed, &answer); !status.ok()) return status;
    bool own_buffer = false;
    return grpc::SerializationTraits<kms::GetDataKeyResponse>::Serialize(answer, response,
                                                                         &own_buffer);
  }
};

// HostOf returns the host part of "HOST:PORT" or "[V6]:PORT" (everything before the last ':').
std::string HostOf(const std::string& address) {
  const size_t colon = address.rfind(':');
  return colon == std::string::npos ? address : address.substr(0, colon);
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "127.0.0.1:0";
  std::string api = "callback";
  int threads = 0;
  CLI::App app{
      "keywarden_echo_server: a kms.API service whose GetDataKey returns `length` zero bytes, "
      "built like `keywarden serve`. The RPC floor for scripts/bench-service.",
      "keywarden_echo_server"};
  app.add_option("--listen", listen, "HOST:PORT to listen on (port 0: any free port)")
      ->capture_default_str();
  app.add_option("--api", api,
                 "callback: raw callback method, as `keywarden serve`; sync: the generated "
                 "synchronous service")
      ->check(CLI::IsMember({"callback", "sync"}))
      ->capture_default_str();
  app.add_option("--threads", threads,
                 "cap the server's threads with a grpc::ResourceQuota (0: gRPC's defaults, "
                 "which is what `keywarden serve` uses)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  // Block SIGTERM and SIGINT before gRPC starts its threads so that they inherit the mask and
  // only the waiter thread below sees the signals; Shutdown is not async-signal-safe.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  // As `keywarden serve`: the default grpc.health.v1 service (a callback service: it gives the
  // server its callback machinery even with --api sync).
  grpc::EnableDefaultHealthCheckService(true);
  std::unique_ptr<grpc::Service> service;
  if (api == "sync") {
    service = std::make_unique<SyncEchoService>();
  } else {
    service = std::make_unique<CallbackEchoService>();
  }
  grpc::ServerBuilder builder;
  int selected_port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &selected_port);
  builder.RegisterService(service.get());
  grpc::ResourceQuota quota("keywarden_echo_server");
  if (threads > 0) {
    quota.SetMaxThreads(threads);
    builder.SetResourceQuota(quota);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    fmt::print(stderr, "keywarden_echo_server: cannot listen on {}\n", listen);
    return 1;
  }
  fmt::print("listening on {}:{}\n", HostOf(listen), selected_port);
  std::fflush(stdout);

  std::thread waiter([&server, &stop_signals] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    // In-flight calls get 10 s, as `keywarden serve`'s default --drain-timeout.
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(10));
  });
  server->Wait();
  waiter.join();
  return 0;
}
