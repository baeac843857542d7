#include "tests/subprocess.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <system_error>
#include <tuple>

extern char** environ;

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;

std::string ErrnoMessage(std::string_view what, int err) {
  return std::string(what) + ": " + std::strerror(err);
}

// Fd owns a file descriptor and closes it when destroyed or reset.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// Pipe is a close-on-exec pipe; the child's ends are dup2'ed onto 0, 1 and 2, which clears
// close-on-exec for them only.
struct Pipe {
  Fd read_end;
  Fd write_end;
};

bool MakePipe(Pipe& pipe, std::string& error) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    error = ErrnoMessage("pipe2", errno);
    return false;
  }
  pipe.read_end = Fd(fds[0]);
  pipe.write_end = Fd(fds[1]);
  return true;
}

// SpawnConfig owns the posix_spawn attribute and file-action objects.
class SpawnConfig {
 public:
  SpawnConfig() {
    actions_ok_ = posix_spawn_file_actions_init(&actions_) == 0;
    attr_ok_ = posix_spawnattr_init(&attr_) == 0;
  }
  ~SpawnConfig() {
    if (actions_ok_) posix_spawn_file_actions_destroy(&actions_);
    if (attr_ok_) posix_spawnattr_destroy(&attr_);
  }
  SpawnConfig(const SpawnConfig&) = delete;
  SpawnConfig& operator=(const SpawnConfig&) = delete;

  bool ok() const { return actions_ok_ && attr_ok_; }
  posix_spawn_file_actions_t* actions() { return &actions_; }
  posix_spawnattr_t* attr() { return &attr_; }

 private:
  posix_spawn_file_actions_t actions_;
  posix_spawnattr_t attr_;
  bool actions_ok_ = false;
  bool attr_ok_ = false;
};

// BuildEnvironment returns a copy of this process's environment with `overrides` applied.
std::vector<std::string> BuildEnvironment(
    const std::vector<std::pair<std::string, std::string>>& overrides) {
  std::vector<std::string> env;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    const std::string_view name = text.substr(0, text.find('='));
    const bool overridden = std::any_of(overrides.begin(), overrides.end(),
                                        [&](const auto& kv) { return kv.first == name; });
    if (!overridden) env.emplace_back(text);
  }
  for (const auto& [name, value] : overrides) env.push_back(name + "=" + value);
  return env;
}

