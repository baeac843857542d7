// A cluster's state directory, as `keywarden init` creates it (docs/formats/cluster-state.md):
//
//   DIR/mastersecret.json   the master secret, mode 0600 (master_secret.h)
//   DIR/cluster.json        {"measurementSalt": hex, "clusterID": hex}, public
#pragma once

#include <filesystem>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/keys/hierarchy.h"

namespace keywarden::keys {

inline constexpr char kMasterSecretFileName[] = "mastersecret.json";
inline constexpr char kClusterFileName[] = "cluster.json";

// ClusterInfo is the public identity of a cluster.
struct ClusterInfo {
  std::vector<uint8_t> measurement_salt;  // kMeasurementSaltSize bytes
  ClusterId cluster_id;
};

// InitCluster creates `dir` (mode 0700) if needed, makes a master secret and a measurement
// salt, and writes mastersecret.json and cluster.json. ALREADY_EXISTS if either file exists.
// All or nothing: on any error neither file is left behind, and a directory it created is
// removed again.
absl::StatusOr<ClusterInfo> InitCluster(const std::filesystem::path& dir);

// ParseClusterJson parses the contents of a cluster.json; INVALID_ARGUMENT when malformed.
absl::StatusOr<ClusterInfo> ParseClusterJson(std::string_view text);

// ReadClusterInfo reads and validates DIR/cluster.json.
absl::StatusOr<ClusterInfo> ReadClusterInfo(const std::filesystem::path& dir);

// ComputeClusterInfo derives the clusterID of `secret` with `measurement_salt`.
absl::StatusOr<ClusterInfo> ComputeClusterInfo(const MasterSecret& secret,
                                               std::span<const uint8_t> measurement_salt);

}  // namespace keywarden::keys
