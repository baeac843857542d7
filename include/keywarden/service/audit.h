// The audit log: one JSON line per key-release decision, append-only and hash-chained.
//
// Every join, rejoin, recovery and verification decision is recorded with its time, the
// node's identity (EK fingerprint), the key id, the decision and the reason — never key bytes.
// Each line carries the SHA-256 of the line before it ("prev"), so deleting, reordering or
// editing lines is detectable with VerifyAuditLog (docs/formats/audit-log.md).
#pragma once

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden::service {

struct AuditRecord {
  std::string event;     // "join", "rejoin", "recover", "verify"
  std::string node;      // EK fingerprint (hex SHA-256 of the EK public key), or "unknown"
  std::string key_id;    // the key the decision is about ("" if none)
  bool allowed = false;  // the decision
  std::string reason;    // why (for refusals: the check that failed)
  std::string peer;      // network peer address
};

// AuditLog appends records to a file opened with O_APPEND (mode 0600), one JSON object per
// line, each followed by fdatasync. Thread-safe.
class AuditLog {
 public:
  // Open opens (creating if needed) `path`, reads its last line to continue the hash chain,
  // and refuses a file whose chain is already broken.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(const std::filesystem::path& path);
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Append writes one record with the current UTC time (RFC 3339, milliseconds) and makes it
  // durable before returning. Free text is escaped by the JSON writer and cut to 512 bytes.
  absl::Status Append(const AuditRecord& record);

 private:
  AuditLog(int fd, std::string prev, uint64_t seq) : fd_(fd), prev_(std::move(prev)), seq_(seq) {}
  std::mutex mu_;
  int fd_;
  std::string prev_;  // hex SHA-256 of the last line written (without its newline)
  uint64_t seq_;      // number of the next record
};

// VerifyAuditLog checks the whole chain: sequence numbers 0, 1, 2, ... and each "prev" equal to
// the SHA-256 of the previous line. Returns the number of records, or DATA_LOSS naming the
// first bad line.
absl::StatusOr<uint64_t> VerifyAuditLog(const std::filesystem::path& path);

}  // namespace keywarden::service
