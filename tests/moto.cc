// Moto test peer. See moto.h.
#include "tests/moto.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>
#include <thread>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/status.h"
#include "src/byok/http.h"
#include "src/byok/sigv4.h"

extern char** environ;

namespace keywarden::testing {
namespace {

std::string Errno(std::string_view what) { return std::string(what) + ": " + std::strerror(errno); }

// FindProgram looks `name` up in $MOTO_SERVER (for moto_server) or PATH.
std::string FindProgram(const std::string& name) {
  if (const char* env = std::getenv("MOTO_SERVER"); env != nullptr && *env != '\0') return env;
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  std::string_view rest(path);
  while (!rest.empty()) {
    const size_t colon = rest.find(':');
    const std::string dir(rest.substr(0, colon));
    rest = colon == std::string_view::npos ? "" : rest.substr(colon + 1);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

bool PortAccepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

// Between returns the text between the first `open` and the following `close`, or "".
std::string Between(const std::string& text, std::string_view open, std::string_view close) {
  const size_t a = text.find(open);
  if (a == std::string::npos) return "";
  const size_t b = text.find(close, a + open.size());
  if (b == std::string::npos) return "";
  return text.substr(a + open.size(), b - a - open.size());
}

std::string Form(const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string out;
  for (const auto& [k, v] : fields) {
    if (!out.empty()) out.push_back('&');
    out += byok::sigv4::UriEncode(k, false) + "=" + byok::sigv4::UriEncode(v, false);
  }
  return out;
}

}  // namespace

Moto::Moto() : dir_("kw-moto") {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ADD_FAILURE() << Errno("socket");
    return;
  }
  reserved_fd_ = fd;
  const int one = 1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << Errno("reserving a loopback port");
    return;
  }
  port_ = ntohs(addr.sin_port);
}

Moto::~Moto() {
  Stop();
  if (reserved_fd_ >= 0) close(reserved_fd_);
}

std::string Moto::endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }

std::string Moto::Log() const { return ReadFile(dir_ / "moto.log").value_or(""); }

void Moto::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

::testing::AssertionResult Moto::Start() {
  if (port_ == 0) return ::testing::AssertionFailure() << "no port reserved";
  if (pid_ > 0) return ::testing::AssertionFailure() << "moto already runs";
  const std::string program = FindProgram("moto_server");
  if (program.empty()) {
    return ::testing::AssertionFailure() << "moto_server not found in PATH (pip install "
                                            "'moto[server]'), or set MOTO_SERVER";
  }
  std::vector<std::string> args = {program, "-H", "127.0.0.1", "-p", std::to_string(port_)};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string no_auth = "INITIAL_NO_AUTH_ACTION_COUNT=3";
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view var(*e);
    if (var.starts_with("INITIAL_NO_AUTH_ACTION_COUNT=") || var.starts_with("AWS_")) continue;
    envp.push_back(*e);
  }
  envp.push_back(no_auth.data());
  envp.push_back(nullptr);
  const std::string log = (dir_ / "moto.log").string();
  const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) {
    if (log_fd >= 0) close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return ::testing::AssertionFailure() << Errno("opening " + log);
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0) _exit(127);
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  const int fork_errno = errno;
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    errno = fork_errno;
    return ::testing::AssertionFailure() << Errno("fork");
  }
  pid_ = pid;

  // moto imports its backends lazily; it usually listens within a few seconds.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!PortAccepts(port_)) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return ::testing::AssertionFailure() << "moto_server exited; log:\n" << Log();
    }
    if (std::chrono::steady_clock::now() > deadline) {
      Stop();
      return ::testing::AssertionFailure() << "moto_server did not listen in 60 s; log:\n" << Log();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  // The three unauthenticated requests (signed with made-up credentials moto does not check
  // yet; the signature only tells moto which service is meant).
  constexpr std::string_view kBootKey = "AKIDBOOTSTRAPEXAMPLE";
  constexpr std::string_view kBootSecret = "bootstrap-secret-not-checked-by-moto-0000";
  const auto iam =
      [&](std::vector<std::pair<std::string, std::string>> fields) -> absl::StatusOr<Reply> {
    fields.emplace_back("Version", "2010-05-08");
    return Signed("iam", "POST", "/",
                  {{"content-type", "application/x-www-form-urlencoded; charset=utf-8"}},
                  Form(fields), kBootKey, kBootSecret);
  };
  auto user = iam({{"Action", "CreateUser"}, {"UserName", "keywarden"}});
  if (!user.ok() || user->status != 200) {
    return ::testing::AssertionFailure()
           << "IAM CreateUser: " << (user.ok() ? user->body : user.status().ToString());
  }
  auto key = iam({{"Action", "CreateAccessKey"}, {"UserName", "keywarden"}});
  if (!key.ok() || key->status != 200) {
    return ::testing::AssertionFailure()
           << "IAM CreateAccessKey: " << (key.ok() ? key->body : key.status().ToString());
  }
  access_key_id_ = Between(key->body, "<AccessKeyId>", "</AccessKeyId>");
  secret_access_key_ = Between(key->body, "<SecretAccessKey>", "</SecretAccessKey>");
  if (access_key_id_.empty() || secret_access_key_.empty()) {
    return ::testing::AssertionFailure() << "IAM CreateAccessKey: no key in " << key->body;
  }
  auto policy = iam(
      {{"Action", "PutUserPolicy"},
       {"UserName", "keywarden"},
       {"PolicyName", "allow-all"},
       {"PolicyDocument", R"({"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*",)"
                          R"("Resource":"*"}]})"}});
  if (!policy.ok() || policy->status != 200) {
    return ::testing::AssertionFailure()
           << "IAM PutUserPolicy: " << (policy.ok() ? policy->body : policy.status().ToString());
  }
  return ::testing::AssertionSuccess();
}

