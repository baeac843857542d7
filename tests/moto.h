// Moto: a moto_server (AWS KMS, S3 and IAM emulator) for integration tests, with SigV4 checking
// on (/work/shared/RECIPES.md "moto").
//
// Start() runs `moto_server -H 127.0.0.1 -p PORT` (a Background, with
// INITIAL_NO_AUTH_ACTION_COUNT=3 and no AWS_* variables) on a ReservedPort held for the object's
// lifetime (werkzeug also sets SO_REUSEADDR, so moto can bind it and, once it is stopped, a
// connection to the port is refused). It waits until the port accepts connections,
// then spends the three unauthenticated requests on IAM: CreateUser, CreateAccessKey and an
// allow-all PutUserPolicy. From then on moto checks every request's SigV4 signature against that
// user's secret. KMS keys and buckets are made with signed requests (keywarden_aws's own SigV4
// and HTTP client). The server is killed (SIGKILL, by PID) in Stop() and the destructor, and gets
// PR_SET_PDEATHSIG so a crashing test takes it along. The program is $MOTO_SERVER if set, else
// moto_server from PATH. Not thread-safe; start it from the test's main thread.
#pragma once

#include <gtest/gtest.h>

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/subprocess.h"

namespace keywarden::testing {

class Moto {
 public:
  Moto();
  ~Moto();
  Moto(const Moto&) = delete;
  Moto& operator=(const Moto&) = delete;

  // Start launches moto and creates the IAM user; the failure says why (with moto's log).
  ::testing::AssertionResult Start();
  // Stop kills moto; later requests to endpoint() are refused.
  void Stop();

  // endpoint is "http://127.0.0.1:PORT".
  std::string endpoint() const;
  int port() const { return port_.port(); }
  static constexpr const char* kRegion = "us-east-1";
  // The IAM user's access key (valid after Start()).
  const std::string& access_key_id() const { return access_key_id_; }
  const std::string& secret_access_key() const { return secret_access_key_; }

  // CreateKmsKey makes a symmetric KMS key and returns its KeyId.
  absl::StatusOr<std::string> CreateKmsKey();
  // CreateBucket makes an S3 bucket.
  absl::Status CreateBucket(std::string_view bucket);

  // Log returns what moto wrote so far.
  std::string Log() const;

 private:
  struct Reply {
    long status = 0;
    std::string body;
  };
  absl::StatusOr<Reply> Signed(std::string_view service, std::string_view method,
                               std::string_view path,
                               std::vector<std::pair<std::string, std::string>> headers,
                               const std::string& body, std::string_view access_key_id,
                               std::string_view secret);

  TempDir dir_;
  ReservedPort port_;
  Background server_;
  std::string access_key_id_;
  std::string secret_access_key_;
};

}  // namespace keywarden::testing
