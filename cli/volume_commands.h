// The `keywarden volume` commands. main.cc parses flags and calls these; each returns the exit
// code (0 success, 1 error with a message on stderr).
#pragma once

#include <functional>
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
// FetcherFactory makes the key source in the process that will use it: with --fuse-dir the
// background server is forked first, so nothing the parent made (a gRPC channel) crosses the
// fork.
using FetcherFactory = std::function<absl::StatusOr<volume::KeyFetcher>()>;
// RunVolumeOpenWith is RunVolumeOpen with any key source (the node commands pass the key they
// were released).
int RunVolumeOpenWith(volume::OpenRequest request, const FetcherFactory& make_fetcher,
                      bool foreground);
int RunVolumeClose(const std::string& name, const std::string& run_dir);
int RunVolumeStatus(const std::string& target_or_name, const std::string& run_dir, bool json);

}  // namespace keywarden::cli
