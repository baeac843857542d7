// SoftHsm: a real PKCS#11 token (SoftHSM2) for integration tests, in a private directory.
//
// The constructor writes a softhsm2.conf whose token directory is under the test's TempDir,
// points SOFTHSM2_CONF at it (in this process's environment, so that in-process providers and
// the `keywarden` processes the test starts all see it), and initializes a token with
// `softhsm2-util --init-token --free --label LABEL --so-pin 12345678 --pin 1234`. AES keys are
// made through Keywarden's own PKCS#11 code (byok::CreatePkcs11AesKey: C_GenerateKey), so
// opensc's pkcs11-tool is not needed.
//
// SoftHSM reads SOFTHSM2_CONF at C_Initialize; Keywarden finalizes the module when its last
// provider is destroyed, so a test that makes a second SoftHsm must destroy its providers first.
// Not thread-safe (setenv).
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "tests/subprocess.h"

namespace keywarden::testing {

class SoftHsm {
 public:
  static constexpr char kSoPin[] = "12345678";
  static constexpr char kPin[] = "1234";

  explicit SoftHsm(std::string label = "kw");
  SoftHsm(const SoftHsm&) = delete;
  SoftHsm& operator=(const SoftHsm&) = delete;

  // ok is true when the token was initialized (otherwise the test has already failed).
  bool ok() const { return ok_; }
  // module is the SoftHSM2 module's path (/usr/lib/softhsm/libsofthsm2.so on Debian).
  static std::string module();
  const std::string& label() const { return label_; }
  const std::filesystem::path& config() const { return config_; }

  // KmsUri returns kms://pkcs11?module=...&token=LABEL&pin=PIN&key=KEY.
  std::string KmsUri(const std::string& key, const std::string& pin = kPin) const;
  // CreateAesKey generates a 256-bit token AES key labelled `key` (wrap/unwrap, non-extractable).
  absl::Status CreateAesKey(const std::string& key) const;
  // DeleteToken removes the token with softhsm2-util --delete-token (a token pulled at run time).
  RunResult DeleteToken() const;

 private:
  TempDir dir_;
  std::string label_;
  std::filesystem::path config_;
  bool ok_ = false;
};

}  // namespace keywarden::testing
