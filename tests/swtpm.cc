#include "tests/swtpm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

// PortFree reports whether 127.0.0.1:port can be bound right now (no SO_REUSEADDR, so a port
// in TIME_WAIT counts as taken).
bool PortFree(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  const bool free = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return free;
}

bool Accepts(int port) {
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

// PickPortPair returns P such that P and P+1 are free, from a range below Linux's default
// ephemeral ports (32768-60999), so outgoing connections do not take them meanwhile.
int PickPortPair() {
  static std::mt19937 rng(static_cast<unsigned>(
      std::chrono::steady_clock::now().time_since_epoch().count() ^ getpid()));
  std::uniform_int_distribution<int> dist(10000, 32000);
  for (int attempt = 0; attempt < 200; ++attempt) {
    const int port = dist(rng) & ~1;
    if (PortFree(port) && PortFree(port + 1)) return port;
  }
  return 0;
}

// ProcessState returns the state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...), or 0 when
// the process does not exist.
char ProcessState(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(stat, line)) return 0;
  const size_t close_paren = line.rfind(')');
  if (close_paren == std::string::npos || close_paren + 2 >= line.size()) return 0;
  return line[close_paren + 2];
}

// IsSwtpm checks that `pid` still is a swtpm process (guards against PID reuse before a kill).
bool IsSwtpm(pid_t pid) {
  std::ifstream cmdline("/proc/" + std::to_string(pid) + "/cmdline");
  std::string argv0;
  std::getline(cmdline, argv0, '\0');
  return fs::path(argv0).filename() == "swtpm";
}

bool Gone(pid_t pid) {
  const char state = ProcessState(pid);
  return state == 0 || state == 'Z' || state == 'X';  // a daemon's zombie may never be reaped
}

std::string Tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

}  // namespace

// ---- SwtpmCa ----

SwtpmCa::SwtpmCa() : dir_("kw-swtpm-ca") {
  if (dir_.path().empty()) return;
  const fs::path d = dir_.path();
  dir_.WriteFile("swtpm-localca.conf", "statedir = " + d.string() +
                                           "\nsigningkey = " + (d / "signkey.pem").string() +
                                           "\nissuercert = " + (d / "issuercert.pem").string() +
                                           "\ncertserial = " + (d / "certserial").string() + "\n");
  dir_.WriteFile("swtpm-localca.options",
                 "--platform-manufacturer Keywarden\n--platform-version 2.1\n"
                 "--platform-model swtpm-test\n");
  setup_config_ = dir_.WriteFile(
      "swtpm_setup.conf",
      "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = " +
          (d / "swtpm-localca.conf").string() +
          "\ncreate_certs_tool_options = " + (d / "swtpm-localca.options").string() + "\n");
}

fs::path SwtpmCa::ca_bundle() {
  if (!bundle_.empty()) return bundle_;
  const std::optional<std::string> issuer = ReadFile(issuer_cert());
  const std::optional<std::string> root = ReadFile(root_cert());
  if (!issuer || !root) {
    ADD_FAILURE() << "the swtpm CA in " << dir_.path() << " has no certificates yet";
    return {};
  }
  bundle_ = dir_.WriteFile("bundle.pem", *issuer + *root, 0644);
  return bundle_;
}

// ---- SwtpmInstance ----

SwtpmInstance::SwtpmInstance(std::shared_ptr<SwtpmCa> ca)
    : ca_(ca ? std::move(ca) : std::make_shared<SwtpmCa>()), dir_("kw-swtpm") {}

SwtpmInstance::~SwtpmInstance() {
  if (running()) {
    if (auto stopped = Stop(); !stopped) ADD_FAILURE() << stopped.message();
  }
}

std::string SwtpmInstance::tcti() const { return "swtpm:port=" + std::to_string(port_); }

