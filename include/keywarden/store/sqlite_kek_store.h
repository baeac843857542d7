// KekStore in an embedded SQLite database: the single-machine default.
#pragma once

#include <filesystem>
#include <memory>

#include "absl/status/statusor.h"
#include "keywarden/store/kek_store.h"

namespace keywarden::store {

// NewSqliteKekStore opens (creating if absent, mode 0600) the database at `path`, in WAL mode
// with synchronous=FULL so a returned write is durable. FAILED_PRECONDITION when the file cannot
// be opened or is not a Keywarden database.
absl::StatusOr<std::unique_ptr<KekStore>> NewSqliteKekStore(const std::filesystem::path& path,
                                                            const StoreOptions& options = {});

}  // namespace keywarden::store
