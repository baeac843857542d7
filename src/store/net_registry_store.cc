// The network registry's stores (keywarden::net::OpenRegistryStore, include/keywarden/net/
// registry.h): SQLite for one machine, etcd for several. The file sits in src/store/ because
// SQLite and etcd are touched from the store module only (STYLE.md "Layout"); it is compiled
// into keywarden_net_registry. Key layout and tables: docs/formats/network-registry.md
// ("Stores").
#include <sqlite3.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "keywarden/net/registry.h"
#include "keywarden/status.h"
#include "keywarden/store/etcd_kek_store.h"
#include "keywarden/store/kek_store.h"
#include "src/store/etcd_kv.h"
#include "src/store/sqlite_open.h"

namespace keywarden::net {
namespace {

using std::chrono::milliseconds;

absl::Status CheckPut(std::string_view node, std::string_view record) {
  if (!ValidNodeName(node)) {
    return InvalidArgumentError("registry: \"{}\" is not a valid node name", Printable(node));
  }
  if (record.empty() || record.size() > kMaxRecordSize) {
    return InvalidArgumentError("registry: a record of {} bytes for {}; want 1 to {}",
                                record.size(), node, kMaxRecordSize);
  }
  return absl::OkStatus();
}

// ---- SQLite ----------------------------------------------------------------------------------

// The KEK store's application_id ("KWdn"): both may share one database file.
constexpr int kApplicationId = 0x4b57646e;
// The log keeps the last kLogRetention revisions; a Watch from before them is OUT_OF_RANGE.
constexpr int64_t kLogRetention = 10000;
// Watch reads at most this many log rows per query.
constexpr int kWatchBatch = 1000;
constexpr milliseconds kWatchPoll{100};

// Stmt owns a prepared statement.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  bool ok() const { return rc_ == SQLITE_OK; }
  int rc() const { return rc_; }
  sqlite3_stmt* get() { return stmt_; }
  void Text(int i, std::string_view s) {
    sqlite3_bind_text(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  void Blob(int i, std::string_view s) {
    sqlite3_bind_blob(stmt_, i, s.data(), static_cast<int>(s.size()), SQLITE_TRANSIENT);
  }
  void Int(int i, int64_t v) { sqlite3_bind_int64(stmt_, i, v); }
  int Step() { return sqlite3_step(stmt_); }
  std::string ColumnText(int i) {
    const auto* p = sqlite3_column_text(stmt_, i);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(stmt_, i)))
             : std::string();
  }
  std::string ColumnBlob(int i) {
    const auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_, i));
    return p ? std::string(p, static_cast<size_t>(sqlite3_column_bytes(stmt_, i))) : std::string();
  }
  bool ColumnNull(int i) { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
  int64_t ColumnInt(int i) { return sqlite3_column_int64(stmt_, i); }

 private:
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_OK;
};

class SqliteRegistryStore final : public RegistryStore {
 public:
  SqliteRegistryStore(sqlite3* db, std::filesystem::path path) : db_(db), path_(std::move(path)) {}
  ~SqliteRegistryStore() override { sqlite3_close_v2(db_); }

  absl::Status Put(std::string_view node, std::string_view record) override {
    RETURN_IF_ERROR(CheckPut(node, record));
    std::lock_guard<std::mutex> lock(mu_);
    return Write(node, record, /*is_delete=*/false);
  }

  absl::Status Delete(std::string_view node) override {
    if (!ValidNodeName(node)) {
      return InvalidArgumentError("registry: \"{}\" is not a valid node name", Printable(node));
    }
    std::lock_guard<std::mutex> lock(mu_);
    return Write(node, {}, /*is_delete=*/true);
  }

  absl::StatusOr<RegistrySnapshot> List() override {
    std::lock_guard<std::mutex> lock(mu_);
    // One read transaction: the revision and the rows are one snapshot (WAL readers see the
    // database as of their first read).
    RETURN_IF_ERROR(Exec("BEGIN"));
    auto result = ListLocked();
    (void)Exec(result.ok() ? "COMMIT" : "ROLLBACK");
    return result;
  }