absl::StatusOr<Moto::Reply> Moto::Signed(std::string_view service, std::string_view method,
                                         std::string_view path,
                                         std::vector<std::pair<std::string, std::string>> headers,
                                         const std::string& body, std::string_view access_key_id,
                                         std::string_view secret) {
  const auto body_bytes =
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(body.data()), body.size());
  byok::sigv4::Request request;
  request.method = std::string(method);
  request.path = std::string(path);
  request.headers = std::move(headers);
  request.headers.emplace_back("host", "127.0.0.1:" + std::to_string(port_));
  request.payload_hash = crypto::HexEncode(crypto::Sha256({body_bytes}));
  const SecretBytes secret_bytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(secret.data()), secret.size()));
  const bool s3 = service == "s3";
  auto authorization = byok::sigv4::Sign(request, {std::string(access_key_id), &secret_bytes, ""},
                                         kRegion, service, {.s3 = s3}, std::time(nullptr));
  if (!authorization.ok()) return authorization.status();
  auto client = byok::http::Client::New(std::chrono::seconds(30));
  if (!client.ok()) return client.status();
  byok::http::Request http_request;
  http_request.method = std::string(method);
  http_request.url = endpoint() + std::string(path);
  http_request.headers = std::move(request.headers);
  http_request.headers.emplace_back("Authorization", *authorization);
  http_request.body = body_bytes;
  auto response = (*client)->Send(http_request);
  if (!response.ok()) return response.status();
  return Reply{response->status, response->body};
}

absl::StatusOr<std::string> Moto::CreateKmsKey() {
  auto reply = Signed(
      "kms", "POST", "/",
      {{"content-type", "application/x-amz-json-1.1"}, {"x-amz-target", "TrentService.CreateKey"}},
      R"({"Description":"keywarden test KEK"})", access_key_id_, secret_access_key_);
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) {
    return InternalError("KMS CreateKey: {} {}", reply->status, reply->body);
  }
  const auto json = nlohmann::json::parse(reply->body, nullptr, false);
  if (!json.is_object() || !json.contains("KeyMetadata") || !json["KeyMetadata"].is_object() ||
      !json["KeyMetadata"].value("KeyId", nlohmann::json()).is_string()) {
    return InternalError("KMS CreateKey: {}", reply->body);
  }
  return json["KeyMetadata"]["KeyId"].get<std::string>();
}

absl::Status Moto::CreateBucket(std::string_view bucket) {
  auto reply =
      Signed("s3", "PUT", "/" + std::string(bucket), {}, "", access_key_id_, secret_access_key_);
  if (!reply.ok()) return reply.status();
  if (reply->status != 200) {
    return InternalError("S3 CreateBucket: {} {}", reply->status, reply->body);
  }
  return absl::OkStatus();
}

}  // namespace keywarden::testing
