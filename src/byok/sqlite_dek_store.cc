// storage://sqlite?path=FILE: wrapped DEKs in an SQLite table, safe for any number of processes
// sharing the file (the conditional writes are transactions that take SQLite's write lock first).
#include <sqlite3.h>

#include <charconv>
#include <mutex>

#include "keywarden/byok/byok.h"
#include "keywarden/status.h"
#include "src/store/sqlite_open.h"

namespace keywarden::byok {
namespace {

// Identifies a Keywarden database in the SQLite header (PRAGMA application_id): "KWdn", the same
// as the cluster store's, so one file may hold both.
constexpr int kApplicationId = 0x4b57646e;
// List reads ids in pages, so a long listing does not hold the connection.
constexpr int kListPage = 512;

// Statement owns a prepared statement.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;
  int prepare_rc() const { return rc_; }
  sqlite3_stmt* get() const { return stmt_; }
  void BindText(int index, std::string_view text) {
    sqlite3_bind_text(stmt_, index, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
  }
  void BindBlob(int index, std::span<const uint8_t> blob) {
    sqlite3_bind_blob(stmt_, index, blob.data(), static_cast<int>(blob.size()), SQLITE_STATIC);
  }
  int Step() { return sqlite3_step(stmt_); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

class SqliteDekStore : public DekStore {
 public:
  SqliteDekStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  ~SqliteDekStore() override { sqlite3_close_v2(db_); }

  absl::StatusOr<std::optional<StoredDek>> Get(std::string_view id) override {
    std::lock_guard<std::mutex> lock(mu_);
    return GetLocked(id);
  }

  absl::StatusOr<StoredDek> CreateIfAbsent(std::string_view id,
                                           std::span<const uint8_t> blob) override {
    std::lock_guard<std::mutex> lock(mu_);
    // BEGIN IMMEDIATE takes the database's write lock before reading, so of two processes
    // racing for one id exactly one inserts and the other reads the winner's row.
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::StatusOr<StoredDek> result = [&]() -> absl::StatusOr<StoredDek> {
      Statement insert(db_,
                       "INSERT OR IGNORE INTO keywarden_deks(id, blob, version) VALUES(?1, ?2, 1)");
      if (insert.prepare_rc() != SQLITE_OK) return Error("store a DEK", insert.prepare_rc());
      insert.BindText(1, id);
      insert.BindBlob(2, blob);
      const int rc = insert.Step();
      if (rc != SQLITE_DONE) return Error("store a DEK", rc);
      ASSIGN_OR_RETURN(std::optional<StoredDek> stored, GetLocked(id));
      if (!stored)
        return InternalError("{}: the DEK row vanished inside a transaction", Describe());
      return *std::move(stored);
    }();
    if (!result.ok()) {
      (void)Exec("ROLLBACK");
      return result;
    }
    RETURN_IF_ERROR(Exec("COMMIT"));
    return result;
  }

  absl::Status ReplaceIf(std::string_view id, std::string_view version,
                         std::span<const uint8_t> blob) override {
    int64_t expected = 0;
    const auto [end, ec] =
        std::from_chars(version.data(), version.data() + version.size(), expected);
    if (ec != std::errc() || end != version.data() + version.size()) {
      return InvalidArgumentError("{}: \"{}\" is not a version of this store", Describe(),
                                  Printable(version));
    }
    std::lock_guard<std::mutex> lock(mu_);
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::Status result = [&]() -> absl::Status {
      Statement update(db_,
                       "UPDATE keywarden_deks SET blob = ?1, version = version + 1 "
                       "WHERE id = ?2 AND version = ?3");
      if (update.prepare_rc() != SQLITE_OK) return Error("replace a DEK", update.prepare_rc());
      update.BindBlob(1, blob);
      update.BindText(2, id);
      sqlite3_bind_int64(update.get(), 3, expected);
      const int rc = update.Step();
      if (rc != SQLITE_DONE) return Error("replace a DEK", rc);
      if (sqlite3_changes(db_) == 1) return absl::OkStatus();
      ASSIGN_OR_RETURN(std::optional<StoredDek> now, GetLocked(id));
      if (!now)
        return NotFoundError("{} holds no DEK for key id \"{}\"", Describe(), Printable(id));
      return MakeStatus(absl::StatusCode::kAborted,
                        "{}: the DEK for key id \"{}\" changed meanwhile (version {}, not {})",
                        Describe(), Printable(id), now->version, expected);
    }();
    if (!result.ok()) {
      (void)Exec("ROLLBACK");
      return result;
    }
    return Exec("COMMIT");
  }

  absl::Status List(const std::function<absl::Status(std::string_view id)>& visit) override {
    std::string after;
    bool first = true;
    while (true) {
      std::vector<std::string> page;
      {
        std::lock_guard<std::mutex> lock(mu_);
        Statement select(db_, first ? "SELECT id FROM keywarden_deks ORDER BY id LIMIT ?2"
                                    : "SELECT id FROM keywarden_deks WHERE id > ?1 ORDER BY id "
                                      "LIMIT ?2");
        if (select.prepare_rc() != SQLITE_OK) return Error("list DEKs", select.prepare_rc());
        if (!first) select.BindText(1, after);
        sqlite3_bind_int(select.get(), 2, kListPage);
        int rc;
        while ((rc = select.Step()) == SQLITE_ROW) {
          const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(select.get(), 0));
          page.emplace_back(text, static_cast<size_t>(sqlite3_column_bytes(select.get(), 0)));
        }
        if (rc != SQLITE_DONE) return Error("list DEKs", rc);
      }
      for (const std::string& id : page) RETURN_IF_ERROR(visit(id));
      if (page.size() < static_cast<size_t>(kListPage)) return absl::OkStatus();
      after = page.back();
      first = false;
    }
  }

  std::string Describe() const override { return "storage://sqlite?path=" + path_; }

 private:
  absl::StatusOr<std::optional<StoredDek>> GetLocked(std::string_view id) {
    Statement select(db_, "SELECT blob, version FROM keywarden_deks WHERE id = ?1");
    if (select.prepare_rc() != SQLITE_OK) return Error("read a DEK", select.prepare_rc());
    select.BindText(1, id);
    const int rc = select.Step();
    if (rc == SQLITE_DONE) return std::optional<StoredDek>();
    if (rc != SQLITE_ROW) return Error("read a DEK", rc);
    const auto* data = static_cast<const uint8_t*>(sqlite3_column_blob(select.get(), 0));
    const int size = sqlite3_column_bytes(select.get(), 0);
    StoredDek stored;
    if (data != nullptr) stored.blob.assign(data, data + size);
    stored.version = std::to_string(sqlite3_column_int64(select.get(), 1));
    return std::optional<StoredDek>(std::move(stored));
  }

  absl::Status Exec(const char* sql) {
    const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
    return rc == SQLITE_OK ? absl::OkStatus() : Error(sql, rc);
  }

  absl::Status Error(std::string_view what, int rc) const {
    switch (rc & 0xff) {
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return UnavailableError("{}: {} timed out: the database is locked by another process",
                                Describe(), what);
      case SQLITE_IOERR:
      case SQLITE_FULL:
      case SQLITE_CANTOPEN:
      case SQLITE_PROTOCOL:
      case SQLITE_NOMEM:
        return UnavailableError("{}: {} failed: {}", Describe(), what, sqlite3_errstr(rc));
      case SQLITE_CORRUPT:
      case SQLITE_NOTADB:
        return MakeStatus(absl::StatusCode::kDataLoss, "{}: {} failed: {}", Describe(), what,
                          sqlite3_errstr(rc));
      default:
        return InternalError("{}: {} failed: {}", Describe(), what, sqlite3_errstr(rc));
    }
  }

  std::mutex mu_;
  sqlite3* const db_;  // guarded by mu_
  const std::string path_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DekStore>> NewSqliteDekStore(const std::string& path,
                                                            const RemoteOptions& options) {
  if (path.empty()) return InvalidArgumentError("storage://sqlite needs path=FILE");
  // synchronous=FULL (set by OpenSqliteDatabase): a DEK that a caller received must never be
  // lost. secure_delete overwrites freed pages.
  ASSIGN_OR_RETURN(store::internal::SqliteDb db,
                   store::internal::OpenSqliteDatabase(
                       path, {.name = "DEK store " + path,
                              .application_id = kApplicationId,
                              .busy_timeout = options.timeout,
                              .secure_delete = true,
                              .schema = "CREATE TABLE IF NOT EXISTS keywarden_deks(id TEXT PRIMARY "
                                        "KEY, blob BLOB NOT NULL, version INTEGER NOT NULL);",
                              .setup_error = "cannot set up database"}));
  return std::unique_ptr<DekStore>(new SqliteDekStore(db.release(), path));
}

void RegisterSqlite() {
  RegisterDekStore("sqlite",
                   [](const UriParams& params,
                      const RemoteOptions& options) -> absl::StatusOr<std::unique_ptr<DekStore>> {
                     RETURN_IF_ERROR(CheckUriParams(params, {"path"}, {}, "storage://sqlite"));
                     return NewSqliteDekStore(params.find("path")->second, options);
                   });
}

}  // namespace keywarden::byok
