// Azurite: Microsoft's Azure Storage emulator (npm azurite 3.35.0, installed by
// scripts/install-deps under /opt/keywarden-test-peers), blob service only, with SharedKey and
// SAS authorization enforced. One instance per test on a free loopback port; killed in the
// destructor. Skips (Available() false) when the program is not installed.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

#include "tests/subprocess.h"

namespace keywarden::testing {

class Azurite {
 public:
  // The emulator's well-known development account and its published key.
  static constexpr char kAccount[] = "devstoreaccount1";
  static constexpr char kKey[] =
      "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

  Azurite();
  ~Azurite();
  Azurite(const Azurite&) = delete;
  Azurite& operator=(const Azurite&) = delete;

  // Program returns azurite-blob's path ($KEYWARDEN_AZURITE_BLOB, else the install-deps
  // location), or "" when absent.
  static std::string Program();
  // Start launches it and waits until it accepts connections.
  bool Start();
  // Stop kills it (SIGKILL) and reaps it.
  void Stop();
  // endpoint is the account's URL: http://127.0.0.1:PORT/devstoreaccount1
  std::string endpoint() const;
  int port() const { return port_; }
  std::string log() const;

 private:
  TempDir dir_;
  int port_ = 0;
  pid_t pid_ = 0;
};

}  // namespace keywarden::testing
