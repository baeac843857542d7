#include "tests/etcd_cluster.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <fstream>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>

#include "etcd.grpc.pb.h"

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

::testing::AssertionResult RunOk(std::vector<std::string> argv, const fs::path& dir) {
  RunOptions options;
  options.working_dir = dir;
  options.timeout = std::chrono::seconds(60);
  const RunResult result = Run(std::move(argv), options);
  if (result.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << result;
}

std::string ReadPem(const fs::path& path) {
  std::optional<std::string> text = ReadFile(path);
  if (!text) ADD_FAILURE() << "cannot read " << path;
  return text.value_or("");
}

// A name no other cluster on this machine uses, for --initial-cluster-token (so members of
// different clusters can never join each other) and the TempDir.
std::string UniqueToken() {
  static std::atomic<int> counter{0};
  return "kw-" + std::to_string(getpid()) + "-" + std::to_string(counter.fetch_add(1)) + "-" +
         std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000);
}

}  // namespace

// ---- EtcdCluster ----

EtcdCluster::EtcdCluster(EtcdClusterOptions options)
    : options_(options), dir_("kw-etcd"), token_(UniqueToken()) {
  if (options_.members < 1) {
    ADD_FAILURE() << "an etcd cluster needs at least one member";
    options_.members = 1;
  }
  for (int i = 0; i < options_.members; ++i) {
    Member m;
    m.name = "m" + std::to_string(i);
    m.client_port = ReservedPort::Reserve();
    m.peer_port = ReservedPort::Reserve();
    m.data_dir = dir_ / (m.name + ".data");
    m.log_file = dir_ / (m.name + ".log");
    members_.push_back(std::move(m));
  }
}

EtcdCluster::~EtcdCluster() {
  for (Member& m : members_) m.process.Kill();
}

std::string EtcdCluster::endpoint(size_t i) const {
  return "127.0.0.1:" + std::to_string(members_.at(i).client_port.port());
}

std::vector<std::string> EtcdCluster::endpoints() const {
  std::vector<std::string> out;
  for (size_t i = 0; i < members_.size(); ++i) out.push_back(endpoint(i));
  return out;
}

std::string EtcdCluster::ClientUrl(size_t i) const {
  return (options_.tls ? "https://" : "http://") + endpoint(i);
}

std::string EtcdCluster::PeerUrl(size_t i) const {
  return "http://127.0.0.1:" + std::to_string(members_.at(i).peer_port.port());
}

::testing::AssertionResult EtcdCluster::Start(milliseconds timeout) {
  if (dir_.path().empty()) return ::testing::AssertionFailure() << "no temporary directory";
  for (const Member& m : members_) {
    if (m.client_port.port() == 0 || m.peer_port.port() == 0) {
      return ::testing::AssertionFailure() << "could not reserve loopback ports";
    }
  }
  if (options_.tls) {
    if (auto made = MakeTlsFiles(); !made) return made;
  }
  for (size_t i = 0; i < members_.size(); ++i) {
    if (auto spawned = Spawn(i); !spawned) return spawned;
  }
  return WaitHealthy(timeout);
}

