#include "keywarden/service/audit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::service {
namespace {

using Json = nlohmann::json;

// The chain starts from 64 zero digits.
const std::string kGenesis(64, '0');

std::string LineHash(std::string_view line) {
  return crypto::HexEncode(
      crypto::Sha256({std::span(reinterpret_cast<const uint8_t*>(line.data()), line.size())}));
}

std::string Now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  const auto millis =
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &utc);
  return fmt::format("{}.{:03d}Z", text, millis);
}

std::string Cut(std::string_view text) { return std::string(text.substr(0, 512)); }

// CheckLine parses one line and checks its place in the chain.
absl::Status CheckLine(const std::string& line, uint64_t seq, const std::string& prev,
                       size_t line_number) {
  const Json j = Json::parse(line, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return MakeStatus(absl::StatusCode::kDataLoss, "audit log line {} is not a JSON object",
                      line_number);
  }
  if (!j.contains("seq") || !j["seq"].is_number_unsigned() || j["seq"].get<uint64_t>() != seq) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "audit log line {}: sequence number is not {} (a record is missing or "
                      "out of order)",
                      line_number, seq);
  }
  if (!j.contains("prev") || !j["prev"].is_string() || j["prev"].get<std::string>() != prev) {
    return MakeStatus(absl::StatusCode::kDataLoss,
                      "audit log line {}: \"prev\" does not match the line before (edited or "
                      "removed lines)",
                      line_number);
  }
  return absl::OkStatus();
}

struct ChainState {
  uint64_t records = 0;
  std::string prev = kGenesis;
};

absl::StatusOr<ChainState> ReadChain(const std::filesystem::path& path) {
  ChainState state;
  std::ifstream in(path, std::ios::binary);
  if (!in) return state;  // a missing file is an empty log
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (in.eof()) {
      return MakeStatus(absl::StatusCode::kDataLoss,
                        "audit log {} ends with a partial line {} (a torn write)", path.string(),
                        number);
    }
    RETURN_IF_ERROR(CheckLine(line, state.records, state.prev, number));
    state.prev = LineHash(line);
    ++state.records;
  }
  return state;
}

}  // namespace

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(const std::filesystem::path& path) {
  ASSIGN_OR_RETURN(ChainState state, ReadChain(path));
  const int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return FailedPreconditionError("cannot open the audit log {}: {}", path.string(),
                                   std::strerror(errno));
  }
  return std::unique_ptr<AuditLog>(new AuditLog(fd, state.prev, state.records));
}

AuditLog::~AuditLog() { close(fd_); }

absl::Status AuditLog::Append(const AuditRecord& record) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!sticky_error_.ok()) return sticky_error_;
  const uint64_t my_seq = seq_;
  const Json j = {{"seq", my_seq},
                  {"time", Now()},
                  {"event", Cut(record.event)},
                  {"node", Cut(record.node)},
                  {"key_id", Cut(record.key_id)},
                  {"decision", record.allowed ? "allow" : "deny"},
                  {"reason", Cut(record.reason)},
                  {"peer", Cut(record.peer)},
                  {"prev", prev_}};
  const std::string line = j.dump(-1, ' ', true, Json::error_handler_t::replace);
  const std::string with_newline = line + "\n";
  // The write stays under the lock: lines reach the file in chain order.
  size_t done = 0;
  while (done < with_newline.size()) {
    const ssize_t n = write(fd_, with_newline.data() + done, with_newline.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      // A partial line breaks the chain for every later record: refuse all further appends.
      sticky_error_ = UnavailableError("cannot write the audit log: {}", std::strerror(errno));
      return sticky_error_;
    }
    done += static_cast<size_t>(n);
  }
  prev_ = LineHash(line);
  ++seq_;
  // Group commit: one fdatasync makes every line written before it durable. Whoever finds no
  // sync running syncs everything written so far; the others wait for a sync that covers their
  // line. Append returns only once its own line is durable.
  while (synced_ <= my_seq) {
    if (!sticky_error_.ok()) return sticky_error_;
    if (syncing_) {
      synced_cv_.wait(lock);
      continue;
    }
    syncing_ = true;
    const uint64_t target = seq_;
    lock.unlock();
    const int rc = fdatasync(fd_);
    const int error = errno;
    lock.lock();
    syncing_ = false;
    if (rc != 0) {
      sticky_error_ = UnavailableError("cannot flush the audit log: {}", std::strerror(error));
    } else {
      synced_ = target;
    }
    synced_cv_.notify_all();
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> VerifyAuditLog(const std::filesystem::path& path) {
  if (!std::filesystem::exists(path)) return NotFoundError("{} does not exist", path.string());
  ASSIGN_OR_RETURN(ChainState state, ReadChain(path));
  return state.records;
}

}  // namespace keywarden::service
