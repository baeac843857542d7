#include "cli/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <memory>

namespace keywarden::cli {
namespace {

std::string Bytes(double bytes) {
  constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int unit = 0;
  while (bytes >= 1024 && unit < 4) {
    bytes /= 1024;
    ++unit;
  }
  return fmt::format("{:.1f} {}", bytes, kUnits[unit]);
}

}  // namespace

volume::ProgressFn TerminalProgress(std::string label) {
  if (!isatty(STDERR_FILENO)) return [](uint64_t, uint64_t) { return true; };
  using Clock = std::chrono::steady_clock;
  struct State {
    std::string label;
    Clock::time_point start = Clock::now();
    Clock::time_point last{};
    bool finished = false;
  };
  auto state = std::make_shared<State>();
  state->label = std::move(label);
  return [state](uint64_t done, uint64_t total) {
    const auto now = Clock::now();
    const bool complete = total > 0 && done >= total;
    if (state->finished || (!complete && now - state->last < std::chrono::milliseconds(100))) {
      return true;
    }
    state->last = now;
    constexpr int kWidth = 30;
    const double fraction = total == 0 ? 1.0 : static_cast<double>(done) / total;
    const int filled = static_cast<int>(fraction * kWidth);
    const double seconds = std::chrono::duration<double>(now - state->start).count();
    const double rate = seconds > 0 ? done / seconds : 0;
    fmt::print(stderr, "\r{} [{}{}] {:3.0f}%  {} / {}  {}/s ", state->label,
               std::string(filled, '#'), std::string(kWidth - filled, '.'), fraction * 100,
               Bytes(done), Bytes(total), Bytes(rate));
    if (complete) {
      fmt::print(stderr, "\n");
      state->finished = true;
    }
    std::fflush(stderr);
    return true;
  };
}

}  // namespace keywarden::cli