::testing::AssertionResult EtcdCluster::MakeTlsFiles() {
  const fs::path tls = dir_ / "tls";
  std::error_code error;
  if (fs::create_directories(tls, error); error) {
    return ::testing::AssertionFailure() << "cannot create " << tls << ": " << error.message();
  }
  const std::vector<std::string> ec_key = {"-newkey", "ec", "-pkeyopt",
                                           "ec_paramgen_curve:prime256v1", "-nodes"};
  auto make_ca = [&](const std::string& name) {
    std::vector<std::string> argv = {"openssl", "req", "-x509"};
    argv.insert(argv.end(), ec_key.begin(), ec_key.end());
    argv.insert(argv.end(), {"-keyout", name + ".key", "-out", name + ".crt", "-days", "2", "-subj",
                             "/CN=keywarden test " + name + " " + token_, "-addext",
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
    req.insert(req.end(), {"-keyout", name + ".key", "-out", name + ".csr", "-subj",
                           "/CN=keywarden test " + name});
    if (auto r = RunOk(req, tls); !r) return r;
    return RunOk({"openssl", "x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt", "-CAkey",
                  ca + ".key", "-set_serial", std::to_string(serial++), "-days", "2", "-out",
                  name + ".crt", "-extfile", ext_file},
                 tls);
  };
  const std::string server_ext =
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
      "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
  const std::string client_ext =
      "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
      "extendedKeyUsage=clientAuth\n";
  ::testing::AssertionResult made = make_ca("ca");
  if (made) made = make_ca("other-ca");
  if (made) made = make_leaf("server", "ca", server_ext);
  if (made) made = make_leaf("client", "ca", client_ext);
  if (made) made = make_leaf("other-client", "other-ca", client_ext);
  if (!made) return made << "\n(generating TLS files with the openssl CLI)";
  tls_files_.ca_cert = tls / "ca.crt";
  tls_files_.client_cert = tls / "client.crt";
  tls_files_.client_key = tls / "client.key";
  tls_files_.other_ca_cert = tls / "other-ca.crt";
  tls_files_.other_client_cert = tls / "other-client.crt";
  tls_files_.other_client_key = tls / "other-client.key";
  server_cert_ = tls / "server.crt";
  server_key_ = tls / "server.key";
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult EtcdCluster::Spawn(size_t i) {
  Member& m = members_.at(i);
  if (m.process.pid() > 0) return ::testing::AssertionFailure() << m.name << " already runs";

  std::string initial_cluster;
  for (size_t j = 0; j < members_.size(); ++j) {
    if (!initial_cluster.empty()) initial_cluster += ',';
    initial_cluster += members_[j].name + "=" + PeerUrl(j);
  }
  std::vector<std::string> args = {"etcd",
                                   "--name=" + m.name,
                                   "--data-dir=" + m.data_dir.string(),
                                   "--listen-client-urls=" + ClientUrl(i),
                                   "--advertise-client-urls=" + ClientUrl(i),
                                   "--listen-peer-urls=" + PeerUrl(i),
                                   "--initial-advertise-peer-urls=" + PeerUrl(i),
                                   "--initial-cluster=" + initial_cluster,
                                   "--initial-cluster-token=" + token_,
                                   "--initial-cluster-state=new",
                                   "--logger=zap",
                                   "--log-outputs=stderr"};
  if (options_.tls) {
    args.push_back("--cert-file=" + server_cert_.string());
    args.push_back("--key-file=" + server_key_.string());
    args.push_back("--trusted-ca-file=" + tls_files_.ca_cert.string());
    args.push_back("--client-cert-auth");
  }
  // The banner separates the runs of a restarted member in its log.
  if (std::ofstream log(m.log_file, std::ios::app); log) {
    log << "=== keywarden test: starting " << m.name << " ===\n";
  }
  BackgroundOptions background;
  background.log = m.log_file;
  background.env_drop_prefixes = {"ETCD_", "ETCDCTL_"};  // no stray configuration
  return m.process.Start(std::move(args), background);
}

bool EtcdCluster::Reap(size_t i, std::string* note) {
  return !members_.at(i).process.Running(note);
}

::testing::AssertionResult EtcdCluster::KillMember(size_t i) {
  if (i >= members_.size()) return ::testing::AssertionFailure() << "no member " << i;
  Member& m = members_[i];
  if (m.process.pid() <= 0) return ::testing::AssertionFailure() << m.name << " does not run";
  m.process.Kill();
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult EtcdCluster::RestartMember(size_t i) {
  if (i >= members_.size()) return ::testing::AssertionFailure() << "no member " << i;
  return Spawn(i);
}

bool EtcdCluster::ServesLinearizableRead(size_t i) const {
  auto stub = etcdserverpb::KV::NewStub(MemberChannel(i));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
  etcdserverpb::RangeRequest request;
  request.set_key("keywarden-test-health");
  etcdserverpb::RangeResponse response;
  return stub->Range(&context, request, &response).ok();
}

::testing::AssertionResult EtcdCluster::WaitHealthy(milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    bool all = true;
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].process.pid() <= 0) continue;
      std::string note;
      if (Reap(i, &note)) {
        return ::testing::AssertionFailure()
               << "etcd member " << members_[i].name << " " << note << "\n"
               << LogTails();
      }
      if (!ServesLinearizableRead(i)) all = false;
    }
    if (all) return ::testing::AssertionSuccess();
    if (std::chrono::steady_clock::now() >= deadline) {
      return ::testing::AssertionFailure()
             << "etcd cluster not healthy after " << timeout.count() << " ms\n"
             << LogTails();
    }
    std::this_thread::sleep_for(milliseconds(100));
  }
}

