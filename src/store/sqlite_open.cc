#include "src/store/sqlite_open.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "keywarden/status.h"

namespace keywarden::store::internal {

absl::StatusOr<SqliteDb> OpenSqliteDatabase(const std::filesystem::path& path,
                                            const SqliteOpenOptions& options) {
  // Create the file with mode 0600 before SQLite does (it would use 0644); SQLite gives its
  // -wal and -shm files the same mode as the database.
  const int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) {
    return FailedPreconditionError("cannot open {}: {}", options.name, std::strerror(errno));
  }
  close(fd);
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, nullptr);
  auto fail = [&](std::string_view what) -> absl::Status {
    const std::string message =
        fmt::format("{}: {}: {}", options.name, what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(keywarden::internal::ToAbsl(message));
  };
  if (rc != SQLITE_OK) return fail("cannot open database");
  sqlite3_busy_timeout(db, static_cast<int>(options.busy_timeout.count()));
  int app_id = -1;
  sqlite3_stmt* stmt = nullptr;
  if (sqlite3_prepare_v2(db, "PRAGMA application_id", -1, &stmt, nullptr) == SQLITE_OK &&
      sqlite3_step(stmt) == SQLITE_ROW) {
    app_id = sqlite3_column_int(stmt, 0);
  }
  sqlite3_finalize(stmt);
  if (app_id == -1) return fail("not a SQLite database");
  if (app_id != 0 && app_id != options.application_id) return fail("not a Keywarden database");
  const std::string setup = fmt::format(
      "PRAGMA journal_mode=WAL;"
      "PRAGMA synchronous=FULL;"
      "{}"
      "PRAGMA application_id={};"
      "{}",
      options.secure_delete ? "PRAGMA secure_delete=ON;" : "", options.application_id,
      options.schema);
  if (sqlite3_exec(db, setup.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    return fail(options.setup_error);
  }
  return SqliteDb(db);
}

}  // namespace keywarden::store::internal
