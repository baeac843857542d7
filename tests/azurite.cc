#include "tests/azurite.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <thread>
#include <vector>

namespace keywarden::testing {
namespace {

int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

bool Accepts(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace

Azurite::Azurite() : dir_("kw-azurite") {}

Azurite::~Azurite() { Stop(); }

std::string Azurite::Program() {
  if (const char* env = std::getenv("KEYWARDEN_AZURITE_BLOB"); env != nullptr && *env != '\0') {
    return env;
  }
  const std::filesystem::path installed =
      "/opt/keywarden-test-peers/node_modules/.bin/azurite-blob";
  return std::filesystem::exists(installed) ? installed.string() : "";
}

bool Azurite::Start() {
  const std::string program = Program();
  if (program.empty()) return false;
  port_ = FreePort();
  if (port_ == 0) return false;
  const std::string location = (dir_ / "data").string();
  const std::string log = (dir_ / "azurite.log").string();
  std::vector<std::string> args{program,
                                "--blobHost",
                                "127.0.0.1",
                                "--blobPort",
                                std::to_string(port_),
                                "--location",
                                location,
                                "--disableTelemetry",
                                "--skipApiVersionCheck",
                                "--loose",
                                "--silent"};
  pid_ = fork();
  if (pid_ == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    const int out = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (out >= 0) {
      dup2(out, STDOUT_FILENO);
      dup2(out, STDERR_FILENO);
    }
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    if (Accepts(port_)) return true;
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = 0;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

void Azurite::Stop() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
}

std::string Azurite::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(port_) + "/" + kAccount;
}

std::string Azurite::log() const { return ReadFile(dir_ / "azurite.log").value_or(""); }

}  // namespace keywarden::testing