std::vector<char*> CStringArray(std::vector<std::string>& strings) {
  std::vector<char*> out;
  out.reserve(strings.size() + 1);
  for (std::string& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// SigpipeBlocker blocks SIGPIPE in the calling thread, so that writing to a pipe whose reader
// has exited fails with EPIPE instead of killing the test; on destruction it discards a
// SIGPIPE that the writes raised and restores the thread's signal mask.
class SigpipeBlocker {
 public:
  SigpipeBlocker() {
    sigset_t pending;
    sigemptyset(&pending);
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &block, &old_mask_);
  }
  ~SigpipeBlocker() {
    if (raised_ && !was_pending_) {
      sigset_t sigpipe;
      sigemptyset(&sigpipe);
      sigaddset(&sigpipe, SIGPIPE);
      const timespec zero{};
      while (sigtimedwait(&sigpipe, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  SigpipeBlocker(const SigpipeBlocker&) = delete;
  SigpipeBlocker& operator=(const SigpipeBlocker&) = delete;

  // NoteEpipe records that a write failed with EPIPE (and so raised SIGPIPE).
  void NoteEpipe() { raised_ = true; }

 private:
  sigset_t old_mask_;
  bool was_pending_ = false;
  bool raised_ = false;
};

// PumpIo writes `input` to `in` and reads `out` and `err` until both reach end of file or
// `deadline` passes. Returns false on timeout.
bool PumpIo(Fd& in, std::string_view input, Fd& out, Fd& err, RunResult& result,
            std::chrono::steady_clock::time_point deadline) {
  SigpipeBlocker sigpipe_blocker;
  size_t written = 0;
  if (input.empty()) in.Reset();
  if (in.valid()) fcntl(in.get(), F_SETFL, fcntl(in.get(), F_GETFL) | O_NONBLOCK);

  std::array<char, 64 * 1024> buffer;
  while (in.valid() || out.valid() || err.valid()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) return false;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    const int timeout_ms = static_cast<int>(std::min<decltype(left)>(left, INT_MAX));

    std::array<pollfd, 3> fds{};
    fds[0] = {in.get(), POLLOUT, 0};
    fds[1] = {out.get(), POLLIN, 0};
    fds[2] = {err.get(), POLLIN, 0};
    const int ready = poll(fds.data(), fds.size(), timeout_ms);  // Negative fds are ignored.
    if (ready < 0) {
      if (errno == EINTR) continue;
      result.error = ErrnoMessage("poll", errno);
      return true;
    }
    if (fds[0].revents != 0) {
      const ssize_t n = write(in.get(), input.data() + written, input.size() - written);
      if (n >= 0) {
        written += static_cast<size_t>(n);
        if (written == input.size()) in.Reset();
      } else if (errno == EPIPE) {
        // The program exited or closed its input without reading it all; not an error.
        sigpipe_blocker.NoteEpipe();
        in.Reset();
      } else if (errno != EAGAIN && errno != EINTR) {
        result.error = ErrnoMessage("write to stdin", errno);
        in.Reset();
      }
    }
    for (auto [index, fd, text] :
         {std::tuple{1, &out, &result.stdout_text}, std::tuple{2, &err, &result.stderr_text}}) {
      if (fds[index].revents == 0) continue;
      const ssize_t n = read(fd->get(), buffer.data(), buffer.size());
      if (n > 0) {
        text->append(buffer.data(), static_cast<size_t>(n));
      } else if (n == 0) {
        fd->Reset();
      } else if (errno != EAGAIN && errno != EINTR) {
        result.error = ErrnoMessage("read output", errno);
        fd->Reset();
      }
    }
  }
  return true;
}

// Escaped returns `text` with control characters other than newline and tab written as \xNN,
// so that printing a program's output cannot drive the terminal.
std::string Escaped(std::string_view text) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    const auto byte = static_cast<unsigned char>(c);
    if ((byte < 0x20 && c != '\n' && c != '\t') || byte == 0x7f) {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    } else {
      out += c;
    }
  }
  return out;
}

}  // namespace

std::ostream& operator<<(std::ostream& os, const RunResult& result) {
  os << "{argv=[";
  for (size_t i = 0; i < result.argv.size(); ++i) {
    os << (i == 0 ? "" : " ") << Escaped(result.argv[i]);
  }
  os << "], exit_code=" << result.exit_code;
  if (result.term_signal != 0) os << ", signal=" << result.term_signal;
  if (result.timed_out) os << ", timed out";
  if (!result.error.empty()) os << ", error=\"" << Escaped(result.error) << "\"";
  return os << ",\n stdout=\"" << Escaped(result.stdout_text) << "\",\n stderr=\""
            << Escaped(result.stderr_text) << "\"}";
}

void PrintTo(const RunResult& result, std::ostream* os) { *os << result; }

RunResult Run(std::vector<std::string> argv, const std::string& stdin_data) {
  RunOptions options;
  options.stdin_data = stdin_data;
  return Run(std::move(argv), options);
}

RunResult Run(std::vector<std::string> argv, const RunOptions& options) {
  RunResult result;
  result.argv = argv;
  if (argv.empty()) {
    result.error = "Run: empty argv";
    return result;
  }
  Pipe in, out, err;
  if (!MakePipe(in, result.error) || !MakePipe(out, result.error) || !MakePipe(err, result.error)) {
    return result;
  }

  SpawnConfig config;
  if (!config.ok()) {
    result.error = "posix_spawn: cannot initialise attributes";
    return result;
  }
  // The child starts with no blocked signals and SIGPIPE at its default action, whatever the
  // test process has set, and with only fds 0, 1 and 2.
  sigset_t empty_mask, default_signals;
  sigemptyset(&empty_mask);
  sigemptyset(&default_signals);
  sigaddset(&default_signals, SIGPIPE);
  int rc = posix_spawnattr_setflags(config.attr(), POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  if (rc == 0) rc = posix_spawnattr_setsigmask(config.attr(), &empty_mask);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(config.attr(), &default_signals);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(config.actions(), in.read_end.get(), 0);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(config.actions(), out.write_end.get(), 1);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(config.actions(), err.write_end.get(), 2);
  if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(config.actions(), 3);
  if (rc == 0 && options.working_dir.has_value()) {
    rc = posix_spawn_file_actions_addchdir_np(config.actions(), options.working_dir->c_str());
  }
  if (rc != 0) {
    result.error = ErrnoMessage("posix_spawn setup", rc);
    return result;
  }

  std::vector<std::string> env = BuildEnvironment(options.env_overrides);
  std::vector<char*> argv_ptrs = CStringArray(argv);
  std::vector<char*> env_ptrs = CStringArray(env);
  pid_t pid = -1;
  rc = posix_spawnp(&pid, argv_ptrs[0], config.actions(), config.attr(), argv_ptrs.data(),
                    env_ptrs.data());
  if (rc != 0) {
    result.error = ErrnoMessage("posix_spawn " + argv[0], rc);
    return result;
  }
  // Close the child's ends here so that end of file shows when the child exits.
  in.read_end.Reset();
  out.write_end.Reset();
  err.write_end.Reset();

  const auto deadline = std::chrono::steady_clock::now() + options.timeout;
  if (!PumpIo(in.write_end, options.stdin_data, out.read_end, err.read_end, result, deadline)) {
    result.timed_out = true;
    kill(pid, SIGKILL);
  }

  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      result.error = ErrnoMessage("waitpid", errno);
      return result;
    }
  }
  if (WIFEXITED(status)) {
    result.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.term_signal = WTERMSIG(status);
  }
  return result;
}

