// PyKmipServer: see pykmip.h.
#include "tests/pykmip.h"

#include <signal.h>

#include <sstream>
#include <vector>

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

::testing::AssertionResult RunOk(const std::vector<std::string>& argv, const fs::path& dir) {
  RunOptions options;
  options.working_dir = dir;
  const RunResult r = Run(argv, options);
  if (!r.ok()) return ::testing::AssertionFailure() << r;
  return ::testing::AssertionSuccess();
}

}  // namespace

PyKmipServer::PyKmipServer() : dir_("keywarden-pykmip"), port_(ReservedPort::Reserve()) {}

PyKmipServer::~PyKmipServer() { (void)Stop(); }

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
              << "port=" << port() << "\n"
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
              << "port=" << port() << "\n"
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

::testing::AssertionResult PyKmipServer::Start(std::chrono::milliseconds timeout) {
  if (port() == 0) return ::testing::AssertionFailure() << "no port reserved";
  if (server_.pid() > 0) return ::testing::AssertionFailure() << "already running";
  if (!files_made_) {
    if (auto made = MakeFiles(); !made) return made;
  }
  BackgroundOptions options;
  options.log = dir_ / "server.out";
  // Its own process group: PyKMIP forks helpers (a multiprocessing manager and the policy
  // directory monitor) that PR_SET_PDEATHSIG does not reach; Kill signals the group.
  options.own_process_group = true;
  options.working_dir = dir_.path();
  if (auto started = server_.Start({kPython, kPykmipServer, "-f", (dir_ / "server.conf").string(),
                                    "-l", (dir_ / "server.log").string()},
                                   options);
      !started) {
    return started;
  }
  // PyKMIP listens only after it has set up TLS: a TCP connection means it serves. (The probe
  // costs the server one failed handshake, logged and ignored.)
  if (auto up = WaitForPort(server_, port(), "pykmip-server", timeout); !up) {
    return up << "\n" << LogTail();
  }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult PyKmipServer::Stop() {
  if (!server_.Running()) return ::testing::AssertionSuccess();
  // SIGINT makes PyKMIP shut down at once; SIGTERM would wait for the next connection. It goes
  // to the server only, which then stops its helpers itself; once it has ended, Background
  // kills whatever is left in its process group.
  kill(server_.pid(), SIGINT);
  if (server_.Wait(std::chrono::seconds(5)) == -1) server_.Kill();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult PyKmipServer::Kill() {
  server_.Kill();  // the server and the helpers it forked
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
