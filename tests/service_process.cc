#include "tests/service_process.h"

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <optional>

#include "keywarden/crypto/encoding.h"
#include "kms.grpc.pb.h"
#include "tests/subprocess.h"

namespace keywarden::testing {

ServiceProcess::ServiceProcess(std::vector<std::string> serve_args, std::filesystem::path log_file)
    : args_(std::move(serve_args)), log_file_(std::move(log_file)) {}

ServiceProcess::~ServiceProcess() { Kill(); }

bool ServiceProcess::Spawn() {
  std::vector<std::string> argv = {KEYWARDEN_BINARY, "serve"};
  argv.insert(argv.end(), args_.begin(), args_.end());
  if (std::find(args_.begin(), args_.end(), "--listen") == args_.end()) {
    argv.push_back("--listen");
    argv.push_back("127.0.0.1:0");
  }
  exit_code_ = -1;
  endpoint_.clear();
  join_endpoint_.clear();
  BackgroundOptions options;
  options.log = log_file_;
  options.capture_stdout = true;
  return process_.Start(std::move(argv), options);
}

bool ServiceProcess::WaitListening(std::chrono::milliseconds timeout) {
  if (!running()) return false;
  // With --measurements the join service runs too: wait for its line as well.
  const bool want_join = std::find(args_.begin(), args_.end(), "--measurements") != args_.end();
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  const auto left = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::max(
        deadline - std::chrono::steady_clock::now(), std::chrono::steady_clock::duration::zero()));
  };
  std::optional<std::string> endpoint = process_.WaitLine("listening on ", left());
  std::optional<std::string> join_endpoint;
  if (endpoint && want_join)
    join_endpoint = process_.WaitLine("join service listening on ", left());
  endpoint_ = endpoint.value_or("");
  join_endpoint_ = join_endpoint.value_or("");
  if (endpoint && (!want_join || join_endpoint)) return true;
  // Standard output closed (the process ended) or the time is up.
  WaitExit(std::chrono::milliseconds(2000));
  return false;
}

int ServiceProcess::WaitExit(std::chrono::milliseconds timeout) {
  if (!running()) return exit_code_;
  const int code = process_.Wait(timeout);
  if (!running()) exit_code_ = code;
  return code;
}

int ServiceProcess::Stop(std::chrono::milliseconds timeout) {
  if (!running()) return exit_code_;
  process_.Signal(SIGTERM);
  const int code = WaitExit(timeout);
  Kill();
  return code;
}

void ServiceProcess::Kill() {
  if (!running()) return;
  process_.Kill();
  exit_code_ = -1;
}

std::string ServiceProcess::stderr_text() const { return ReadFile(log_file_).value_or(""); }

KmsClient::KmsClient(const std::string& endpoint,
                     std::shared_ptr<grpc::ChannelCredentials> credentials)
    : channel_(grpc::CreateChannel(endpoint, credentials)) {}

CallResult KmsClient::GetDataKey(const std::string& id, uint32_t length,
                                 std::chrono::milliseconds deadline) {
  auto stub = kms::API::NewStub(channel_);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + deadline);
  kms::GetDataKeyRequest request;
  request.set_data_key_id(id);
  request.set_length(length);
  kms::GetDataKeyResponse response;
  const grpc::Status status = stub->GetDataKey(&context, request, &response);
  return CallResult{status.error_code(), status.error_message(), response.data_key()};
}

namespace {

CallResult RawCall(grpc::Channel* channel, const std::string& method, const std::string& body) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice slice(body);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  std::string bytes;
  std::vector<grpc::Slice> slices;
  if (status.ok() && response.Dump(&slices).ok()) {
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return CallResult{status.error_code(), status.error_message(), bytes};
}

}  // namespace

CallResult KmsClient::Raw(const std::string& request_bytes) {
  return RawCall(channel_.get(), "/kms.API/GetDataKey", request_bytes);
}

int KmsClient::HealthStatus(const std::string& service) {
  // grpc.health.v1.HealthCheckRequest{string service = 1}; response {ServingStatus status = 1}.
  std::string request;
  if (!service.empty()) {
    request.push_back(0x0a);
    request.push_back(static_cast<char>(service.size()));
    request += service;
  }
  const CallResult r = RawCall(channel_.get(), "/grpc.health.v1.Health/Check", request);
  if (!r.ok()) return -1;
  if (r.key.size() == 2 && r.key[0] == 0x08) return r.key[1];
  return r.key.empty() ? 0 : -1;  // proto3 omits status 0 (UNKNOWN)
}

LoadLoop::LoadLoop(std::vector<std::string> endpoints, std::map<std::string, std::string> expected,
                   int threads)
    : endpoints_(std::move(endpoints)), expected_(std::move(expected)) {
  for (int t = 0; t < threads; ++t) {
    threads_.emplace_back([this, t] {
      std::vector<KmsClient> clients;
      for (const auto& e : endpoints_) clients.emplace_back(e);
      size_t i = static_cast<size_t>(t);
      while (!stop_.load()) {
        for (const auto& [id, key] : expected_) {
          if (stop_.load()) break;
          CallResult r = clients[i++ % clients.size()].GetDataKey(
              id, static_cast<uint32_t>(key.size()), std::chrono::milliseconds(1000));
          if (!r.ok()) {
            ++failed_;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
          } else if (r.key != key) {
            ++wrong_;
          } else {
            ++ok_;
          }
        }
      }
    });
  }
}

LoadLoop::~LoadLoop() { Stop(); }

void LoadLoop::Stop() {
  stop_ = true;
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

std::string DeriveDekWithCli(const std::filesystem::path& master_secret, const std::string& id,
                             size_t length) {
  const RunResult r = Run({KEYWARDEN_BINARY, "derive", "dek", "--master-secret",
                           master_secret.string(), "--id", id, "--length", std::to_string(length)});
  EXPECT_TRUE(r.ok()) << r;
  auto bytes = crypto::HexDecode(r.stdout_text.substr(0, r.stdout_text.find('\n')));
  return bytes.ok() ? std::string(bytes->begin(), bytes->end()) : std::string();
}

std::string HexOf(const std::string& bytes) {
  return crypto::HexEncode(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
}

}  // namespace keywarden::testing
