// Test helpers for the key service: ServiceProcess runs `keywarden serve` in the background;
// KmsClient calls it over gRPC (typed, raw bytes, and grpc.health.v1).
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

// ServiceProcess starts `keywarden serve ARGS... --listen 127.0.0.1:0` (a Background) and learns
// its port from the "listening on" line. Its stderr goes to a file (stderr_text()). The process
// gets PR_SET_PDEATHSIG=SIGKILL, and the destructor kills it: nothing outlives the test.
class ServiceProcess {
 public:
  ServiceProcess(std::vector<std::string> serve_args, std::filesystem::path log_file);
  ~ServiceProcess();
  ServiceProcess(const ServiceProcess&) = delete;
  ServiceProcess& operator=(const ServiceProcess&) = delete;

  // Start spawns the process and waits (up to `timeout`) for it to listen. Returns false if it
  // exited or timed out first (exit_code() then tells how it ended, if it did).
  bool Start(std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    return Spawn() && WaitListening(timeout);
  }
  // Spawn starts the process without waiting. Call it from a thread that outlives the
  // process (PR_SET_PDEATHSIG follows the forking thread), e.g. the test's main thread.
  bool Spawn();
  // WaitListening waits for the "listening on" line; see Start.
  bool WaitListening(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // WaitExit waits for the process to end by itself and returns its exit code (-1: killed or
  // still running at the timeout).
  int WaitExit(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Stop sends SIGTERM and returns the exit code.
  int Stop(std::chrono::milliseconds timeout = std::chrono::seconds(30));
  // Kill sends SIGKILL and reaps the process.
  void Kill();

  const std::string& endpoint() const { return endpoint_; }
  // join_endpoint is the join service's HOST:PORT (from its "join service listening on" line)
  // when the process was started with --measurements.
  const std::string& join_endpoint() const { return join_endpoint_; }
  pid_t pid() const { return process_.pid(); }
  // running is true from Spawn until the process is seen to end (WaitExit, Stop, Kill).
  bool running() const { return process_.pid() > 0; }
  int exit_code() const { return exit_code_; }
  std::string stderr_text() const;

 private:
  std::vector<std::string> args_;
  std::filesystem::path log_file_;
  Background process_;
  int exit_code_ = -1;
  std::string endpoint_;
  std::string join_endpoint_;
};

// CallResult is one GetDataKey call's outcome.
struct CallResult {
  grpc::StatusCode code = grpc::StatusCode::UNKNOWN;
  std::string message;
  std::string key;  // raw bytes
  bool ok() const { return code == grpc::StatusCode::OK; }
};

class KmsClient {
 public:
  explicit KmsClient(
      const std::string& endpoint,
      std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials());
  CallResult GetDataKey(const std::string& id, uint32_t length,
                        std::chrono::milliseconds deadline = std::chrono::seconds(5));
  // Raw sends `request_bytes` as the body of kms.API/GetDataKey without protobuf encoding.
  CallResult Raw(const std::string& request_bytes);
  // HealthStatus returns grpc.health.v1 Check's status for `service` (1 = SERVING,
  // 2 = NOT_SERVING), or -1 when the call failed.
  int HealthStatus(const std::string& service = "");

 private:
  std::shared_ptr<grpc::Channel> channel_;
};

// LoadLoop calls GetDataKey on `endpoints` (round robin) from `threads` threads until stopped,
// checking every answer against `expected` (id -> key); it counts successes, failures and
// wrong keys.
class LoadLoop {
 public:
  LoadLoop(std::vector<std::string> endpoints, std::map<std::string, std::string> expected,
           int threads = 2);
  ~LoadLoop();
  void Stop();
  uint64_t ok() const { return ok_.load(); }
  uint64_t failed() const { return failed_.load(); }
  uint64_t wrong() const { return wrong_.load(); }

 private:
  std::vector<std::string> endpoints_;
  std::map<std::string, std::string> expected_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> ok_{0}, failed_{0}, wrong_{0};
  std::vector<std::thread> threads_;
};

// DeriveDekWithCli runs `keywarden derive dek` on `master_secret` and returns the key as raw
// bytes (empty, and the test fails, on error): the offline reference the service must match.
std::string DeriveDekWithCli(const std::filesystem::path& master_secret, const std::string& id,
                             size_t length = 32);

// HexOf returns lower-case hex of raw bytes.
std::string HexOf(const std::string& bytes);

}  // namespace keywarden::testing
