// Test helpers for integration tests that run real programs: Run() starts a program as a
// subprocess (no shell) and captures its output; TempDir is a scratch directory that is removed
// again when the test ends.
//
// Typical use:
//
//   keywarden::testing::TempDir dir;
//   const RunResult r = keywarden::testing::Run({KEYWARDEN_BINARY, "init", "--dir", (dir.path() /
//   "s").string()}); EXPECT_EQ(r.exit_code, 0) << r;
//
// Notes: inside namespace keywarden::testing, GoogleTest's namespace must be spelled
// ::testing. Inside a TEST body, `Run` names ::testing::Test::Run, so call
// keywarden::testing::Run.
#pragma once

#include <gtest/gtest.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace keywarden::testing {

// RunResult is what Run() observed of one subprocess.
struct RunResult {
  // argv is the command line that was run, for diagnostics.
  std::vector<std::string> argv;
  // exit_code is the status the program passed to exit(), or -1 when it did not exit normally
  // (killed by a signal, timed out, or never started).
  int exit_code = -1;
  // term_signal is the number of the signal that ended the program, or 0.
  int term_signal = 0;
  // timed_out is true when Run() killed the program because RunOptions::timeout passed.
  bool timed_out = false;
  // error is empty when the program ran; otherwise it says why it could not be started or
  // observed (e.g. "posix_spawn ...: No such file or directory").
  std::string error;
  // stdout_text and stderr_text hold every byte the program wrote to fd 1 and fd 2.
  std::string stdout_text;
  std::string stderr_text;

  // ok returns true when the program ran and exited with status 0.
  bool ok() const { return error.empty() && !timed_out && term_signal == 0 && exit_code == 0; }
};

// operator<< prints a RunResult for assertion messages: command line, exit status, signal,
// error and both output streams, with control characters other than newline and tab escaped.
std::ostream& operator<<(std::ostream& os, const RunResult& result);
// PrintTo lets GoogleTest print a RunResult the same way.
void PrintTo(const RunResult& result, std::ostream* os);

// RunOptions are the less common knobs of Run().
struct RunOptions {
  // stdin_data is written to the program's standard input, which is then closed. The program
  // may exit without reading it all; that is not an error.
  std::string stdin_data;
  // working_dir is the program's current directory; unset means the caller's.
  std::optional<std::filesystem::path> working_dir;
  // env_overrides are NAME=VALUE pairs set in the program's environment, which is otherwise a
  // copy of the caller's.
  std::vector<std::pair<std::string, std::string>> env_overrides;
  // timeout is a safety net against a hung program, not a performance assertion: when it
  // passes, the program is killed with SIGKILL and RunResult::timed_out is set. It is
  // deliberately generous.
  std::chrono::milliseconds timeout = std::chrono::minutes(2);
};

// Run starts argv[0] with arguments argv (argv[0] is looked up in PATH if it has no '/'),
// without a shell, feeds it `stdin_data`, and waits for it to end. It captures standard output
// and standard error separately through pipes; no other descriptor of the caller is inherited.
// Failures to start the program are reported in RunResult::error, never thrown. Thread-safe: its
// pipes are close-on-exec, and a program that exits without reading its input does not raise
// SIGPIPE in the caller (SIGPIPE is blocked in the calling thread while input is written).
RunResult Run(std::vector<std::string> argv, const std::string& stdin_data = "");
// Run with all options.
RunResult Run(std::vector<std::string> argv, const RunOptions& options);

// TempDir creates a fresh, private (mode 0700) directory under $TMPDIR (or /tmp if unset) with
// mkdtemp, and removes it with everything in it when destroyed. If it cannot be created the
// current test fails (ADD_FAILURE) and path() is empty. Move-only.
class TempDir {
 public:
  // TempDir makes the directory; `prefix` starts its name.
  explicit TempDir(std::string_view prefix = "keywarden-test");
  ~TempDir();
  TempDir(TempDir&& other) noexcept;
  TempDir& operator=(TempDir&& other) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // path returns the directory's absolute path.
  const std::filesystem::path& path() const { return path_; }
  // operator/ returns path() / relative.
  std::filesystem::path operator/(const std::filesystem::path& relative) const {
    return path_ / relative;
  }

  // WriteFile creates or truncates path() / relative (creating missing parent directories)
  // with `contents` and sets its mode to `mode`; fails the current test on error. Returns the
  // file's path.
  std::filesystem::path WriteFile(const std::filesystem::path& relative, std::string_view contents,
                                  mode_t mode = 0600) const;

 private:
  void Remove() noexcept;
  std::filesystem::path path_;
};

