// PyKmipServer: a real PyKMIP server (python3-pykmip, `pykmip-server`) for integration tests of
// the KMIP KEK provider (RECIPES.md "PyKMIP server").
//
// Each server has a private TempDir with its own test CA, server certificate (EC P-256,
// subjectAltName IP:127.0.0.1), client certificate (extendedKeyUsage=clientAuth), an unrelated
// "other" CA with a client certificate of its own (for negative tests), an empty policy
// directory and its own SQLite database. It listens on a ReservedPort held for the object's
// lifetime (PyKMIP also binds with SO_REUSEADDR, so it can share it), so Stop and Start again
// reuse it. The server is a Background in a process group of its own (PyKMIP forks a
// multiprocessing manager and a policy monitor), gets PR_SET_PDEATHSIG=SIGKILL, and is stopped by
// PID: SIGINT, then SIGKILL to its process group.
//
// Typical use:
//
//   keywarden::testing::PyKmipServer server;
//   ASSERT_TRUE(server.Start());
//   std::string uid;
//   ASSERT_TRUE(server.CreateAesKey(256, &uid));
//   auto kek = byok::NewKmipProvider(server.Config(uid));
//
// Not thread-safe: use it from the test's main thread.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>

#include "keywarden/byok/kmip.h"
#include "tests/subprocess.h"

namespace keywarden::testing {

// PyKmipFiles are the PEM files the server generates.
struct PyKmipFiles {
  std::filesystem::path ca_cert;      // signed the server and client certificates
  std::filesystem::path client_cert;  // extendedKeyUsage=clientAuth
  std::filesystem::path client_key;
  std::filesystem::path other_ca_cert;      // an unrelated CA
  std::filesystem::path other_client_cert;  // a client certificate signed by other_ca_cert
  std::filesystem::path other_client_key;
};

class PyKmipServer {
 public:
  PyKmipServer();
  // ~PyKmipServer stops the server if it runs.
  ~PyKmipServer();
  PyKmipServer(const PyKmipServer&) = delete;
  PyKmipServer& operator=(const PyKmipServer&) = delete;

  // Start makes the certificates on first use and starts the server, waiting until it accepts
  // connections. On failure the message carries the tail of the server's log.
  ::testing::AssertionResult Start(std::chrono::milliseconds timeout = std::chrono::seconds(60));
  // Stop stops the server (SIGINT, then SIGKILL after a few seconds) and reaps it.
  ::testing::AssertionResult Stop();
  // Kill sends SIGKILL to the server's process group at once and reaps the server (its database
  // stays).
  ::testing::AssertionResult Kill();

  int port() const { return port_.port(); }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(port()); }
  const PyKmipFiles& files() const { return files_; }
  pid_t pid() const { return server_.pid(); }

  // Config returns a KmipConfig for key `uid` with the server's client certificate and CA.
  byok::KmipConfig Config(const std::string& uid) const;

  // CreateAesKey creates an active AES key of `bits` bits with usage mask Encrypt|Decrypt through
  // PyKMIP's own client (ProxyKmipClient with the client certificate) and sets `uid` to its
  // Unique Identifier.
  ::testing::AssertionResult CreateAesKey(int bits, std::string* uid);

  // LogTail returns the last `lines` lines of the server's log.
  std::string LogTail(size_t lines = 30) const;

 private:
  ::testing::AssertionResult MakeFiles();

  TempDir dir_;
  ReservedPort port_;
  Background server_;
  bool files_made_ = false;
  PyKmipFiles files_;
};

}  // namespace keywarden::testing
