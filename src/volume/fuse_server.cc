#include "keywarden/volume/fuse_server.h"

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <memory>
#include <vector>

#include "keywarden/status.h"

namespace keywarden::volume {
namespace {

constexpr fuse_ino_t kRootIno = FUSE_ROOT_ID;
constexpr fuse_ino_t kFileIno = 2;
constexpr unsigned kMaxIo = 1024 * 1024;  // largest FUSE read/write request we ask for

struct Fs {
  DataPath* path;
  std::string file_name;
  uid_t uid;
  gid_t gid;
  timespec started;
};

Fs& FsOf(fuse_req_t req) { return *static_cast<Fs*>(fuse_req_userdata(req)); }

struct stat Attr(const Fs& fs, fuse_ino_t ino) {
  struct stat st {};
  st.st_ino = ino;
  st.st_uid = fs.uid;
  st.st_gid = fs.gid;
  st.st_atim = st.st_mtim = st.st_ctim = fs.started;
  if (ino == kRootIno) {
    st.st_mode = S_IFDIR | 0700;
    st.st_nlink = 2;
  } else {
    st.st_mode = S_IFREG | 0600;
    st.st_nlink = 1;
    st.st_size = static_cast<off_t>(fs.path->size());
    st.st_blksize = static_cast<blksize_t>(fs.path->sector_size());
    st.st_blocks = static_cast<blkcnt_t>(fs.path->size() / 512);
  }
  return st;
}

void Report(const char* op, const absl::Status& status) {
  std::fprintf(stderr, "keywarden: %s failed: %s\n", op, StatusMessage(status).c_str());
}

void OpInit(void* /*userdata*/, fuse_conn_info* conn) {
  conn->max_write = kMaxIo;
  conn->max_read = kMaxIo;
  conn->max_readahead = kMaxIo;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  // The file's contents change only through this server: no invalidation needed.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Fs& fs = FsOf(req);
  if (parent != kRootIno || fs.file_name != name) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param entry{};
  entry.ino = kFileIno;
  entry.attr = Attr(fs, kFileIno);
  entry.attr_timeout = 3600;
  entry.entry_timeout = 3600;
  fuse_reply_entry(req, &entry);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
  if (ino != kRootIno && ino != kFileIno) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  const struct stat st = Attr(FsOf(req), ino);
  fuse_reply_attr(req, &st, 3600);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set,
               fuse_file_info* /*fi*/) {
  Fs& fs = FsOf(req);
  // The plaintext file is exactly as large as the volume: no resizing, no owner changes.
  if ((to_set & FUSE_SET_ATTR_SIZE) &&
      (ino != kFileIno || static_cast<uint64_t>(attr->st_size) != fs.path->size())) {
    fuse_reply_err(req, EPERM);
    return;
  }
  if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID | FUSE_SET_ATTR_MODE)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  const struct stat st = Attr(fs, ino);
  fuse_reply_attr(req, &st, 3600);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != kFileIno) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  // Like a block device, the file has a fixed size: O_TRUNC (passed here, not as a setattr,
  // thanks to FUSE_CAP_ATOMIC_O_TRUNC) is ignored, so `dd of=FILE` works without notrunc.
  // Direct I/O: every read and write reaches the data path; the kernel caches no plaintext
  // of its own here, and fsync has exactly the target's semantics.
  fi->direct_io = 1;
  fi->keep_cache = 0;
  fi->noflush = 1;
  fuse_reply_open(req, fi);
}

void OpRead(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t off, fuse_file_info* /*fi*/) {
  thread_local std::vector<uint8_t> buffer;
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (buffer.size() < size) buffer.resize(size);
  auto n = FsOf(req).path->Read(static_cast<uint64_t>(off), std::span(buffer.data(), size));
  if (!n.ok()) {
    Report("read", n.status());
    fuse_reply_err(req, EIO);
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(buffer.data()), *n);
}

void OpWrite(fuse_req_t req, fuse_ino_t /*ino*/, const char* buf, size_t size, off_t off,
             fuse_file_info* /*fi*/) {
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  auto n = FsOf(req).path->Write(static_cast<uint64_t>(off),
                                 std::span(reinterpret_cast<const uint8_t*>(buf), size));
  if (!n.ok()) {
    if (n.status().code() == absl::StatusCode::kOutOfRange) {
      fuse_reply_err(req, ENOSPC);
      return;
    }
    Report("write", n.status());
    fuse_reply_err(req, EIO);
    return;
  }
  fuse_reply_write(req, *n);
}

void OpFsync(fuse_req_t req, fuse_ino_t /*ino*/, int /*datasync*/, fuse_file_info* /*fi*/) {
  const absl::Status status = FsOf(req).path->Sync();
  if (!status.ok()) Report("fsync", status);
  fuse_reply_err(req, status.ok() ? 0 : EIO);
}

void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  if (ino != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  fuse_reply_open(req, fi);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* /*fi*/) {
  if (ino != kRootIno) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  Fs& fs = FsOf(req);
  std::vector<char> out(size);
  size_t used = 0;
  const std::pair<const char*, fuse_ino_t> entries[] = {
      {".", kRootIno}, {"..", kRootIno}, {fs.file_name.c_str(), kFileIno}};
  for (off_t i = off; i < 3; ++i) {
    struct stat st {};
    st.st_ino = entries[i].second;
    st.st_mode = entries[i].second == kRootIno ? S_IFDIR : S_IFREG;
    const size_t need =
        fuse_add_direntry(req, out.data() + used, size - used, entries[i].first, &st, i + 1);
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, out.data(), used);
}

void OpReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void OpStatfs(fuse_req_t req, fuse_ino_t /*ino*/) {
  Fs& fs = FsOf(req);
  struct statvfs st {};
  st.f_bsize = st.f_frsize = static_cast<unsigned long>(fs.path->sector_size());
  st.f_blocks = fs.path->size() / fs.path->sector_size();
  st.f_files = 2;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

struct SessionDeleter {
  void operator()(fuse_session* se) const { fuse_session_destroy(se); }
};

}  // namespace

absl::Status ServeFuse(DataPath& path, const FuseServeOptions& options) {
  if (options.file_name.empty() || options.file_name.find('/') != std::string::npos ||
      options.file_name == "." || options.file_name == "..") {
    return InvalidArgumentError("the volume name \"{}\" cannot be a file name",
                                Printable(options.file_name));
  }
  struct stat st {};
  if (stat(options.mount_dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return FailedPreconditionError("--fuse-dir {} is not a directory", options.mount_dir);
  }
  if (IsMountPoint(options.mount_dir)) {
    return FailedPreconditionError("--fuse-dir {} is already a mount point", options.mount_dir);
  }
  Fs fs{&path, options.file_name, getuid(), getgid(), {}};
  clock_gettime(CLOCK_REALTIME, &fs.started);

  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.fsync = OpFsync;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.releasedir = OpReleasedir;
  ops.statfs = OpStatfs;

  const std::string mount_options =
      fmt::format("fsname=keywarden:{},subtype=keywarden,default_permissions,max_read={}",
                  options.file_name, kMaxIo);
  std::vector<std::string> argv_text = {"keywarden", "-o", mount_options};
  std::vector<char*> argv;
  for (auto& arg : argv_text) argv.push_back(arg.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  std::unique_ptr<fuse_session, SessionDeleter> se(fuse_session_new(&args, &ops, sizeof(ops), &fs));
  if (!se) return FailedPreconditionError("cannot start a FUSE session (is /dev/fuse there?)");
  if (fuse_set_signal_handlers(se.get()) != 0) {
    return InternalError("cannot install FUSE signal handlers");
  }
  if (fuse_session_mount(se.get(), options.mount_dir.c_str()) != 0) {
    fuse_remove_signal_handlers(se.get());
    return FailedPreconditionError("cannot mount FUSE on {} (is /dev/fuse usable?)",
                                   options.mount_dir);
  }
  if (options.mounted) options.mounted();

  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_clone_fd(config, 1);
  fuse_loop_cfg_set_max_threads(config, options.max_threads);
  fuse_loop_cfg_set_idle_threads(config, options.max_threads);
  const int rc = fuse_session_loop_mt(se.get(), config);
  fuse_loop_cfg_destroy(config);
  fuse_session_unmount(se.get());
  fuse_remove_signal_handlers(se.get());
  const absl::Status synced = path.Sync();
  if (rc < 0) return InternalError("the FUSE loop failed: {}", std::strerror(-rc));
  return synced;
}

absl::Status UnmountFuse(const std::string& dir, bool lazy) {
  if (umount2(dir.c_str(), lazy ? MNT_DETACH : 0) == 0) return absl::OkStatus();
  const int err = errno;
  if (err == EBUSY) {
    return FailedPreconditionError(
        "{} is busy: detach the loop device (losetup -d) and close files on it first", dir);
  }
  if (err == EINVAL) return NotFoundError("{} is not mounted", dir);
  if (err == EPERM) {
    // Not root: let the setuid helper unmount our own FUSE mount.
    const pid_t pid = fork();
    if (pid == 0) {
      execlp("fusermount3", "fusermount3", lazy ? "-uz" : "-u", dir.c_str(), nullptr);
      _exit(127);
    }
    int status = 0;
    if (pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
        WEXITSTATUS(status) == 0) {
      return absl::OkStatus();
    }
  }
  return FailedPreconditionError("cannot unmount {}: {}", dir, std::strerror(err));
}

bool IsMountPoint(const std::string& dir) {
  char resolved[PATH_MAX];
  if (realpath(dir.c_str(), resolved) == nullptr) return false;
  std::ifstream mounts("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mounts, line)) {
    // Field 5 is the mount point (octal-escaped).
    size_t pos = 0;
    for (int field = 0; field < 4 && pos != std::string::npos; ++field) {
      pos = line.find(' ', pos);
      if (pos != std::string::npos) ++pos;
    }
    if (pos == std::string::npos) continue;
    const size_t end = line.find(' ', pos);
    std::string point = line.substr(pos, end - pos);
    std::string unescaped;
    for (size_t i = 0; i < point.size(); ++i) {
      if (point[i] == '\\' && i + 3 < point.size()) {
        unescaped.push_back(static_cast<char>(((point[i + 1] - '0') << 6) |
                                              ((point[i + 2] - '0') << 3) | (point[i + 3] - '0')));
        i += 3;
      } else {
        unescaped.push_back(point[i]);
      }
    }
    if (unescaped == resolved) return true;
  }
  return false;
}

}  // namespace keywarden::volume
