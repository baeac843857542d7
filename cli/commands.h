// The keywarden commands. main.cc parses flags and calls these; each returns the exit code
// (0 success, 1 error with a message on stderr). Usage errors (2) are main.cc's.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "keywarden/service/server.h"

namespace keywarden::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitError = 1;
inline constexpr int kExitUsage = 2;

// Fail prints "keywarden: error: MESSAGE" on stderr and returns kExitError.
int Fail(const absl::Status& status);

// ParseDuration reads a flag's duration: a positive whole number (at most 9 digits, no leading
// zero) and one unit, s, m, h or d ("90s", "10m", "1h", "1d"); nothing else (no fractions, no
// sums such as "1h30m", no spaces, no bare numbers). The error names `flag`.
absl::StatusOr<std::chrono::milliseconds> ParseDuration(std::string_view flag,
                                                        std::string_view text);

int RunInit(const std::string& dir);
int RunStatus(const std::string& dir);
int RunDeriveDek(const std::string& master_secret_file, const std::string& id, size_t length);
int RunDeriveDiskKey(const std::string& master_secret_file, const std::string& uuid);
int RunDeriveClusterId(const std::string& master_secret_file, const std::string& salt_hex);
int RunDerivePcr15(const std::string& cluster_id_hex);
int RunServe(const service::ServeOptions& options);
int RunDekGet(const service::ClientOptions& options, const std::string& id, size_t length);

}  // namespace keywarden::cli
