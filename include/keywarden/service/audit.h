// The audit log: one JSON line per key-release decision, append-only and hash-chained.
//
// Every join, rejoin, recovery and verification decision is recorded with its time, the
// node's identity (EK fingerprint), the key id, the decision and the reason — never key bytes.
// Each line carries the SHA-256 of the line before it ("prev"), so deleting, reordering or
// editing lines is detectable with VerifyAuditLog (docs/formats/audit-log.md).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden::service {

struct AuditRecord {
  std::string event;     // "join", "rejoin", "attest", "net-credential"; user-managed mode: "wrap",
                         // "create", "unwrap"
  std::string node;      // EK fingerprint (hex SHA-256 of the EK public key), or "unknown"
  std::string key_id;    // the key the decision is about ("" if none)
  bool allowed = false;  // the decision
  std::string reason;    // why (for refusals: the check that failed)
  std::string peer;      // network peer address
};

// AuditLog appends records to a file opened with O_APPEND (mode 0600), one JSON object per
// line, durable (fdatasync) before Append returns. Concurrent appends share fdatasync calls
// (group commit): a sync covers every line written before it. Thread-safe.
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
  // After a failed write or sync every later Append fails with the same UNAVAILABLE status (a
  // torn line or an unsynced record must not be followed by records that claim to chain).
  absl::Status Append(const AuditRecord& record);

 private:
  AuditLog(int fd, std::string prev, uint64_t seq)
      : fd_(fd), prev_(std::move(prev)), seq_(seq), synced_(seq) {}
  std::mutex mu_;
  std::condition_variable synced_cv_;
  int fd_;
  std::string prev_;      // hex SHA-256 of the last line written (without its newline)
  uint64_t seq_;          // number of the next record
  uint64_t synced_;       // records [0, synced_) are durable
  bool syncing_ = false;  // a thread is in fdatasync
  absl::Status sticky_error_;
};

// VerifyAuditLog checks the whole chain: sequence numbers 0, 1, 2, ... and each "prev" equal to
// the SHA-256 of the previous line. Returns the number of records, or DATA_LOSS naming the
// first bad line.
absl::StatusOr<uint64_t> VerifyAuditLog(const std::filesystem::path& path);

}  // namespace keywarden::service
