// The keywarden commands. main.cc parses flags and calls these; each returns the exit code
// (0 success, 1 error with a message on stderr). Usage errors (2) are main.cc's.
#pragma once

#include <cstddef>
#include <string>

#include "keywarden/service/server.h"

namespace keywarden::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Fail prints "keywarden: error: MESSAGE" on stderr and returns kExitError.
int Fail(const absl::Status& status);

int RunInit(const std::string& dir);
int RunStatus(const std::string& dir);
int RunDeriveDek(const std::string& master_secret_file, const std::string& id, size_t length);
int RunDeriveDiskKey(const std::string& master_secret_file, const std::string& uuid);
int RunDeriveClusterId(const std::string& master_secret_file, const std::string& salt_hex);
int RunDerivePcr15(const std::string& cluster_id_hex);
int RunServe(const service::ServeOptions& options);
int RunDekGet(const service::ClientOptions& options, const std::string& id, size_t length);

}  // namespace keywarden::cli
