// AzureKvStandIn: tests/azure_kv_standin.py, a STAND-IN for Microsoft Entra ID's token endpoint
// and Azure Key Vault's wrapkey / unwrapkey, for integration tests and benchmarks of the Azure Key
// Vault KEK provider (kms://azure). No Azure Key Vault emulator exists; the stand-in fakes only
// what the provider depends on, as Microsoft documents it (client-credentials tokens that
// expire; bearer token and api-version checked; real RSA-OAEP-256 and AES key wrap with
// python3-cryptography). Passing against it says nothing about the live service beyond its
// documentation (docs/byok-azure-kv.md, "What is tested"); timings against it are the Python
// server's, not Azure's.
//
// Start() runs the script with /usr/bin/python3 (Debian's, with python3-cryptography; else
// python3 from PATH) as a Background on a ReservedPort held for the object's lifetime, passing
// the client secret kClientSecret in the environment (never on the command line), and waits until
// the port accepts connections. The server is killed (SIGKILL, by PID) in Stop() and the
// destructor, and gets PR_SET_PDEATHSIG. The same port serves the vault and the login host, so
// Uri() sets both endpoint= and authEndpoint= to endpoint(). Not thread-safe, except Control /
// Stat / Fail; start it from the test's main thread.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "tests/subprocess.h"

namespace keywarden::testing {

class AzureKvStandIn {
 public:
  // The service principal and vault the stand-in plays.
  static constexpr char kTenant[] = "kw-tenant";
  static constexpr char kClientId[] = "6b3c2a9e-0d1f-4e5a-9b8c-7d6e5f4a3b2c";
  // A secret with characters that need form encoding (and %-encoding in the URI).
  static constexpr char kClientSecret[] = "Kw8Q~st4nd.in+secret/=&%value";
  static constexpr char kVaultName[] = "kwtest";

  struct Options {
    // token_lifetime is the expires_in of every token, in seconds.
    int token_lifetime = 3599;
    // managed_hsm plays a Managed HSM (scope https://managedhsm.azure.net/.default, AES keys
    // for A256KW) instead of a vault (scope https://vault.azure.net/.default, RSA keys).
    bool managed_hsm = false;
    // keys are NAME:rsa or NAME:oct; empty means kek:rsa and other:rsa for a vault,
    // aeskek:oct and aesother:oct for a Managed HSM.
    std::vector<std::string> keys = {};
  };

  AzureKvStandIn();
  ~AzureKvStandIn();
  AzureKvStandIn(const AzureKvStandIn&) = delete;
  AzureKvStandIn& operator=(const AzureKvStandIn&) = delete;

  // Start launches the stand-in; the failure says why (with its log). Once only.
  ::testing::AssertionResult Start(Options options);
  ::testing::AssertionResult Start() { return Start(Options()); }
  // Stop kills it; later requests to endpoint() are refused.
  void Stop();

  // vault_type is vault.azure.net or managedhsm.azure.net; vault_host is kVaultName.vault_type.
  std::string vault_type() const;
  std::string vault_host() const;
  // endpoint is "http://127.0.0.1:PORT".
  std::string endpoint() const;
  int port() const { return port_.port(); }

  // Uri returns a kms://azure URI for `key` at the stand-in (vault and login host), with
  // algorithm=A256KW for a Managed HSM; the other arguments override the credentials.
  std::string Uri(std::string_view key, std::string_view secret = kClientSecret,
                  std::string_view tenant = kTenant, std::string_view client = kClientId) const;

  // Control sends a /_test/ request (METHOD PATH with a JSON body) and returns the JSON answer;
  // null, with the test failed (ADD_FAILURE), when it does not answer 200.
  nlohmann::json Control(std::string_view method, std::string_view path,
                         const nlohmann::json& body = nlohmann::json::object()) const;
  // Stat returns counter `name` of /_test/stats, or -1.
  int Stat(std::string_view name) const;
  // Fail makes the next `count` requests to `target` ("vault" or "token") answer `status`.
  void Fail(std::string_view target, int count, int status) const;

  // Log returns what the stand-in wrote so far (request lines, never bodies).
  std::string Log() const;

 private:
  Options options_;
  TempDir dir_;
  ReservedPort port_;
  Background server_;
};

}  // namespace keywarden::testing
