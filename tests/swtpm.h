// SwtpmInstance: a real TPM 2.0 (swtpm, libtpms) for integration tests, manufactured like a
// hardware TPM: an RSA-2048 and an ECC EK with EK certificates and a platform certificate issued
// by a local CA (swtpm_localca), NV locked, SHA-256 PCR bank active.
//
// Each instance has a private state directory, runs `swtpm socket` as a Background (so it gets
// PR_SET_PDEATHSIG and a crashing test takes it along) on two free loopback TCP ports (server P,
// control P+1, as tpm2-tss's swtpm TCTI expects; a ReservedPort cannot hold such a pair) with
// --flags startup-clear (so the TPM is started and PCRs are fresh), and is stopped in the
// destructor: `swtpm_ioctl -s` (a clean shutdown), then SIGKILL by PID if it has not exited.
// Instances can share one SwtpmCa, so a test can also make a TPM whose EK comes from another,
// unknown CA.
//
// Typical use:
//
//   auto ca = std::make_shared<keywarden::testing::SwtpmCa>();
//   keywarden::testing::SwtpmInstance tpm(ca);
//   ASSERT_TRUE(tpm.Start());
//   auto opened = keywarden::attest::Tpm::Open(tpm.tcti());     // "swtpm:port=P"
//   ... VerifyEkCertificate(cert, ReadFile(tpm.ca_bundle()).value()) ...
//
// swtpm serves one client connection at a time: close every Tpm before running a tpm2-tools
// command (Tpm2Tool) against the same instance. Not thread-safe.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

// SwtpmCa is a local certificate authority for swtpm_setup: swtpm_localca creates a root CA
// ("swtpm-localca-rootca") and an intermediate ("swtpm-localca", issuercert.pem) in its
// directory the first time a TPM is manufactured with it, and signs every EK and platform
// certificate with the intermediate.
class SwtpmCa {
 public:
  SwtpmCa();
  SwtpmCa(const SwtpmCa&) = delete;
  SwtpmCa& operator=(const SwtpmCa&) = delete;

  // setup_config is the swtpm_setup configuration file that points at this CA.
  const std::filesystem::path& setup_config() const { return setup_config_; }
  // ca_bundle returns a PEM file holding the intermediate (issuercert.pem) and then the root
  // certificate, written on first call. Fails the test and returns an empty path when no TPM
  // has been manufactured with this CA yet (the CA does not exist before).
  std::filesystem::path ca_bundle();
  // root_cert and issuer_cert are the CA's own PEM files.
  std::filesystem::path root_cert() const { return dir_ / "swtpm-localca-rootca-cert.pem"; }
  std::filesystem::path issuer_cert() const { return dir_ / "issuercert.pem"; }

 private:
  TempDir dir_;
  std::filesystem::path setup_config_;
  std::filesystem::path bundle_;
};

class SwtpmInstance {
 public:
  // SwtpmInstance prepares an instance that is manufactured with `ca`, or with a CA of its own
  // when `ca` is null. Nothing runs before Start.
  explicit SwtpmInstance(std::shared_ptr<SwtpmCa> ca = nullptr);
  // ~SwtpmInstance stops the TPM if it runs.
  ~SwtpmInstance();
  SwtpmInstance(const SwtpmInstance&) = delete;
  SwtpmInstance& operator=(const SwtpmInstance&) = delete;

  // Start manufactures the TPM on first use (swtpm_setup) and starts `swtpm socket` on free
  // ports, waiting until it accepts connections. A restarted TPM keeps its state (EK, NV,
  // persistent objects) but has fresh PCRs and no transient objects (TPM2_Startup(CLEAR)).
  ::testing::AssertionResult Start();
  // Stop shuts the TPM down cleanly (swtpm_ioctl -s) and waits for the process to end,
  // killing it (SIGKILL, by PID) if it has not ended within a few seconds.
  ::testing::AssertionResult Stop();
  // Restart is Stop then Start: a reboot.
  ::testing::AssertionResult Restart();

  // running is true from Start until Stop (also when swtpm ended by itself meanwhile).
  bool running() const { return process_.pid() > 0; }
  pid_t pid() const { return process_.pid(); }
  int port() const { return port_; }
  // tcti returns the tpm2-tss TCTI string, "swtpm:port=P" (Tss2_TctiLdr_Initialize, and
  // TPM2TOOLS_TCTI for tpm2-tools).
  std::string tcti() const;
  const std::shared_ptr<SwtpmCa>& ca() const { return ca_; }
  // ca_bundle is ca()->ca_bundle(): the PEM trust bundle for this TPM's EK certificate.
  std::filesystem::path ca_bundle() const { return ca_->ca_bundle(); }

  // Tpm2Tool runs a tpm2-tools program (e.g. {"tpm2_pcrread", "sha256:15"}) against this TPM.
  RunResult Tpm2Tool(std::vector<std::string> argv) const;
  // LogTail returns the end of swtpm's log and of the manufacturing output, for failures.
  std::string LogTail() const;

 private:
  ::testing::AssertionResult Manufacture();
  ::testing::AssertionResult Spawn();

  std::shared_ptr<SwtpmCa> ca_;
  TempDir dir_;
  bool manufactured_ = false;
  std::string setup_output_;
  int port_ = 0;
  Background process_;
};

}  // namespace keywarden::testing