  absl::Status Watch(int64_t after_revision,
                     const std::function<bool(const RegistryEvent&)>& on_event,
                     const std::atomic<bool>& stop) override {
    int64_t last = after_revision;
    bool first = true;
    while (!stop.load()) {
      std::vector<RegistryEvent> events;
      {
        std::lock_guard<std::mutex> lock(mu_);
        RETURN_IF_ERROR(Exec("BEGIN"));
        absl::Status status = PollLocked(last, first, &events);
        (void)Exec(status.ok() ? "COMMIT" : "ROLLBACK");
        RETURN_IF_ERROR(status);
      }
      first = false;
      for (const RegistryEvent& event : events) {
        if (stop.load()) return absl::OkStatus();
        if (!on_event(event)) return absl::OkStatus();
        last = event.revision;
      }
      if (events.size() < static_cast<size_t>(kWatchBatch)) {
        std::this_thread::sleep_for(kWatchPoll);
      }
    }
    return absl::OkStatus();
  }

  std::string Describe() const override { return "sqlite://" + path_.string(); }

 private:
  absl::StatusOr<int64_t> Meta(const char* name) {
    Stmt stmt(db_, "SELECT value FROM net_registry_meta WHERE name = ?1");
    if (!stmt.ok()) return Error("read the registry revision", stmt.rc());
    stmt.Text(1, name);
    const int rc = stmt.Step();
    if (rc != SQLITE_ROW) return Error("read the registry revision", rc);
    return stmt.ColumnInt(0);
  }

  absl::StatusOr<RegistrySnapshot> ListLocked() {
    RegistrySnapshot snapshot;
    ASSIGN_OR_RETURN(snapshot.revision, Meta("revision"));
    Stmt stmt(db_, "SELECT node, record FROM net_registry_nodes ORDER BY node");
    if (!stmt.ok()) return Error("list the registry", stmt.rc());
    int rc;
    while ((rc = stmt.Step()) == SQLITE_ROW) {
      std::string node = stmt.ColumnText(0);
      if (!ValidNodeName(node)) continue;
      snapshot.records.emplace_back(std::move(node), stmt.ColumnBlob(1));
    }
    if (rc != SQLITE_DONE) return Error("list the registry", rc);
    return snapshot;
  }

  absl::Status PollLocked(int64_t last, bool first, std::vector<RegistryEvent>* events) {
    ASSIGN_OR_RETURN(const int64_t revision, Meta("revision"));
    if (revision <= last && !first) return absl::OkStatus();
    ASSIGN_OR_RETURN(const int64_t compacted, Meta("compacted"));
    if (last < compacted) {
      return MakeStatus(absl::StatusCode::kOutOfRange,
                        "{}: revision {} was compacted (the log starts after {})", Describe(), last,
                        compacted);
    }
    Stmt stmt(db_,
              "SELECT revision, node, record FROM net_registry_log WHERE revision > ?1 "
              "ORDER BY revision LIMIT ?2");
    if (!stmt.ok()) return Error("read the registry log", stmt.rc());
    stmt.Int(1, last);
    stmt.Int(2, kWatchBatch);
    int rc;
    while ((rc = stmt.Step()) == SQLITE_ROW) {
      RegistryEvent event;
      event.revision = stmt.ColumnInt(0);
      event.node = stmt.ColumnText(1);
      if (stmt.ColumnNull(2)) {
        event.type = RegistryEvent::Type::kDelete;
      } else {
        event.type = RegistryEvent::Type::kPut;
        event.record = stmt.ColumnBlob(2);
      }
      if (ValidNodeName(event.node)) events->push_back(std::move(event));
    }
    if (rc != SQLITE_DONE) return Error("read the registry log", rc);
    return absl::OkStatus();
  }

  absl::Status Write(std::string_view node, std::string_view record, bool is_delete) {
    // BEGIN IMMEDIATE takes the write lock first, so two processes never hand out one revision
    // twice.
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    absl::Status status = WriteLocked(node, record, is_delete);
    if (!status.ok()) {
      (void)Exec("ROLLBACK");
      return status;
    }
    return Exec("COMMIT");
  }

