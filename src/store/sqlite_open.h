// OpenSqliteDatabase: how Keywarden opens each of its SQLite files (the KEK store, the network
// registry's store, the SQLite DEK store), so the file mode, the application_id check and the
// durability pragmas are decided in one place.
#pragma once

#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace keywarden::store::internal {

// SqliteCloser closes a connection with sqlite3_close_v2.
struct SqliteCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using SqliteDb = std::unique_ptr<sqlite3, SqliteCloser>;

// SqliteOpenOptions: what differs between Keywarden's databases.
struct SqliteOpenOptions {
  // name is how messages call the database: "cannot open {name}: {strerror}" and
  // "{name}: {what}: {sqlite message}" (usually the path).
  std::string name;
  // application_id is written to the header; a database with another non-zero id is refused
  // ("not a Keywarden database").
  int application_id = 0;
  // busy_timeout is how long a statement waits for another connection's lock
  // (sqlite3_busy_timeout).
  std::chrono::milliseconds busy_timeout{0};
  // secure_delete adds PRAGMA secure_delete=ON: freed pages are overwritten, so deleted rows do
  // not linger in the file.
  bool secure_delete = false;
  // schema is SQL run after the pragmas, in the same sqlite3_exec (CREATE TABLE IF NOT EXISTS ...).
  std::string_view schema;
  // setup_error is the message's `what` when the pragmas or the schema fail.
  std::string_view setup_error;
};

// OpenSqliteDatabase opens (creating it with mode 0600 if missing, never through a symlink) the
// SQLite database at `path` read-write in serialized mode, sets the busy timeout, refuses a file
// that is not SQLite or belongs to another application, then runs
//   PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; [PRAGMA secure_delete=ON;]
//   PRAGMA application_id=...; <schema>
// WAL: readers never block the writer of another process, and a writer waits for the busy
// timeout instead of failing at once. synchronous=FULL: a committed transaction survives power
// loss. The caller owns the returned connection. FAILED_PRECONDITION on any failure (the
// connection is closed).
absl::StatusOr<SqliteDb> OpenSqliteDatabase(const std::filesystem::path& path,
                                            const SqliteOpenOptions& options);

}  // namespace keywarden::store::internal