::testing::AssertionResult SwtpmInstance::Manufacture() {
  const fs::path state = dir_ / "state";
  std::error_code error;
  fs::create_directories(state, error);
  if (error) return ::testing::AssertionFailure() << "mkdir " << state << ": " << error.message();
  RunOptions options;
  options.timeout = std::chrono::minutes(2);
  // swtpm_setup runs swtpm itself (on a private socket) to create the EKs, then calls
  // swtpm_localca to certify them and writes the certificates to NV.
  const RunResult result =
      Run({"swtpm_setup", "--tpm2", "--tpmstate", state.string(), "--config",
           ca_->setup_config().string(), "--create-ek-cert", "--create-platform-cert",
           "--lock-nvram", "--overwrite", "--pcr-banks", "sha256"},
          options);
  setup_output_ = result.stdout_text + result.stderr_text;
  if (!result.ok()) return ::testing::AssertionFailure() << "swtpm_setup failed:\n" << result;
  manufactured_ = true;
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult SwtpmInstance::Spawn() {
  const fs::path pid_file = dir_ / "swtpm.pid";
  const fs::path log_file = dir_ / "swtpm.log";
  for (int attempt = 0; attempt < 5; ++attempt) {
    const int port = PickPortPair();
    if (port == 0) return ::testing::AssertionFailure() << "no free loopback port pair";
    std::error_code ignored;
    fs::remove(pid_file, ignored);
    // --daemon returns once swtpm listens (it binds before forking); its stdio goes to
    // /dev/null, so Run does not wait for it.
    const RunResult result =
        Run({"swtpm", "socket", "--tpm2", "--server",
             "type=tcp,port=" + std::to_string(port) + ",bindaddr=127.0.0.1", "--ctrl",
             "type=tcp,port=" + std::to_string(port + 1) + ",bindaddr=127.0.0.1", "--tpmstate",
             "dir=" + (dir_ / "state").string(), "--flags", "startup-clear", "--daemon", "--pid",
             "file=" + pid_file.string(), "--log", "file=" + log_file.string() + ",level=1"});
    if (!result.ok()) {
      // Most likely a port taken between the check and the bind: try other ports.
      setup_output_ += "\n[swtpm start attempt failed]\n" + result.stderr_text;
      continue;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    pid_t pid = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      if (const auto text = ReadFile(pid_file); text && !text->empty()) {
        pid = static_cast<pid_t>(std::atoi(text->c_str()));
        if (pid > 0 && Accepts(port + 1)) break;
      }
      std::this_thread::sleep_for(milliseconds(20));
    }
    if (pid <= 0 || !IsSwtpm(pid)) {
      return ::testing::AssertionFailure() << "swtpm did not start\n" << LogTail();
    }
    port_ = port;
    pid_ = pid;
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "swtpm did not start after 5 attempts\n" << LogTail();
}

::testing::AssertionResult SwtpmInstance::Start() {
  if (running()) return ::testing::AssertionFailure() << "swtpm already runs";
  if (dir_.path().empty()) return ::testing::AssertionFailure() << "no temporary directory";
  if (!manufactured_) {
    if (auto made = Manufacture(); !made) return made;
  }
  return Spawn();
}

::testing::AssertionResult SwtpmInstance::Stop() {
  if (!running()) return ::testing::AssertionFailure() << "swtpm does not run";
  const pid_t pid = std::exchange(pid_, 0);
  RunOptions options;
  options.timeout = std::chrono::seconds(10);
  const RunResult shutdown =
      Run({"swtpm_ioctl", "--tcp", "127.0.0.1:" + std::to_string(port_ + 1), "-s"}, options);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!Gone(pid) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(milliseconds(10));
  }
  if (!Gone(pid)) {
    if (IsSwtpm(pid)) kill(pid, SIGKILL);
    return ::testing::AssertionFailure()
           << "swtpm (pid " << pid << ") ignored swtpm_ioctl -s and was killed\n"
           << shutdown;
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult SwtpmInstance::Restart() {
  if (auto stopped = Stop(); !stopped) return stopped;
  return Start();
}

RunResult SwtpmInstance::Tpm2Tool(std::vector<std::string> argv) const {
  RunOptions options;
  options.env_overrides = {{"TPM2TOOLS_TCTI", tcti()}};
  options.timeout = std::chrono::seconds(60);
  return Run(std::move(argv), options);
}

std::string SwtpmInstance::LogTail() const {
  const std::string log = ReadFile(dir_ / "swtpm.log").value_or("");
  return "--- swtpm log ---\n" + Tail(log, 20) + "--- swtpm_setup ---\n" + Tail(setup_output_, 20);
}

}  // namespace keywarden::testing
