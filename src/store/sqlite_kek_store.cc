#include "keywarden/store/sqlite_kek_store.h"

#include <sqlite3.h>

#include <mutex>

#include "keywarden/status.h"
#include "src/store/sqlite_open.h"

namespace keywarden::store {
namespace {

// Identifies a Keywarden database in the SQLite header (PRAGMA application_id): "KWdn".
constexpr int kApplicationId = 0x4b57646e;
constexpr char kRecordKey[] = "kek/v1";

class SqliteKekStore : public KekStore {
 public:
  SqliteKekStore(sqlite3* db, std::filesystem::path path) : db_(db), path_(std::move(path)) {}
  ~SqliteKekStore() override { sqlite3_close_v2(db_); }

  absl::StatusOr<KekRecord> Load() override {
    std::lock_guard<std::mutex> lock(mu_);
    return LoadLocked();
  }

  absl::StatusOr<KekRecord> InitializeOrLoad(const KekRecord& record) override {
    std::lock_guard<std::mutex> lock(mu_);
    // BEGIN IMMEDIATE takes the write lock first, so two processes sharing the file cannot both
    // see "no record" and both insert.
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    auto existing = LoadLocked();
    if (existing.ok() || existing.status().code() != absl::StatusCode::kNotFound) {
      (void)Exec("ROLLBACK");
      return existing;
    }
    const SecretBytes bytes = EncodeKekRecord(record);
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db_, "INSERT INTO keywarden_kv(key, value) VALUES(?1, ?2)", -1,
                                &stmt, nullptr);
    if (rc == SQLITE_OK) {
      const auto view = bytes.Reveal(InsecureSecretAccess::Get());
      sqlite3_bind_text(stmt, 1, kRecordKey, -1, SQLITE_STATIC);
      sqlite3_bind_blob(stmt, 2, view.data(), static_cast<int>(view.size()), SQLITE_STATIC);
      rc = sqlite3_step(stmt);
    }
    sqlite3_finalize(stmt);
    if (rc != SQLITE_DONE) {
      const absl::Status error = Error("store the KEK record", rc);
      (void)Exec("ROLLBACK");
      return error;
    }
    RETURN_IF_ERROR(Exec("COMMIT"));
    return LoadLocked();
  }

  std::string Describe() const override { return "sqlite://" + path_.string(); }

 private:
  absl::StatusOr<KekRecord> LoadLocked() {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db_, "SELECT value FROM keywarden_kv WHERE key = ?1", -1, &stmt,
                                nullptr);
    if (rc != SQLITE_OK) return Error("read the KEK record", rc);
    sqlite3_bind_text(stmt, 1, kRecordKey, -1, SQLITE_STATIC);
    rc = sqlite3_step(stmt);
    absl::StatusOr<KekRecord> result = NotFoundError("{} holds no KEK record", Describe());
    if (rc == SQLITE_ROW) {
      const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(stmt, 0));
      const int size = sqlite3_column_bytes(stmt, 0);
      result = DecodeKekRecord({data, static_cast<size_t>(size)});
    } else if (rc != SQLITE_DONE) {
      result = Error("read the KEK record", rc);
    }
    sqlite3_finalize(stmt);
    return result;
  }

  absl::Status Exec(const char* sql) {
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : Error(sql, rc);
  }

  absl::Status Error(std::string_view what, int rc) const {
    if (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) {
      return UnavailableError("{}: {} timed out: the database is locked by another process",
                              Describe(), what);
    }
    return FailedPreconditionError("{}: {} failed: {}", Describe(), what, sqlite3_errstr(rc));
  }

  std::mutex mu_;
  sqlite3* const db_;  // guarded by mu_
  const std::filesystem::path path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KekStore>> NewSqliteKekStore(const std::filesystem::path& path,
                                                            const StoreOptions& options) {
  // secure_delete: an old record does not linger in the file.
  ASSIGN_OR_RETURN(internal::SqliteDb db,
                   internal::OpenSqliteDatabase(
                       path, {.name = path.string(),
                              .application_id = kApplicationId,
                              .busy_timeout = options.timeout,
                              .secure_delete = true,
                              .schema = "CREATE TABLE IF NOT EXISTS keywarden_kv(key TEXT PRIMARY "
                                        "KEY, value BLOB NOT NULL);",
                              .setup_error = "cannot set up database"}));
  return std::unique_ptr<KekStore>(new SqliteKekStore(db.release(), path));
}

}  // namespace keywarden::store