TempDir::TempDir(std::string_view prefix) {
  const char* tmpdir = std::getenv("TMPDIR");
  std::error_code ec;
  fs::path base = (tmpdir != nullptr && *tmpdir != '\0') ? fs::path(tmpdir) : fs::path("/tmp");
  base = fs::absolute(base, ec);
  std::string templ = (base / (std::string(prefix) + "-XXXXXX")).string();
  if (ec || mkdtemp(templ.data()) == nullptr) {
    ADD_FAILURE() << "cannot create a temporary directory " << templ << ": "
                  << (ec ? ec.message() : std::strerror(errno));
    return;
  }
  path_ = templ;
}

TempDir::~TempDir() { Remove(); }

TempDir::TempDir(TempDir&& other) noexcept : path_(std::exchange(other.path_, {})) {}

TempDir& TempDir::operator=(TempDir&& other) noexcept {
  if (this != &other) {
    Remove();
    path_ = std::exchange(other.path_, {});
  }
  return *this;
}

void TempDir::Remove() noexcept {
  if (path_.empty()) return;
  std::error_code ec;
  fs::remove_all(path_, ec);
  if (ec) {
    // A test may have left a directory without write or search permission: restore them and
    // try once more.
    for (auto it = fs::recursive_directory_iterator(path_, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec)) {
        fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
      }
    }
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    ec.clear();
    fs::remove_all(path_, ec);
  }
  if (ec) ADD_FAILURE() << "cannot remove temporary directory " << path_ << ": " << ec.message();
  path_.clear();
}

fs::path TempDir::WriteFile(const fs::path& relative, std::string_view contents,
                            mode_t mode) const {
  const fs::path path = path_ / relative;
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) {
    ADD_FAILURE() << "cannot create " << path.parent_path() << ": " << ec.message();
    return path;
  }
  Fd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
  if (!fd.valid()) {
    ADD_FAILURE() << ErrnoMessage("cannot create " + path.string(), errno);
    return path;
  }
  size_t done = 0;
  while (done < contents.size()) {
    const ssize_t n = write(fd.get(), contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ADD_FAILURE() << ErrnoMessage("cannot write " + path.string(), errno);
      return path;
    }
    done += static_cast<size_t>(n);
  }
  // The umask may have removed bits from `mode`.
  if (fchmod(fd.get(), mode) != 0) {
    ADD_FAILURE() << ErrnoMessage("cannot chmod " + path.string(), errno);
  }
  return path;
}

std::optional<std::string> ReadFile(const fs::path& path) {
  Fd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  std::string contents;
  std::array<char, 64 * 1024> buffer;
  while (true) {
    const ssize_t n = read(fd.get(), buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::nullopt;
    if (n == 0) break;
    contents.append(buffer.data(), static_cast<size_t>(n));
  }
  return contents;
}

}  // namespace keywarden::testing
