#include "tests/service_process.h"

#include <fcntl.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <sstream>

#include "keywarden/crypto/encoding.h"
#include "kms.grpc.pb.h"
#include "tests/subprocess.h"

namespace keywarden::testing {

ServiceProcess::ServiceProcess(std::vector<std::string> serve_args, std::filesystem::path log_file)
    : args_(std::move(serve_args)), log_file_(std::move(log_file)) {}

ServiceProcess::~ServiceProcess() {
  Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

bool ServiceProcess::Spawn() {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return false;
  std::vector<std::string> argv = {KEYWARDEN_BINARY, "serve"};
  argv.insert(argv.end(), args_.begin(), args_.end());
  bool has_listen = false;
  for (const auto& a : args_) has_listen = has_listen || a == "--listen";
  if (!has_listen) {
    argv.push_back("--listen");
    argv.push_back("127.0.0.1:0");
  }
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    const int err = open(log_file_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    dup2(out[1], 1);
    if (err >= 0) dup2(err, 2);
    // The test may block signals in its threads; the service must start with a clean mask.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    execv(cargv[0], cargv.data());
    _exit(127);
  }
  close(out[1]);
  pid_ = pid;
  stdout_fd_ = out[0];
  return true;
}

bool ServiceProcess::WaitListening(std::chrono::milliseconds timeout) {
  if (pid_ <= 0 || stdout_fd_ < 0) return false;
  // With --measurements the join service runs too: wait for its line as well.
  const bool want_join = std::find(args_.begin(), args_.end(), "--measurements") != args_.end();
  std::string buffer;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  // Value after `prefix` on a line that starts with it, or "".
  auto line_value = [&buffer](std::string_view prefix) -> std::string {
    size_t start = 0;
    while (start < buffer.size()) {
      const size_t eol = buffer.find('\n', start);
      if (eol == std::string::npos) break;
      const std::string_view line(buffer.data() + start, eol - start);
      if (line.substr(0, prefix.size()) == prefix) return std::string(line.substr(prefix.size()));
      start = eol + 1;
    }
    return "";
  };
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{stdout_fd_, POLLIN, 0};
    if (poll(&p, 1, 100) > 0) {
      char chunk[256];
      const ssize_t n = read(stdout_fd_, chunk, sizeof(chunk));
      if (n <= 0) break;  // stdout closed: the process ended
      buffer.append(chunk, static_cast<size_t>(n));
      endpoint_ = line_value("listening on ");
      join_endpoint_ = line_value("join service listening on ");
      if (!endpoint_.empty() && (!want_join || !join_endpoint_.empty())) return true;
    }
  }
  WaitExit(std::chrono::milliseconds(2000));
  return false;
}

int ServiceProcess::WaitExit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return exit_code_;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    const pid_t r = waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      pid_ = 0;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return exit_code_;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

int ServiceProcess::Stop(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return exit_code_;
  kill(pid_, SIGTERM);
  const int code = WaitExit(timeout);
  if (pid_ > 0) Kill();
  return code;
}

void ServiceProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = 0;
  exit_code_ = -1;
}

std::string ServiceProcess::stderr_text() const {
  std::ifstream in(log_file_);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

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
