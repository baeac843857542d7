// The `keywarden volume` commands. main.cc parses flags and calls these; each returns the exit
// code (0 success, 1 error with a message on stderr).
#pragma once

#include <string>

#include "keywarden/service/server.h"
#include "keywarden/volume/volume.h"

namespace keywarden::cli {

// KeySource says where a volume's DEK comes from: the key service (client.endpoint) or a local
// derivation from the master secret (recovery). Exactly one is set.
struct KeySource {
  service::ClientOptions client;
  std::string master_secret;
};

int RunVolumeFormat(volume::FormatRequest request, const KeySource& keys);
int RunVolumeOpen(volume::OpenRequest request, const KeySource& keys, bool foreground);
int RunVolumeClose(const std::string& name, const std::string& run_dir);
int RunVolumeStatus(const std::string& target_or_name, const std::string& run_dir, bool json);

}  // namespace keywarden::cli