// WaitFor polls `done` every `poll` until it holds (true) or `timeout` passes (false).
template <typename F>
bool WaitFor(F done, std::chrono::milliseconds timeout = std::chrono::seconds(20),
             std::chrono::milliseconds poll = std::chrono::milliseconds(20)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(poll);
  }
  return true;
}

// ReadFile returns the contents of `path`, or nullopt if it cannot be read.
std::optional<std::string> ReadFile(const std::filesystem::path& path);

// ---- Long-running peers (servers the tests start and stop) ----

// BackgroundOptions choose how Background::Start runs a program.
struct BackgroundOptions {
  // log receives the program's standard error, and its standard output unless
  // capture_stdout is set; appended to, created with mode 0600. Empty: /dev/null.
  std::filesystem::path log;
  // capture_stdout sends standard output to a pipe that WaitLine reads.
  bool capture_stdout = false;
  // own_process_group puts the program in a new process group that Kill signals as a whole
  // (for programs that fork helpers, such as PyKMIP).
  bool own_process_group = false;
  // env_overrides are NAME=VALUE pairs set in the environment; variables whose names start
  // with one of env_drop_prefixes are removed from the copy of the caller's environment.
  std::vector<std::pair<std::string, std::string>> env_overrides;
  std::vector<std::string> env_drop_prefixes;
  std::optional<std::filesystem::path> working_dir;
};

// Background is one program running beside the test (a server, an agent): started with fork and
// exec (argv[0] looked up in PATH if it has no '/'), standard input /dev/null, with
// PR_SET_PDEATHSIG=SIGKILL so that a crashing test takes it along. Kill() and the destructor
// end it with SIGKILL, by PID (or process group), and reap it. Move-only; not thread-safe.
// PR_SET_PDEATHSIG fires when the starting thread ends: start peers from the test's main thread.
class Background {
 public:
  Background() = default;
  ~Background();
  Background(Background&& other) noexcept;
  Background& operator=(Background&& other) noexcept;
  Background(const Background&) = delete;
  Background& operator=(const Background&) = delete;

  // Start runs `argv`; the failure says why (a program that is not found, fork, the log).
  ::testing::AssertionResult Start(std::vector<std::string> argv,
                                   const BackgroundOptions& options = {});
  // Running reaps the program if it ended and says whether it still runs; when it ended,
  // `how` (if given) receives "exited with status N" or "killed by signal N". With
  // own_process_group, what is left of the group (helpers the program forked) is killed before
  // the leader is reaped.
  bool Running(std::string* how = nullptr);
  // Signal sends `sig` (to the group with own_process_group); no effect once reaped.
  void Signal(int sig);
  // Kill sends SIGKILL and reaps the program; a no-op when it is not running.
  void Kill();
  // Wait waits up to `timeout` for the program to end by itself and returns its exit status,
  // or -1 on timeout (the program keeps running) or when a signal ended it.
  int Wait(std::chrono::milliseconds timeout);
  // WaitLine (capture_stdout only) returns what follows `prefix` on the first standard-output
  // line that starts with it, or nullopt when the program closes its output or `timeout`
  // passes first.
  std::optional<std::string> WaitLine(std::string_view prefix, std::chrono::milliseconds timeout);
  // Stdout returns the captured standard output read so far.
  const std::string& Stdout() const { return stdout_; }
  // Log returns the log file's contents ("" when there is none).
  std::string Log() const;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = 0;
  bool group_ = false;
  int stdout_fd_ = -1;
  std::string stdout_;
  std::filesystem::path log_;
  int exit_status_ = -1;
};

// PortAccepts says whether a TCP connection to 127.0.0.1:`port` succeeds.
bool PortAccepts(int port);

// WaitForPort waits until 127.0.0.1:`port` accepts connections, failing early (with the
// program's log) when `process` ends, and after `timeout` (killing it).
::testing::AssertionResult WaitForPort(Background& process, int port, std::string_view name,
                                       std::chrono::milliseconds timeout);

// ReservedPort holds a loopback TCP port: bound with SO_REUSEADDR, never listening. The kernel
// hands the port to no other bind(0) or outgoing connection while it is held, and a peer that
// also sets SO_REUSEADDR (etcd, werkzeug, node) can still bind it, so a killed peer restarts on
// the same port and parallel tests never collide. A connection to it is refused, so it also
// serves as "an address where nothing listens".
class ReservedPort {
 public:
  // Reserve binds 127.0.0.1:0; port() is 0 (and the test has failed) when that fails.
  static ReservedPort Reserve();
  ReservedPort() = default;
  ~ReservedPort();
  ReservedPort(ReservedPort&& other) noexcept;
  ReservedPort& operator=(ReservedPort&& other) noexcept;
  ReservedPort(const ReservedPort&) = delete;
  ReservedPort& operator=(const ReservedPort&) = delete;

  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

}  // namespace keywarden::testing
