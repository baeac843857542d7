#include "keywarden/byok/operations.h"

#include <istream>
#include <nlohmann/json.hpp>
#include <ostream>
#include <vector>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/status.h"

namespace keywarden::byok {
namespace {

constexpr int kMaxAttempts = 5;

absl::StatusOr<std::vector<std::string>> ListIds(DekStore& store) {
  std::vector<std::string> ids;
  RETURN_IF_ERROR(store.List([&ids](std::string_view id) {
    ids.emplace_back(id);
    return absl::OkStatus();
  }));
  return ids;
}

bool SameSecret(const SecretBytes& a, const SecretBytes& b) {
  const auto access = InsecureSecretAccess::Get();
  return a.size() == b.size() && crypto::ConstantTimeEquals(a.Reveal(access), b.Reveal(access));
}

// RotateOne moves one entry to `to`; returns true when this call rewrapped it.
absl::StatusOr<bool> RotateOne(KekProvider& from, KekProvider& to, DekStore& store,
                               const std::string& id) {
  for (int attempt = 0; attempt < kMaxAttempts; ++attempt) {
    ASSIGN_OR_RETURN(std::optional<StoredDek> entry, store.Get(id));
    if (!entry) return false;  // deleted meanwhile: nothing to rotate
    ASSIGN_OR_RETURN(WrappedDek wrapped, DecodeWrappedDek(entry->blob));
    if (wrapped.kek_id == to.kek_id()) return false;
    ASSIGN_OR_RETURN(SecretBytes dek, UnwrapDek(from, id, entry->blob));
    ASSIGN_OR_RETURN(std::vector<uint8_t> rewrapped, WrapDek(to, id, dek));
    ASSIGN_OR_RETURN(SecretBytes check, UnwrapDek(to, id, rewrapped));
    if (!SameSecret(dek, check)) {
      return InternalError("rewrapping DEK \"{}\" under {} did not round-trip; nothing written",
                           Printable(id), to.kek_id());
    }
    const absl::Status replaced = store.ReplaceIf(id, entry->version, rewrapped);
    if (replaced.ok()) return true;
    if (!absl::IsAborted(replaced)) return replaced;
    // Changed under us (another rotator, or a concurrent writer): read it again.
  }
  return MakeStatus(absl::StatusCode::kAborted,
                    "DEK \"{}\" kept changing while it was being rewrapped", Printable(id));
}

}  // namespace

absl::StatusOr<RotationReport> RotateKek(KekProvider& from, KekProvider& to, DekStore& store,
                                         const EntryProgress& progress) {
  if (from.kek_id() == to.kek_id()) {
    return InvalidArgumentError("the old and new KEK are the same ({})", to.kek_id());
  }
  ASSIGN_OR_RETURN(std::vector<std::string> ids, ListIds(store));
  RotationReport report;
  report.total = ids.size();
  if (progress) progress(0, report.total);
  uint64_t done = 0;
  for (const std::string& id : ids) {
    absl::StatusOr<bool> rotated = RotateOne(from, to, store, id);
    if (!rotated.ok()) {
      return MakeStatus(rotated.status().code(), "DEK \"{}\": {} ({} of {} done)", Printable(id),
                        StatusMessage(rotated.status()), done, report.total);
    }
    ++(*rotated ? report.rewrapped : report.already);
    ++done;
    if (progress) progress(done, report.total);
  }
  return report;
}

absl::StatusOr<TransferReport> ExportDeks(DekStore& store, std::ostream& out,
                                          const EntryProgress& progress) {
  ASSIGN_OR_RETURN(std::vector<std::string> ids, ListIds(store));
  TransferReport report;
  report.total = ids.size();
  for (const std::string& id : ids) {
    ASSIGN_OR_RETURN(std::optional<StoredDek> entry, store.Get(id));
    if (!entry) continue;
    const nlohmann::json line = {{"id", id}, {"blob", crypto::Base64Encode(entry->blob)}};
    out << line.dump(-1, ' ', true, nlohmann::json::error_handler_t::strict) << '\n';
    if (!out) return UnavailableError("cannot write the export");
    ++report.written;
    if (progress) progress(report.written, report.total);
  }
  return report;
}

absl::StatusOr<TransferReport> ImportDeks(DekStore& store, std::istream& in,
                                          const EntryProgress& progress) {
  TransferReport report;
  std::string text;
  uint64_t number = 0;
  while (std::getline(in, text)) {
    ++number;
    if (text.empty()) continue;
    const nlohmann::json line = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!line.is_object() || line.size() != 2 || !line.contains("id") || !line.contains("blob") ||
        !line["id"].is_string() || !line["blob"].is_string()) {
      return InvalidArgumentError("import line {} is not {{\"id\": ..., \"blob\": ...}}", number);
    }
    const std::string id = line["id"].get<std::string>();
    auto blob = crypto::Base64Decode(line["blob"].get<std::string>());
    if (!blob.ok()) return InvalidArgumentError("import line {}: blob is not base64", number);
    if (!DecodeWrappedDek(*blob).ok()) {
      return InvalidArgumentError("import line {}: blob is not a wrapped DEK", number);
    }
    ++report.total;
    ASSIGN_OR_RETURN(StoredDek stored, store.CreateIfAbsent(id, *blob));
    if (stored.blob == *blob) {
      // Ours, or an identical one from an earlier run of the same import.
      ++report.written;
    } else {
      return FailedPreconditionError(
          "import line {}: the target already holds a different DEK for \"{}\" ({} imported "
          "before it)",
          number, Printable(id), report.written);
    }
    if (progress) progress(report.written, 0);
  }
  if (in.bad()) return UnavailableError("cannot read the import");
  return report;
}

}  // namespace keywarden::byok
