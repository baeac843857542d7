#include "tests/swtpm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <random>

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;

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

// Tail returns the last `lines` lines of `text`.
std::string Tail(const std::string& text, size_t lines) {
  size_t start = text.size();
  if (start > 0 && text.back() == '\n') --start;  // the final newline ends the last line
  for (size_t n = 0; n < lines; ++n) {
    const size_t nl = start == 0 ? std::string::npos : text.rfind('\n', start - 1);
    if (nl == std::string::npos) return text;
    start = nl;
  }
  return text.substr(start + 1);
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
  // swtpm writes its log to swtpm.log itself; its standard output and error go to swtpm.out.
  BackgroundOptions options;
  options.log = dir_ / "swtpm.out";
  for (int attempt = 0; attempt < 5; ++attempt) {
    const int port = PickPortPair();
    if (port == 0) return ::testing::AssertionFailure() << "no free loopback port pair";
    if (auto started = process_.Start(
            {"swtpm", "socket", "--tpm2", "--server",
             "type=tcp,port=" + std::to_string(port) + ",bindaddr=127.0.0.1", "--ctrl",
             "type=tcp,port=" + std::to_string(port + 1) + ",bindaddr=127.0.0.1", "--tpmstate",
             "dir=" + (dir_ / "state").string(), "--flags", "startup-clear", "--log",
             "file=" + (dir_ / "swtpm.log").string() + ",level=1"},
            options);
        !started) {
      return started;
    }
    auto up = WaitForPort(process_, port + 1, "swtpm", std::chrono::seconds(10));
    if (up) up = WaitForPort(process_, port, "swtpm", std::chrono::seconds(10));
    if (up) {
      port_ = port;
      return ::testing::AssertionSuccess();
    }
    // Most likely a port taken between the check and the bind: try other ports.
    process_.Kill();
    setup_output_ += std::string("\n[swtpm start attempt failed]\n") + up.message();
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
  RunOptions options;
  options.timeout = std::chrono::seconds(10);
  const RunResult shutdown =
      Run({"swtpm_ioctl", "--tcp", "127.0.0.1:" + std::to_string(port_ + 1), "-s"}, options);
  process_.Wait(std::chrono::seconds(5));
  if (process_.Running()) {
    const pid_t pid = process_.pid();
    process_.Kill();
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
  const std::string out = ReadFile(dir_ / "swtpm.out").value_or("");
  return "--- swtpm log ---\n" + Tail(log, 20) + "--- swtpm output ---\n" + Tail(out, 20) +
         "--- swtpm_setup ---\n" + Tail(setup_output_, 20);
}

}  // namespace keywarden::testing
