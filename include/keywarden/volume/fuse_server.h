// A FUSE file system that shows one volume's plaintext as one file, for hosts without
// device-mapper. The file can back a loop device (losetup), so a file system goes on top.
#pragma once

#include <functional>
#include <string>

#include "absl/status/status.h"
#include "keywarden/volume/data_path.h"

namespace keywarden::volume {

struct FuseServeOptions {
  std::string mount_dir;          // an empty directory; becomes the mount point
  std::string file_name;          // the one file: mount_dir/file_name
  unsigned max_threads = 8;       // FUSE worker threads (concurrent I/O)
  std::function<void()> mounted;  // called once the mount is live, before serving
};

// ServeFuse mounts `options.mount_dir` and serves `path` as mount_dir/file_name until the mount
// is unmounted (`keywarden volume close`, umount) or SIGTERM/SIGINT/SIGHUP arrive. Reads and
// writes go straight to the data path (FUSE direct I/O, no page cache in between); fsync
// reaches the target as fdatasync. Returns when unmounted.
absl::Status ServeFuse(DataPath& path, const FuseServeOptions& options);

// UnmountFuse unmounts a Keywarden FUSE mount at `dir`. FAILED_PRECONDITION when it is busy
// (a loop device or an open file still uses it); `lazy` detaches it anyway (for a dead server).
absl::Status UnmountFuse(const std::string& dir, bool lazy);

// IsMountPoint reports whether `dir` is mounted on (any file system).
bool IsMountPoint(const std::string& dir);

}  // namespace keywarden::volume
