// PyKmipServer: see pykmip.h.
#include "tests/pykmip.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>
#include <thread>
#include <vector>

extern char** environ;

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;

constexpr char kPykmipServer[] = "/usr/bin/pykmip-server";
constexpr char kPython[] = "/usr/bin/python3";

// kCreateKeyScript creates and activates an AES key through PyKMIP's client and prints its UID.
constexpr char kCreateKeyScript[] = R"(
import sys
from kmip import enums
from kmip.pie.client import ProxyKmipClient
client = ProxyKmipClient(config='client', config_file=sys.argv[1])
with client:
    uid = client.create(
        enums.CryptographicAlgorithm.AES, int(sys.argv[2]),
        cryptographic_usage_mask=[enums.CryptographicUsageMask.ENCRYPT,
                                  enums.CryptographicUsageMask.DECRYPT])
    client.activate(uid)
print(uid)
)";

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

::testing::AssertionResult RunOk(const std::vector<std::string>& argv, const fs::path& dir) {
  RunOptions options;
  options.working_dir = dir;
  const RunResult r = Run(argv, options);
  if (!r.ok()) return ::testing::AssertionFailure() << r;
  return ::testing::AssertionSuccess();
}

}  // namespace

PyKmipServer::PyKmipServer() : dir_("keywarden-pykmip") {
  // Reserve a loopback port: bound with SO_REUSEADDR, never listened on.
  reserved_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (reserved_fd_ < 0 ||
      setsockopt(reserved_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(reserved_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(reserved_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << Errno("reserving a loopback port");
    return;
  }
  port_ = ntohs(addr.sin_port);
}

PyKmipServer::~PyKmipServer() {
  if (pid_ != 0) (void)Stop();
  if (reserved_fd_ >= 0) close(reserved_fd_);
}

::testing::AssertionResult PyKmipServer::MakeFiles() {
  const fs::path tls = dir_ / "tls";
  std::error_code error;
  fs::create_directories(tls, error);
  fs::create_directories(dir_ / "policies", error);
  if (error)
    return ::testing::AssertionFailure() << "cannot create directories: " << error.message();
  const std::vector<std::string> ec_key = {"-newkey", "ec", "-pkeyopt",
                                           "ec_paramgen_curve:prime256v1", "-nodes"};
  auto make_ca = [&](const std::string& name) {
    std::vector<std::string> argv = {"openssl", "req", "-x509"};
    argv.insert(argv.end(), ec_key.begin(), ec_key.end());
    argv.insert(argv.end(), {"-keyout", name + ".key", "-out", name + ".crt", "-days", "2", "-subj",
                             "/CN=keywarden pykmip test " + name, "-addext",
                             "basicConstraints=critical,CA:TRUE", "-addext",
                             "keyUsage=critical,keyCertSign,cRLSign"});
    return RunOk(argv, tls);
  };
  int serial = 1;
  auto make_leaf = [&](const std::string& name, const std::string& ca,
                       const std::string& extensions) {
    const std::string ext_file = name + ".ext";
    dir_.WriteFile(fs::path("tls") / ext_file, extensions);
    std::vector<std::string> req = {"openssl", "req", "-new"};
    req.insert(req.end(), ec_key.begin(), ec_key.end());
    req.insert(req.end(),
               {"-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=keywarden-" + name});
    if (auto r = RunOk(req, tls); !r) return r;
    return RunOk({"openssl", "x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey",
                  ca + ".key", "-set_serial", std::to_string(serial++), "-days", "2", "-out",
                  name + ".crt", "-extfile", ext_file},
                 tls);
  };
  const std::string server_ext =
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
      "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n";
  const std::string client_ext =
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
      "extendedKeyUsage=clientAuth\n";
  ::testing::AssertionResult made = make_ca("ca");
  if (made) made = make_ca("other-ca");
  if (made) made = make_leaf("server", "ca", server_ext);
  if (made) made = make_leaf("client", "ca", client_ext);
  // The other client has the same subject as the real one: only its issuer differs.
  if (made) made = make_leaf("other-client", "other-ca", client_ext);
  if (!made) return made << "\n(generating TLS files with the openssl CLI)";
  files_.ca_cert = tls / "ca.crt";
  files_.client_cert = tls / "client.crt";
  files_.client_key = tls / "client.key";
  files_.other_ca_cert = tls / "other-ca.crt";
  files_.other_client_cert = tls / "other-client.crt";
  files_.other_client_key = tls / "other-client.key";

  std::ostringstream server_conf;
  server_conf << "[server]\n"
              << "hostname=127.0.0.1\n"
              << "port=" << port_ << "\n"
              << "certificate_path=" << (tls / "server.crt").string() << "\n"
              << "key_path=" << (tls / "server.key").string() << "\n"
              << "ca_path=" << files_.ca_cert.string() << "\n"
              << "auth_suite=TLS1.2\n"
              << "policy_path=" << (dir_ / "policies").string() << "\n"
              << "enable_tls_client_auth=True\n"
              << "logging_level=INFO\n"
              << "database_path=" << (dir_ / "pykmip.db").string() << "\n";
  dir_.WriteFile("server.conf", server_conf.str());
  std::ostringstream client_conf;
  client_conf << "[client]\n"
              << "host=127.0.0.1\n"
              << "port=" << port_ << "\n"
              << "certfile=" << files_.client_cert.string() << "\n"
              << "keyfile=" << files_.client_key.string() << "\n"
              << "ca_certs=" << files_.ca_cert.string() << "\n"
              << "cert_reqs=CERT_REQUIRED\n"
              << "ssl_version=PROTOCOL_TLSv1_2\n"
              << "do_handshake_on_connect=True\n"
              << "suppress_ragged_eofs=True\n";
  dir_.WriteFile("client.conf", client_conf.str());
  dir_.WriteFile("create_key.py", kCreateKeyScript);
  files_made_ = true;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult PyKmipServer::Spawn() {
  std::vector<std::string> args = {kPython, kPykmipServer,
                                   "-f",    (dir_ / "server.conf").string(),
                                   "-l",    (dir_ / "server.log").string()};
  // Everything the child needs is built before fork(): between fork and exec only
  // async-signal-safe calls are allowed.
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out_path = (dir_ / "server.out").string();
  const int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (out_fd < 0 || null_fd < 0) {
    if (out_fd >= 0) close(out_fd);
    if (null_fd >= 0) close(null_fd);
    return ::testing::AssertionFailure() << Errno("opening " + out_path);
  }
  const std::string dir = dir_.path().string();
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    // Its own process group: PyKMIP forks helpers (a multiprocessing manager and the policy
    // directory monitor) that PR_SET_PDEATHSIG does not reach; Stop and Kill signal the group.
    if (setpgid(0, 0) != 0) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    if (dup2(null_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0) _exit(127);
    if (chdir(dir.c_str()) != 0) _exit(127);
    execve(argv[0], argv.data(), environ);
    _exit(127);
  }
  const int fork_errno = errno;
  close(out_fd);
  close(null_fd);
  if (pid < 0) {
    errno = fork_errno;
    return ::testing::AssertionFailure() << Errno("fork");
  }
  pid_ = pid;
  return ::testing::AssertionSuccess();
}

bool PyKmipServer::Accepts() const {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port_));
  const bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

::testing::AssertionResult PyKmipServer::Start(std::chrono::milliseconds timeout) {
  if (port_ == 0) return ::testing::AssertionFailure() << "no port reserved";
  if (pid_ != 0) return ::testing::AssertionFailure() << "already running";
  if (!files_made_) {
    if (auto made = MakeFiles(); !made) return made;
  }
  if (auto spawned = Spawn(); !spawned) return spawned;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = 0;  // it failed before forking any helper
      return ::testing::AssertionFailure()
             << "pykmip-server exited during start (status " << status << ")\n"
             << LogTail();
    }
    // PyKMIP listens only after it has set up TLS: a TCP connection means it serves. (The probe
    // costs the server one failed handshake, logged and ignored.)
    if (Accepts()) return ::testing::AssertionSuccess();
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return ::testing::AssertionFailure() << "pykmip-server did not listen on " << endpoint()
                                       << " within " << timeout.count() << " ms\n"
                                       << LogTail();
}

::testing::AssertionResult PyKmipServer::Stop() {
  if (pid_ == 0) return ::testing::AssertionSuccess();
  // SIGINT makes PyKMIP shut down at once; SIGTERM would wait for the next connection.
  // The group's ID is the server's PID (setpgid in Spawn); SIGINT reaches only the server, which
  // then stops its helpers itself.
  kill(pid_, SIGINT);
  for (int i = 0; i < 50; ++i) {
    // Detect the exit without reaping (WNOWAIT): while the server is an unreaped zombie its PID,
    // and so its group's ID, cannot be reused, so the SIGKILL reaches only helpers left behind.
    siginfo_t info{};
    if (waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
        info.si_pid == pid_) {
      kill(-pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = 0;
      return ::testing::AssertionSuccess();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return Kill();
}

::testing::AssertionResult PyKmipServer::Kill() {
  if (pid_ == 0) return ::testing::AssertionSuccess();
  kill(-pid_, SIGKILL);  // the server and the helpers it forked
  waitpid(pid_, nullptr, 0);
  pid_ = 0;
  return ::testing::AssertionSuccess();
}

byok::KmipConfig PyKmipServer::Config(const std::string& uid) const {
  return byok::KmipConfig{.endpoint = endpoint(),
                          .key_id = uid,
                          .client_cert = files_.client_cert.string(),
                          .client_key = files_.client_key.string(),
                          .server_ca = files_.ca_cert.string()};
}

::testing::AssertionResult PyKmipServer::CreateAesKey(int bits, std::string* uid) {
  RunOptions options;
  options.working_dir = dir_.path();
  const RunResult r = Run({kPython, (dir_ / "create_key.py").string(),
                           (dir_ / "client.conf").string(), std::to_string(bits)},
                          options);
  if (!r.ok()) return ::testing::AssertionFailure() << r << "\n" << LogTail();
  std::string out = r.stdout_text;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  if (out.empty() || out.find('\n') != std::string::npos) {
    return ::testing::AssertionFailure() << "unexpected output from the key script: " << r;
  }
  *uid = out;
  return ::testing::AssertionSuccess();
}

std::string PyKmipServer::LogTail(size_t lines) const {
  std::string text;
  for (const char* name : {"server.log", "server.out"}) {
    const auto contents = ReadFile(dir_ / name);
    if (!contents) continue;
    std::vector<std::string> all;
    std::istringstream in(*contents);
    for (std::string line; std::getline(in, line);) all.push_back(line);
    text += std::string("--- ") + name + " (last lines) ---\n";
    for (size_t i = all.size() > lines ? all.size() - lines : 0; i < all.size(); ++i) {
      text += all[i] + "\n";
    }
  }
  return text;
}

}  // namespace keywarden::testing
