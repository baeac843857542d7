// Azurite: Microsoft's Azure Storage emulator (npm azurite 3.35.0, installed by
// scripts/install-deps under /opt/keywarden-test-peers), blob service only, with SharedKey and
// SAS authorization enforced. One instance per test, a Background on a ReservedPort held for the
// object's lifetime; killed (SIGKILL, by PID) in Stop and the destructor. Tests skip when
// Program() is empty (not installed).
#pragma once

#include <gtest/gtest.h>

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
  // Start launches it and waits until it accepts connections; the failure says why.
  ::testing::AssertionResult Start();
  // Stop kills it (SIGKILL) and reaps it.
  void Stop();
  // endpoint is the account's URL: http://127.0.0.1:PORT/devstoreaccount1
  std::string endpoint() const;
  int port() const { return port_.port(); }
  std::string log() const;

 private:
  TempDir dir_;
  ReservedPort port_;
  Background server_;
};

}  // namespace keywarden::testing
