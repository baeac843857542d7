// Operations on a DEK store with its KEK providers (docs/byok.md, "Operations"):
//   - KEK rotation: rewrap every DEK from an old KEK to a new one without changing any DEK;
//     resumable and idempotent (each entry is rewrapped with a compare-and-swap; an entry
//     already under the new KEK is left alone), so a killed run is finished by running it again;
//   - export / import of the stored (wrapped) DEKs between stores: migration. No plaintext DEK
//     is ever written; the importing side needs the same KEK to use them.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"

namespace keywarden::byok {

// Progress is told (done, total) entries; total is known after listing.
using EntryProgress = std::function<void(uint64_t done, uint64_t total)>;

struct RotationReport {
  uint64_t total = 0;      // entries listed
  uint64_t rewrapped = 0;  // moved to the new KEK by this run
  uint64_t already = 0;    // found under the new KEK (an earlier or concurrent run)
};

// RotateKek rewraps every entry of `store` from `from` to `to`. Per entry: read it; if its KEK
// id is to's, count it as done; else unwrap with `from` (the id binding is checked), wrap the
// same DEK with `to`, unwrap that again and compare (a rewrap that would lose the key is never
// written), and ReplaceIf on the version read (ABORTED: someone else changed it — read again).
// Stops at the first entry it cannot rewrap (e.g. a blob under a third KEK: FAILED_PRECONDITION
// naming the id); entries done so far stay done.
absl::StatusOr<RotationReport> RotateKek(KekProvider& from, KekProvider& to, DekStore& store,
                                         const EntryProgress& progress = nullptr);

struct TransferReport {
  uint64_t total = 0;
  uint64_t written = 0;  // exported, or imported (created, or already there identical)
};

// ExportDeks writes every stored entry as one JSON line {"id": ..., "blob": base64} to `out`
// (wrapped DEKs only).
absl::StatusOr<TransferReport> ExportDeks(DekStore& store, std::ostream& out,
                                          const EntryProgress& progress = nullptr);

// ImportDeks reads ExportDeks' lines and creates each entry in `store` with CreateIfAbsent.
// An id the target already holds with a different blob is a conflict: FAILED_PRECONDITION naming
// it (entries before it stay imported; rerunning is safe). INVALID_ARGUMENT for a malformed line
// (its number is named) or a blob that is not a wrapped DEK.
absl::StatusOr<TransferReport> ImportDeks(DekStore& store, std::istream& in,
                                          const EntryProgress& progress = nullptr);

}  // namespace keywarden::byok
