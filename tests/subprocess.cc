#include "tests/subprocess.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
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
#include <thread>
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
  // Release gives up ownership and returns the descriptor.
  int Release() { return std::exchange(fd_, -1); }

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

// ---- Background ----

namespace {

// FindProgram returns `name` if it has a '/', else its first executable match in PATH ("" when
// none).
std::string FindProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string_view rest(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  while (!rest.empty()) {
    const size_t colon = rest.find(':');
    const std::string dir(rest.substr(0, colon));
    rest = colon == std::string_view::npos ? "" : rest.substr(colon + 1);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "ended";
}

}  // namespace

Background::~Background() {
  Kill();
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

Background::Background(Background&& other) noexcept
    : pid_(std::exchange(other.pid_, 0)),
      group_(other.group_),
      stdout_fd_(std::exchange(other.stdout_fd_, -1)),
      stdout_(std::move(other.stdout_)),
      log_(std::move(other.log_)),
      exit_status_(other.exit_status_) {}

Background& Background::operator=(Background&& other) noexcept {
  if (this != &other) {
    Kill();
    if (stdout_fd_ >= 0) close(stdout_fd_);
    pid_ = std::exchange(other.pid_, 0);
    group_ = other.group_;
    stdout_fd_ = std::exchange(other.stdout_fd_, -1);
    stdout_ = std::move(other.stdout_);
    log_ = std::move(other.log_);
    exit_status_ = other.exit_status_;
  }
  return *this;
}

::testing::AssertionResult Background::Start(std::vector<std::string> argv,
                                             const BackgroundOptions& options) {
  if (pid_ > 0) return ::testing::AssertionFailure() << "already running (pid " << pid_ << ")";
  if (argv.empty()) return ::testing::AssertionFailure() << "Background::Start: empty argv";
  const std::string program = FindProgram(argv[0]);
  if (program.empty()) return ::testing::AssertionFailure() << argv[0] << ": not found in PATH";
  argv[0] = program;
  log_ = options.log;
  group_ = options.own_process_group;
  stdout_.clear();
  exit_status_ = -1;

  // Everything the child needs is built before fork(): between fork and exec only
  // async-signal-safe calls are allowed (the test process may have gRPC threads).
  std::vector<std::pair<std::string, std::string>> overrides = options.env_overrides;
  std::vector<std::string> env;
  for (std::string& entry : BuildEnvironment(overrides)) {
    const bool dropped = std::any_of(
        options.env_drop_prefixes.begin(), options.env_drop_prefixes.end(),
        [&](const std::string& prefix) {
          return entry.starts_with(prefix) &&
                 std::none_of(overrides.begin(), overrides.end(),
                              [&](const auto& kv) { return entry.starts_with(kv.first + "="); });
        });
    if (!dropped) env.push_back(std::move(entry));
  }
  std::vector<char*> c_argv = CStringArray(argv);
  std::vector<char*> c_env = CStringArray(env);
  const std::string dir = options.working_dir.has_value() ? options.working_dir->string() : "";

  Fd null_fd(open("/dev/null", O_RDWR | O_CLOEXEC));
  Fd log_fd(options.log.empty()
                ? open("/dev/null", O_WRONLY | O_CLOEXEC)
                : open(options.log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  if (!null_fd.valid() || !log_fd.valid()) {
    return ::testing::AssertionFailure() << ErrnoMessage("opening " + options.log.string(), errno);
  }
  int out_pipe[2] = {-1, -1};
  if (options.capture_stdout && pipe2(out_pipe, O_CLOEXEC) != 0) {
    return ::testing::AssertionFailure() << ErrnoMessage("pipe", errno);
  }
  Fd out_read(out_pipe[0]), out_write(out_pipe[1]);
  const int stdout_target = options.capture_stdout ? out_write.get() : log_fd.get();

  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    if (options.own_process_group && setpgid(0, 0) != 0) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    if (dup2(null_fd.get(), 0) < 0 || dup2(stdout_target, 1) < 0 || dup2(log_fd.get(), 2) < 0) {
      _exit(127);
    }
    if (!dir.empty() && chdir(dir.c_str()) != 0) _exit(127);
    execve(c_argv[0], c_argv.data(), c_env.data());
    _exit(127);
  }
  if (pid < 0) return ::testing::AssertionFailure() << ErrnoMessage("fork", errno);
  // The parent sets the group too, so that Signal reaches the group even before the child has
  // run setpgid (one of the two calls fails harmlessly).
  if (options.own_process_group) setpgid(pid, pid);
  pid_ = pid;
  if (stdout_fd_ >= 0) close(stdout_fd_);
  stdout_fd_ = out_read.Release();  // -1 without capture_stdout
  return ::testing::AssertionSuccess();
}

bool Background::Running(std::string* how) {
  if (pid_ <= 0) {
    if (how != nullptr) *how = exit_status_ >= 0 ? DescribeStatus(exit_status_) : "not started";
    return false;
  }
  if (group_) {
    // The leader ended: kill what it left behind in its group before reaping it (until it is
    // reaped its PID, and so the group's ID, cannot be reused).
    siginfo_t info{};
    const int rc = waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT);
    if (rc == 0 && info.si_pid == 0) return true;
    if (rc == 0) kill(-pid_, SIGKILL);
  }
  int status = 0;
  const pid_t r = waitpid(pid_, &status, WNOHANG);
  if (r == 0) return true;
  if (r == pid_) exit_status_ = status;
  if (how != nullptr) *how = r == pid_ ? DescribeStatus(status) : ErrnoMessage("waitpid", errno);
  pid_ = 0;
  return false;
}

void Background::Signal(int sig) {
  if (pid_ <= 0) return;
  if (group_) {
    kill(-pid_, sig);
  } else {
    kill(pid_, sig);
  }
}

void Background::Kill() {
  if (pid_ <= 0) return;
  Signal(SIGKILL);
  int status = 0;
  if (waitpid(pid_, &status, 0) == pid_) exit_status_ = status;
  pid_ = 0;
}

int Background::Wait(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (Running()) {
    if (std::chrono::steady_clock::now() > deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exit_status_ >= 0 && WIFEXITED(exit_status_) ? WEXITSTATUS(exit_status_) : -1;
}

std::optional<std::string> Background::WaitLine(std::string_view prefix,
                                                std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    size_t start = 0;
    for (size_t eol; (eol = stdout_.find('\n', start)) != std::string::npos; start = eol + 1) {
      const std::string_view line(stdout_.data() + start, eol - start);
      if (line.starts_with(prefix)) return std::string(line.substr(prefix.size()));
    }
    if (stdout_fd_ < 0 || std::chrono::steady_clock::now() > deadline) return std::nullopt;
    pollfd p{stdout_fd_, POLLIN, 0};
    if (poll(&p, 1, 50) > 0) {
      char chunk[4096];
      const ssize_t n = read(stdout_fd_, chunk, sizeof(chunk));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        close(stdout_fd_);
        stdout_fd_ = -1;
        continue;
      }
      stdout_.append(chunk, static_cast<size_t>(n));
    }
  }
}

std::string Background::Log() const { return log_.empty() ? "" : ReadFile(log_).value_or(""); }

bool PortAccepts(int port) {
  Fd fd(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  return connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
}

::testing::AssertionResult WaitForPort(Background& process, int port, std::string_view name,
                                       std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!PortAccepts(port)) {
    std::string how;
    if (!process.Running(&how)) {
      return ::testing::AssertionFailure() << name << " " << how << "; log:\n" << process.Log();
    }
    if (std::chrono::steady_clock::now() > deadline) {
      process.Kill();
      return ::testing::AssertionFailure()
             << name << " did not listen on port " << port << " within "
             << std::chrono::duration_cast<std::chrono::seconds>(timeout).count() << " s; log:\n"
             << process.Log();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return ::testing::AssertionSuccess();
}

// ---- ReservedPort ----

ReservedPort ReservedPort::Reserve() {
  ReservedPort reserved;
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ADD_FAILURE() << ErrnoMessage("socket", errno);
    return reserved;
  }
  reserved.fd_ = fd;
  const int one = 1;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
      bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ADD_FAILURE() << ErrnoMessage("reserving a loopback port", errno);
    return reserved;
  }
  reserved.port_ = ntohs(addr.sin_port);
  return reserved;
}

ReservedPort::~ReservedPort() {
  if (fd_ >= 0) close(fd_);
}

ReservedPort::ReservedPort(ReservedPort&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), port_(std::exchange(other.port_, 0)) {}

ReservedPort& ReservedPort::operator=(ReservedPort&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) close(fd_);
    fd_ = std::exchange(other.fd_, -1);
    port_ = std::exchange(other.port_, 0);
  }
  return *this;
}

}  // namespace keywarden::testing
