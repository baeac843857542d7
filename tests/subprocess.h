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

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
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

// ReadFile returns the contents of `path`, or nullopt if it cannot be read.
std::optional<std::string> ReadFile(const std::filesystem::path& path);

}  // namespace keywarden::testing