  absl::Status WriteLocked(std::string_view node, std::string_view record, bool is_delete) {
    ASSIGN_OR_RETURN(const int64_t previous, Meta("revision"));
    const int64_t revision = previous + 1;
    if (is_delete) {
      Stmt del(db_, "DELETE FROM net_registry_nodes WHERE node = ?1");
      if (!del.ok()) return Error("delete a registry entry", del.rc());
      del.Text(1, node);
      const int rc = del.Step();
      if (rc != SQLITE_DONE) return Error("delete a registry entry", rc);
      if (sqlite3_changes(db_) == 0) return absl::OkStatus();  // nothing to delete: no revision
    } else {
      Stmt put(db_,
               "INSERT INTO net_registry_nodes(node, record, revision) VALUES(?1, ?2, ?3) "
               "ON CONFLICT(node) DO UPDATE SET record = excluded.record, "
               "revision = excluded.revision");
      if (!put.ok()) return Error("store a registry entry", put.rc());
      put.Text(1, node);
      put.Blob(2, record);
      put.Int(3, revision);
      const int rc = put.Step();
      if (rc != SQLITE_DONE) return Error("store a registry entry", rc);
    }
    Stmt log(db_, "INSERT INTO net_registry_log(revision, node, record) VALUES(?1, ?2, ?3)");
    if (!log.ok()) return Error("log a registry change", log.rc());
    log.Int(1, revision);
    log.Text(2, node);
    if (!is_delete) log.Blob(3, record);  // NULL marks a delete
    int rc = log.Step();
    if (rc != SQLITE_DONE) return Error("log a registry change", rc);
    Stmt meta(db_, "UPDATE net_registry_meta SET value = ?2 WHERE name = ?1");
    if (!meta.ok()) return Error("advance the registry revision", meta.rc());
    meta.Text(1, "revision");
    meta.Int(2, revision);
    rc = meta.Step();
    if (rc != SQLITE_DONE) return Error("advance the registry revision", rc);
    if (revision > kLogRetention) {
      const int64_t compacted = revision - kLogRetention;
      Stmt trim(db_, "DELETE FROM net_registry_log WHERE revision <= ?1");
      if (!trim.ok()) return Error("trim the registry log", trim.rc());
      trim.Int(1, compacted);
      rc = trim.Step();
      if (rc != SQLITE_DONE) return Error("trim the registry log", rc);
      Stmt mark(db_, "UPDATE net_registry_meta SET value = ?2 WHERE name = ?1");
      if (!mark.ok()) return Error("trim the registry log", mark.rc());
      mark.Text(1, "compacted");
      mark.Int(2, compacted);
      rc = mark.Step();
      if (rc != SQLITE_DONE) return Error("trim the registry log", rc);
    }
    return absl::OkStatus();
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

absl::StatusOr<std::unique_ptr<RegistryStore>> OpenSqlite(const std::filesystem::path& path,
                                                          milliseconds timeout) {
  // WAL (set by OpenSqliteDatabase): readers (List, Watch polls) never block the writer of
  // another process, and the writer waits for the busy timeout instead of failing at once.
  ASSIGN_OR_RETURN(
      store::internal::SqliteDb db,
      store::internal::OpenSqliteDatabase(
          path,
          {.name = path.string(),
           .application_id = kApplicationId,
           .busy_timeout = timeout,
           .secure_delete = false,
           .schema =
               "BEGIN IMMEDIATE;"
               "CREATE TABLE IF NOT EXISTS net_registry_nodes(node TEXT PRIMARY KEY, record BLOB "
               "NOT NULL, revision INTEGER NOT NULL);"
               "CREATE TABLE IF NOT EXISTS net_registry_log(revision INTEGER PRIMARY KEY, node "
               "TEXT NOT NULL, record BLOB);"
               "CREATE TABLE IF NOT EXISTS net_registry_meta(name TEXT PRIMARY KEY, value INTEGER "
               "NOT NULL);"
               "INSERT OR IGNORE INTO net_registry_meta(name, value) VALUES('revision', 0), "
               "('compacted', 0);"
               "COMMIT;",
           .setup_error = "cannot set up the registry tables"}));
  return std::unique_ptr<RegistryStore>(new SqliteRegistryStore(db.release(), path));
}

// ---- etcd ------------------------------------------------------------------------------------

constexpr std::string_view kNodesDir = "net/nodes/";
// List reads the registry in pages (a gRPC message is at most 4 MiB by default; 10,000 records
// of ~1 KiB would not fit in one), all at the revision of the first page.
constexpr int64_t kListPage = 1000;
constexpr int kListAttempts = 3;

// PrefixEnd returns the first key after every key that starts with `prefix` (etcd's range_end
// for a prefix).
std::string PrefixEnd(std::string prefix) {
  while (!prefix.empty()) {
    unsigned char& last = reinterpret_cast<unsigned char&>(prefix.back());
    if (last < 0xff) {
      ++last;
      return prefix;
    }
    prefix.pop_back();
  }
  return std::string(1, '\0');  // every key
}

class EtcdRegistryStore final : public RegistryStore {
 public:
  EtcdRegistryStore(std::unique_ptr<store::EtcdKv> kv, std::string dir)
      : kv_(std::move(kv)), dir_(std::move(dir)), dir_end_(PrefixEnd(dir_)) {}

  absl::Status Put(std::string_view node, std::string_view record) override {
    RETURN_IF_ERROR(CheckPut(node, record));
    etcdserverpb::PutRequest request;
    request.set_key(Key(node));
    request.set_value(std::string(record));
    etcdserverpb::PutResponse response;
    return kv_->Put(request, &response);
  }

  absl::Status Delete(std::string_view node) override {
    if (!ValidNodeName(node)) {
      return InvalidArgumentError("registry: \"{}\" is not a valid node name", Printable(node));
    }
    etcdserverpb::DeleteRangeRequest request;
    request.set_key(Key(node));
    etcdserverpb::DeleteRangeResponse response;
    return kv_->DeleteRange(request, &response);
  }

  absl::StatusOr<RegistrySnapshot> List() override {
    absl::Status last;
    for (int attempt = 0; attempt < kListAttempts; ++attempt) {
      auto snapshot = ListOnce();
      // OUT_OF_RANGE: the revision of the first page was compacted while paging; start over.
      if (snapshot.ok() || snapshot.status().code() != absl::StatusCode::kOutOfRange) {
        return snapshot;
      }
      last = snapshot.status();
    }
    return last;
  }

  absl::Status Watch(int64_t after_revision,
                     const std::function<bool(const RegistryEvent&)>& on_event,
                     const std::atomic<bool>& stop) override {
    return kv_->Watch(
        dir_, dir_end_, after_revision + 1,
        [&](const etcdserverpb::WatchResponse& response) {
          for (const etcdserverpb::Event& e : response.events()) {
            RegistryEvent event;
            if (!NodeOf(e.kv().key(), &event.node)) continue;
            event.revision = e.kv().mod_revision();
            if (e.type() == etcdserverpb::Event::DELETE) {
              event.type = RegistryEvent::Type::kDelete;
            } else {
              event.type = RegistryEvent::Type::kPut;
              event.record = e.kv().value();
            }
            if (!on_event(event)) return false;
          }
          return true;
        },
        stop);
  }

  std::string Describe() const override { return kv_->description(); }

 private:
  std::string Key(std::string_view node) const { return dir_ + std::string(node); }

  bool NodeOf(const std::string& key, std::string* node) const {
    if (key.size() <= dir_.size() || key.compare(0, dir_.size(), dir_) != 0) return false;
    *node = key.substr(dir_.size());
    return ValidNodeName(*node);
  }

  absl::StatusOr<RegistrySnapshot> ListOnce() {
    RegistrySnapshot snapshot;
    std::string from = dir_;
    for (;;) {
      etcdserverpb::RangeRequest request;
      request.set_key(from);
      request.set_range_end(dir_end_);
      request.set_limit(kListPage);
      request.set_revision(snapshot.revision);  // 0 (the newest) for the first page
      etcdserverpb::RangeResponse response;
      RETURN_IF_ERROR(kv_->Range(request, &response));
      if (snapshot.revision == 0) snapshot.revision = response.header().revision();
      for (const etcdserverpb::KeyValue& kv : response.kvs()) {
        std::string node;
        if (NodeOf(kv.key(), &node)) snapshot.records.emplace_back(std::move(node), kv.value());
      }
      if (!response.more() || response.kvs_size() == 0) break;
      from = response.kvs(response.kvs_size() - 1).key() + std::string(1, '\0');
    }
    return snapshot;
  }

  const std::unique_ptr<store::EtcdKv> kv_;
  const std::string dir_;
  const std::string dir_end_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RegistryStore>> OpenRegistryStore(std::string_view uri,
                                                                 milliseconds timeout) {
  if (timeout <= milliseconds::zero()) {
    return InvalidArgumentError("registry store timeout must be positive");
  }
  ASSIGN_OR_RETURN(const store::StoreUri parsed, store::ParseStoreUri(uri));
  if (parsed.kind == store::StoreUri::Kind::kSqlite) return OpenSqlite(parsed.sqlite_path, timeout);
  store::EtcdOptions options;
  options.endpoints = parsed.etcd_endpoints;
  options.ca_file = parsed.etcd_ca;
  options.cert_file = parsed.etcd_cert;
  options.key_file = parsed.etcd_key;
  options.prefix = parsed.etcd_prefix;
  options.store.timeout = timeout;
  ASSIGN_OR_RETURN(std::unique_ptr<store::EtcdKv> kv, store::EtcdKv::Connect(options));
  std::string dir = parsed.etcd_prefix + std::string(kNodesDir);
  RETURN_IF_ERROR(kv->Ping(dir));
  return std::unique_ptr<RegistryStore>(new EtcdRegistryStore(std::move(kv), std::move(dir)));
}

}  // namespace keywarden::net
