// EtcdCluster: a real etcd cluster (1 or 3 members, plain or TLS) for integration tests.
//
// Each member runs the installed `etcd` binary on loopback ports that stay reserved for the
// cluster's lifetime (a socket bound to port 0 with SO_REUSEADDR and never listened on: the
// kernel hands the port to no other bind(0) or outgoing connection, while etcd, which also
// sets SO_REUSEADDR, can still bind it; so a killed member restarts on the same ports and
// parallel tests under `ctest -j` never collide). Every member has its own data directory and
// log file in a private TempDir. Members are stopped with SIGKILL, by PID, in the destructor;
// they also get PR_SET_PDEATHSIG=SIGKILL, so a test binary that crashes takes its etcd
// processes with it.
//
// Typical use:
//
//   keywarden::testing::EtcdCluster cluster({.members = 3});
//   ASSERT_TRUE(cluster.Start());
//   ... cluster.endpoints() ...
//   ASSERT_TRUE(cluster.KillMember(cluster.LeaderIndex()));
//
// Not thread-safe: call it from the test's main thread. (PR_SET_PDEATHSIG fires when the
// thread that started a member ends, so members must be started by a thread that outlives
// them.)
#pragma once

#include <grpcpp/channel.h>
#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

// EtcdClusterOptions choose the cluster's shape.
struct EtcdClusterOptions {
  // members is the number of members: 1 or 3.
  int members = 1;
  // tls makes the client port speak TLS with client-certificate authentication
  // (--client-cert-auth); certificates are generated with the openssl CLI (see EtcdTlsFiles).
  // Peer traffic stays plain (loopback only).
  bool tls = false;
};

// EtcdTlsFiles are the PEM files a TLS cluster generates (EC P-256 keys).
struct EtcdTlsFiles {
  std::filesystem::path ca_cert;      // the CA that signed the server and client certificates
  std::filesystem::path client_cert;  // extendedKeyUsage=clientAuth, signed by ca_cert
  std::filesystem::path client_key;
  std::filesystem::path other_ca_cert;      // an unrelated CA
  std::filesystem::path other_client_cert;  // a client certificate signed by other_ca_cert
  std::filesystem::path other_client_key;
};

class EtcdCluster {
 public:
  explicit EtcdCluster(EtcdClusterOptions options = {});
  // ~EtcdCluster kills every member that still runs (SIGKILL) and reaps it.
  ~EtcdCluster();
  EtcdCluster(const EtcdCluster&) = delete;
  EtcdCluster& operator=(const EtcdCluster&) = delete;

  // Start generates the TLS files (TLS mode), starts every member and waits until each one
  // serves linearizable reads. On failure the message carries the tail of every member's log.
  ::testing::AssertionResult Start(std::chrono::milliseconds timeout = std::chrono::seconds(60));

  size_t size() const { return members_.size(); }
  bool tls() const { return options_.tls; }
  const EtcdTlsFiles& tls_files() const { return tls_files_; }
  // endpoints returns every member's client address, "127.0.0.1:PORT", running or not.
  std::vector<std::string> endpoints() const;
  std::string endpoint(size_t i) const;
  // pid returns member i's process ID, or 0 when it does not run.
  pid_t pid(size_t i) const { return members_.at(i).process.pid(); }

  // KillMember sends SIGKILL to member i and reaps it.
  ::testing::AssertionResult KillMember(size_t i);
  // RestartMember starts member i again with its data directory and ports; it does not wait
  // (a member alone without quorum never becomes healthy): call WaitHealthy.
  ::testing::AssertionResult RestartMember(size_t i);
  // WaitHealthy waits until every running member serves linearizable reads.
  ::testing::AssertionResult WaitHealthy(
      std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // LeaderIndex asks the running members (Maintenance.Status) who leads and returns that
  // member's index, or -1 when no running member knows a running leader.
  int LeaderIndex();

  // MemberChannel returns a new gRPC channel to member i with the cluster's root credentials
  // (the CA and client certificate in TLS mode), for checks that bypass the code under test.
  std::shared_ptr<grpc::Channel> MemberChannel(size_t i) const;
  // Etcdctl runs `etcdctl --endpoints=<running members> [TLS flags] args...` (API v3).
  RunResult Etcdctl(std::vector<std::string> args) const;

  // LogTail returns the last `lines` lines of member i's log.
  std::string LogTail(size_t i, size_t lines = 25) const;
  // LogTails returns LogTail of every member, headed by the member's name.
  std::string LogTails(size_t lines = 25) const;

 private:
  struct Member {
    std::string name;
    ReservedPort client_port;
    ReservedPort peer_port;
    std::filesystem::path data_dir;
    std::filesystem::path log_file;
    Background process;
  };

  ::testing::AssertionResult MakeTlsFiles();
  ::testing::AssertionResult Spawn(size_t i);
  // Reap returns true (and clears the PID) when member i has exited; the note says how.
  bool Reap(size_t i, std::string* note);
  bool ServesLinearizableRead(size_t i) const;
  std::string ClientUrl(size_t i) const;
  std::string PeerUrl(size_t i) const;

  EtcdClusterOptions options_;
  TempDir dir_;
  std::string token_;
  std::vector<Member> members_;
  EtcdTlsFiles tls_files_;
  std::filesystem::path server_cert_;
  std::filesystem::path server_key_;
};

}  // namespace keywarden::testing
