#include "cli/volume_commands.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/status.h"

namespace keywarden::cli {
namespace {

// MakeFetcher returns the DEK source the flags chose. The master secret is read once.
absl::StatusOr<volume::KeyFetcher> MakeFetcher(const KeySource& keys) {
  if (!keys.master_secret.empty()) {
    ASSIGN_OR_RETURN(keys::MasterSecret secret, keys::ReadMasterSecretFile(keys.master_secret));
    ASSIGN_OR_RETURN(std::unique_ptr<keys::Kek> kek, keys::Kek::FromMasterSecret(secret));
    std::shared_ptr<keys::Kek> shared(std::move(kek));
    return volume::KeyFetcher(
        [shared](const std::string& id) { return shared->DeriveDek(id, volume::kDekSize); });
  }
  if (keys.client.endpoint.empty()) {
    return InvalidArgumentError("give --endpoint (the key service) or --master-secret");
  }
  service::ClientOptions client = keys.client;
  return volume::KeyFetcher([client](const std::string& id) {
    return service::GetDataKeyRemote(client, id, volume::kDekSize);
  });
}

std::string VersionName(volume::LuksVersion v) {
  return v == volume::LuksVersion::kLuks2 ? "luks2" : "luks1";
}

void PrintFacts(const volume::HeaderFacts& f) {
  fmt::print("type {}\n", VersionName(f.version));
  fmt::print("uuid {}\n", f.uuid);
  fmt::print("cipher {}\n", volume::kCipherSpec);
  fmt::print("volume-key-bits {}\n", f.volume_key_size * 8);
  fmt::print("sector-size {}\n", f.sector_size);
  fmt::print("data-offset {}\n", f.data_offset);
  fmt::print("integrity {}\n", f.integrity ? *f.integrity : "none");
  fmt::print("pbkdf {}\n", f.pbkdf);
  fmt::print("key-id {}\n", f.key_id);
  fmt::print("initialized {}\n", f.initialized ? "yes" : "no");
  // A state disk's salt as the header states it; its MAC needs the DEK (ReadNodeState).
  if (f.measurement_salt) {
    fmt::print("measurement-salt {}\n", crypto::HexEncode(*f.measurement_salt));
  }
}

nlohmann::json FactsJson(const volume::HeaderFacts& f) {
  return {{"type", VersionName(f.version)},
          {"uuid", f.uuid},
          {"cipher", std::string(volume::kCipherSpec)},
          {"volume_key_bits", f.volume_key_size * 8},
          {"sector_size", f.sector_size},
          {"data_offset", f.data_offset},
          {"integrity", f.integrity ? nlohmann::json(*f.integrity) : nlohmann::json(nullptr)},
          {"pbkdf", f.pbkdf},
          {"key_id", f.key_id},
          {"initialized", f.initialized},
          {"measurement_salt", f.measurement_salt
                                   ? nlohmann::json(crypto::HexEncode(*f.measurement_salt))
                                   : nlohmann::json(nullptr)}};
}

// WriteAll writes a short message to the start-up pipe.
void WriteAll(int fd, const std::string& text) {
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
}

// HardenProcess keeps the volume key out of core dumps and away from ptrace by other users.
void HardenProcess() {
  prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  const rlimit no_core{0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
}

}  // namespace

int RunVolumeFormat(volume::FormatRequest request, const KeySource& keys) {
  auto fetch = MakeFetcher(keys);
  if (!fetch.ok()) return Fail(fetch.status());
  request.progress = TerminalProgress("initializing");
  auto facts = volume::FormatVolume(request, *fetch);
  if (!facts.ok()) return Fail(facts.status());
  PrintFacts(*facts);
  return kExitOk;
}

int RunVolumeOpen(volume::OpenRequest request, const KeySource& keys, bool foreground) {
  return RunVolumeOpenWith(
      std::move(request), [&keys] { return MakeFetcher(keys); }, foreground);
}

int RunVolumeOpenWith(volume::OpenRequest request, const FetcherFactory& make_fetcher,
                      bool foreground) {
  HardenProcess();
  std::error_code ec;
  request.run_dir = std::filesystem::absolute(request.run_dir, ec).string();
  auto print_ready = [](const volume::OpenedVolume& v) {
    fmt::print("{}\n", v.path);
    std::fflush(stdout);
  };
  if (foreground || request.fuse_dir.empty()) {
    auto fetch = make_fetcher();
    if (!fetch.ok()) return Fail(fetch.status());
    const absl::Status status = volume::OpenVolume(request, *fetch, print_ready);
    return status.ok() ? kExitOk : Fail(status);
  }

  // Background FUSE server: fork before anything else (no gRPC or key in the parent), let
  // the child report "ready" or its error through a pipe, and return once it has.
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) return Fail(InternalError("pipe: {}", strerror(errno)));
  std::fflush(stdout);
  std::fflush(stderr);
  const pid_t pid = fork();
  if (pid < 0) return Fail(InternalError("fork: {}", strerror(errno)));
  if (pid == 0) {
    close(pipe_fds[0]);
    setsid();
    const int report = pipe_fds[1];
    auto fetch = make_fetcher();
    if (!fetch.ok()) {
      WriteAll(report, "ERR " + StatusMessage(fetch.status()));
      _exit(kExitError);
    }
    bool reported = false;
    const absl::Status status =
        volume::OpenVolume(request, *fetch, [&](const volume::OpenedVolume& v) {
          WriteAll(report, "OK " + v.path);
          close(report);
          reported = true;
          // Like any daemon, keep no directory busy (every path it uses is absolute by now).
          if (chdir("/") != 0) std::perror("keywarden: chdir /");
          // From here on the server's messages go to its log beside its record.
          const std::string log = request.run_dir + "/volumes/" + request.name + ".log";
          const int log_fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
          const int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
          if (null_fd >= 0) dup2(null_fd, STDIN_FILENO);
          dup2(log_fd >= 0 ? log_fd : null_fd, STDOUT_FILENO);
          dup2(log_fd >= 0 ? log_fd : null_fd, STDERR_FILENO);
        });
    if (!reported) {
      WriteAll(report, "ERR " + (status.ok() ? std::string("stopped before it was ready")
                                             : StatusMessage(status)));
    } else if (!status.ok()) {
      fmt::print(stderr, "keywarden: volume {}: {}\n", request.name, StatusMessage(status));
    }
    std::fflush(stderr);
    _exit(status.ok() ? kExitOk : kExitError);
  }
  close(pipe_fds[1]);
  std::string message;
  char buffer[512];
  for (;;) {
    const ssize_t n = read(pipe_fds[0], buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    message.append(buffer, static_cast<size_t>(n));
  }
  close(pipe_fds[0]);
  if (message.rfind("OK ", 0) == 0) {
    fmt::print("{}\n", message.substr(3));
    return kExitOk;
  }
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  if (message.rfind("ERR ", 0) == 0) {
    fmt::print(stderr, "keywarden: error: {}\n", message.substr(4));
  } else {
    fmt::print(stderr, "keywarden: error: the volume server exited during start-up\n");
  }
  return kExitError;
}

int RunVolumeClose(const std::string& name, const std::string& run_dir) {
  const absl::Status status = volume::CloseVolume(name, run_dir);
  return status.ok() ? kExitOk : Fail(status);
}

int RunVolumeStatus(const std::string& target_or_name, const std::string& run_dir, bool json) {
  auto status = volume::GetVolumeStatus(target_or_name, run_dir);
  if (!status.ok()) return Fail(status.status());
  if (json) {
    nlohmann::json out = {{"target", status->target}};
    out["header"] = status->facts ? FactsJson(*status->facts) : nlohmann::json(nullptr);
    out["profile"] = status->facts ? "ok" : StatusMessage(status->header_status);
    nlohmann::json maps = nlohmann::json::array();
    for (const auto& m : status->mappings) {
      maps.push_back({{"name", m.name},
                      {"mode", m.mode},
                      {"path", m.path},
                      {"pid", m.pid},
                      {"server_alive", status->server_alive}});
    }
    out["mappings"] = maps;
    fmt::print("{}\n", out.dump(2));
  } else {
    fmt::print("target {}\n", status->target);
    if (status->facts) {
      PrintFacts(*status->facts);
      fmt::print("profile ok\n");
    } else {
      fmt::print("profile refused: {}\n", StatusMessage(status->header_status));
    }
    if (status->mappings.empty()) fmt::print("mapped no\n");
    for (const auto& m : status->mappings) {
      fmt::print("mapped {} {} {}{}\n", m.name, m.mode, m.path,
                 m.mode == "fuse"
                     ? fmt::format(" pid {}{}", m.pid, status->server_alive ? "" : " (server dead)")
                     : "");
    }
  }
  return status->facts ? kExitOk : kExitError;
}

}  // namespace keywarden::cli
