// GcpKmsStandIn: tests/gcp_kms_standin.py, a STAND-IN for Google's OAuth token endpoint and the
// Cloud KMS REST API (cryptoKeys.encrypt / decrypt), for integration tests and benchmarks of the
// GCP Cloud KMS KEK provider (kms://gcp). No Cloud KMS emulator exists; the stand-in verifies the
// service-account JWT (RS256 with the account's public key, iss, aud, scope, iat/exp), issues
// expiring tokens and encrypts with real AES-256-GCM under the request's additional authenticated
// data, checking and sending the CRC32C fields. It is not Google: passing against it says nothing
// about the live service beyond its documentation (docs/byok-gcp.md); timings against it are the
// Python server's, not Cloud KMS's.
//
// Start() writes the service account's public key and its key file (sa.json, as Google issues
// it, token_uri pointing at the stand-in) into a private TempDir, runs the script with
// /usr/bin/python3 (Debian's, with python3-cryptography; else python3 from PATH) as a Background
// on a ReservedPort held for the object's lifetime, and waits until the port accepts
// connections. Killed (SIGKILL, by PID) in Stop() and the destructor; PR_SET_PDEATHSIG. Not
// thread-safe, except Control / Stats / Count; start it from the test's main thread.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

class GcpKmsStandIn {
 public:
  static constexpr char kClientEmail[] = "keywarden-test@kw-test.iam.gserviceaccount.com";
  static constexpr char kProject[] = "kw-test";
  static constexpr char kLocation[] = "global";
  static constexpr char kKeyRing[] = "kw-ring";
  // kKeyRingName is the key ring's resource name; a key's is kKeyRingName/cryptoKeys/NAME.
  static constexpr char kKeyRingName[] = "projects/kw-test/locations/global/keyRings/kw-ring";

  // RsaPem is an RSA key in PKCS#8 PEM (as in Google's key files) and its public key
  // (SubjectPublicKeyInfo PEM).
  struct RsaPem {
    std::string private_pem;
    std::string public_pem;
  };
  // GenerateRsa2048 makes a fresh RSA-2048 key (OpenSSL); empty strings, with the test failed,
  // when that fails. Slow (tens of milliseconds): tests share one per suite.
  static RsaPem GenerateRsa2048();

  struct Options {
    // keys are the crypto keys' short names in kKeyRingName.
    std::vector<std::string> keys = {"kek", "other"};
  };

  GcpKmsStandIn();
  ~GcpKmsStandIn();
  GcpKmsStandIn(const GcpKmsStandIn&) = delete;
  GcpKmsStandIn& operator=(const GcpKmsStandIn&) = delete;

  // Start launches the stand-in, which accepts JWTs signed with `account_key` for kClientEmail;
  // the failure says why (with its log). Once only.
  ::testing::AssertionResult Start(const RsaPem& account_key, Options options);
  ::testing::AssertionResult Start(const RsaPem& account_key) {
    return Start(account_key, Options());
  }
  // Stop kills it; later requests to endpoint() are refused.
  void Stop();

  // endpoint is "http://127.0.0.1:PORT"; TokenUri is its OAuth token endpoint.
  std::string endpoint() const;
  std::string TokenUri() const { return endpoint() + "/token"; }
  int port() const { return port_.port(); }
  // credentials_path is the account's key file written by Start().
  const std::filesystem::path& credentials_path() const { return credentials_; }

  // KeyFile returns a service-account key file as Google issues it, for `private_pem` and
  // `client_email`, whose token_uri is TokenUri().
  std::string KeyFile(const std::string& private_pem,
                      std::string_view client_email = kClientEmail) const;
  // Uri returns a kms://gcp URI for `key` at the stand-in; `credentials` is the URI's
  // credentials parameter ("credentialsPath=..." or "credentials=..."), by default
  // credentialsPath= credentials_path().
  std::string Uri(std::string_view key = "kek", std::string credentials = "") const;

  // Control posts `settings` to /control (token_lifetime, token_delay, revoke_tokens, corrupt,
  // unverified, fail_next) and returns the answer; null, with the test failed, on error.
  nlohmann::json Control(const nlohmann::json& settings) const;
  // Stats returns /stats (counters and issued_tokens); null, with the test failed, on error.
  nlohmann::json Stats() const;
  // Count returns counter `what` of Stats(), or -1.
  int Count(const char* what) const;

  // Log returns what the stand-in wrote so far (request lines, never bodies).
  std::string Log() const;

 private:
  TempDir dir_;
  ReservedPort port_;
  std::filesystem::path credentials_;
  Background server_;
};

}  // namespace keywarden::testing
