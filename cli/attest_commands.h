// The attestation commands (`keywarden measurements ...`). main.cc parses flags and calls these;
// each returns the exit code (0 success, 1 error with a message on stderr).
#pragma once

#include <string>

namespace keywarden::cli {

// RunMeasurementsRead prints a TPM's SHA-256 PCRs 0-23 in Constellation's measurements format
// ("json" or "yaml"), every entry warnOnly=false.
int RunMeasurementsRead(const std::string& tcti, const std::string& format);

}  // namespace keywarden::cli