int EtcdCluster::LeaderIndex() {
  std::vector<uint64_t> ids(members_.size(), 0);
  std::vector<uint64_t> leaders;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (members_[i].process.pid() <= 0) continue;
    auto stub = etcdserverpb::Maintenance::NewStub(MemberChannel(i));
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(1));
    etcdserverpb::StatusResponse response;
    if (!stub->Status(&context, etcdserverpb::StatusRequest(), &response).ok()) continue;
    ids[i] = response.header().member_id();
    if (response.leader() != 0) leaders.push_back(response.leader());
  }
  for (uint64_t leader : leaders) {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (members_[i].process.pid() > 0 && ids[i] != 0 && ids[i] == leader) {
        return static_cast<int>(i);
      }
    }
  }
  return -1;
}

std::shared_ptr<grpc::Channel> EtcdCluster::MemberChannel(size_t i) const {
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options_.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ReadPem(tls_files_.ca_cert);
    ssl.pem_cert_chain = ReadPem(tls_files_.client_cert);
    ssl.pem_private_key = ReadPem(tls_files_.client_key);
    credentials = grpc::SslCredentials(ssl);
  } else {
    credentials = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(endpoint(i), credentials, args);
}

RunResult EtcdCluster::Etcdctl(std::vector<std::string> args) const {
  std::string running;
  for (size_t i = 0; i < members_.size(); ++i) {
    if (members_[i].process.pid() <= 0) continue;
    if (!running.empty()) running += ',';
    running += endpoint(i);
  }
  std::vector<std::string> argv = {"etcdctl", "--endpoints=" + running, "--command-timeout=10s"};
  if (options_.tls) {
    argv.push_back("--cacert=" + tls_files_.ca_cert.string());
    argv.push_back("--cert=" + tls_files_.client_cert.string());
    argv.push_back("--key=" + tls_files_.client_key.string());
  }
  argv.insert(argv.end(), args.begin(), args.end());
  RunOptions options;
  options.env_overrides = {{"ETCDCTL_API", "3"}};
  options.timeout = std::chrono::seconds(60);
  return Run(std::move(argv), options);
}

std::string EtcdCluster::LogTail(size_t i, size_t lines) const {
  const std::optional<std::string> text = ReadFile(members_.at(i).log_file);
  if (!text) return "(no log)\n";
  std::deque<std::string_view> tail;
  std::string_view rest(*text);
  while (!rest.empty()) {
    const size_t nl = rest.find('\n');
    const std::string_view line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    tail.push_back(line);
    if (tail.size() > lines) tail.pop_front();
  }
  std::string out;
  for (std::string_view line : tail) {
    out.append(line);
    out.push_back('\n');
  }
  return out;
}

std::string EtcdCluster::LogTails(size_t lines) const {
  std::string out;
  for (size_t i = 0; i < members_.size(); ++i) {
    out += "--- " + members_[i].name + " log (" + members_[i].log_file.string() + ") ---\n";
    out += LogTail(i, lines);
  }
  return out;
}

}  // namespace keywarden::testing
