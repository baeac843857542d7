#include "cli/byok_ops_commands.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <memory>

#include "cli/commands.h"
#include "keywarden/byok/byok.h"
#include "keywarden/byok/operations.h"
#include "keywarden/status.h"

namespace keywarden::cli {

struct ByokOpsCommands::Flags {
  CLI::App* kek = nullptr;
  CLI::App* rotate = nullptr;
  CLI::App* exporter = nullptr;
  CLI::App* importer = nullptr;
  std::string kms, to, storage, file;
  double timeout_s = 10;

  byok::RemoteOptions Remote() const {
    return byok::RemoteOptions{std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000))};
  }
  // Bar draws "LABEL [#####.....]  42/100 DEKs" on stderr, on a terminal only (like volume
  // format's bar), at most every 100 ms and at the end.
  static byok::EntryProgress Bar(std::string label) {
    if (isatty(STDERR_FILENO) == 0) return nullptr;
    auto last = std::make_shared<std::chrono::steady_clock::time_point>();
    return [label, last](uint64_t done, uint64_t total) {
      const auto now = std::chrono::steady_clock::now();
      if (done != total && now - *last < std::chrono::milliseconds(100)) return;
      *last = now;
      constexpr int kWidth = 30;
      const int filled =
          total == 0 ? kWidth : static_cast<int>(static_cast<double>(done) / total * kWidth);
      fmt::print(stderr, "\r{} [{}{}] {}/{} DEKs", label, std::string(filled, '#'),
                 std::string(kWidth - filled, '.'), done, total);
      if (done == total) fmt::print(stderr, "\n");
      std::fflush(stderr);
    };
  }

  int RunRotate() {
    byok::RegisterAllProviders();
    auto from = byok::OpenKekProvider(kms, Remote());
    if (!from.ok()) return Fail(from.status());
    auto target = byok::OpenKekProvider(to, Remote());
    if (!target.ok()) return Fail(target.status());
    auto store = byok::OpenDekStore(storage, Remote());
    if (!store.ok()) return Fail(store.status());
    auto report = byok::RotateKek(**from, **target, **store, Bar("rewrapping"));
    if (!report.ok()) {
      return Fail(MakeStatus(report.status().code(), "{}; run the same command again to finish",
                             StatusMessage(report.status())));
    }
    fmt::print("rotated {} of {} DEKs from {} to {} ({} were already under the new KEK)\n",
               report->rewrapped, report->total, (*from)->kek_id(), (*target)->kek_id(),
               report->already);
    return kExitOk;
  }

  int RunExport() {
    byok::RegisterAllProviders();
    auto store = byok::OpenDekStore(storage, Remote());
    if (!store.ok()) return Fail(store.status());
    std::ofstream file_out;
    std::ostream* out = &std::cout;
    if (!file.empty() && file != "-") {
      file_out.open(file, std::ios::binary | std::ios::trunc);
      if (!file_out) return Fail(UnavailableError("cannot write {}", file));
      out = &file_out;
    }
    auto report = byok::ExportDeks(**store, *out, Bar("exporting"));
    if (!report.ok()) return Fail(report.status());
    out->flush();
    fmt::print(stderr, "exported {} wrapped DEKs from {}\n", report->written, (*store)->Describe());
    return kExitOk;
  }

  int RunImport() {
    byok::RegisterAllProviders();
    auto store = byok::OpenDekStore(storage, Remote());
    if (!store.ok()) return Fail(store.status());
    std::ifstream file_in;
    std::istream* in = &std::cin;
    if (!file.empty() && file != "-") {
      file_in.open(file, std::ios::binary);
      if (!file_in) return Fail(NotFoundError("cannot read {}", file));
      in = &file_in;
    }
    auto report = byok::ImportDeks(**store, *in);
    if (!report.ok()) return Fail(report.status());
    fmt::print("imported {} wrapped DEKs into {}\n", report->written, (*store)->Describe());
    return kExitOk;
  }
};

ByokOpsCommands::ByokOpsCommands(CLI::App& app) : flags_(std::make_unique<Flags>()) {
  Flags& f = *flags_;
  f.kek = app.add_subcommand("kek", "User-managed key-encryption keys (docs/byok.md).");
  f.kek->require_subcommand(0, 1);
  f.rotate = f.kek->add_subcommand(
      "rotate",
      "Rewrap every DEK in --storage from the KEK --kms to the KEK --to, without changing any "
      "DEK. Each entry is checked (unwrap, rewrap, unwrap again, compare) and replaced with a "
      "compare-and-swap; entries already under the new KEK are skipped, so an interrupted run is "
      "finished by running it again. Progress on a terminal; a count at the end.");
  f.rotate->add_option("--kms", f.kms, "the current KEK: kms://... URI")->required();
  f.rotate->add_option("--to", f.to, "the new KEK: kms://... URI")->required();
  f.rotate->add_option("--storage", f.storage, "the DEK store: storage://... URI")->required();
  f.rotate->add_option("--timeout", f.timeout_s, "seconds per provider or store call")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();

  CLI::App* dek = app.get_subcommand("dek");
  f.exporter = dek->add_subcommand(
      "export",
      "Write every wrapped DEK of --storage as JSON lines {\"id\", \"blob\"} (no plaintext key) "
      "to --out (default stdout): to migrate to another store, with the same KEK.");
  f.exporter->add_option("--storage", f.storage, "storage://... URI")->required();
  f.exporter->add_option("--out", f.file, "file to write (\"-\" = stdout)");
  f.importer = dek->add_subcommand(
      "import",
      "Create every entry of an export in --storage (CreateIfAbsent). An id the store already "
      "holds with a different blob stops the import with an error; rerunning is safe.");
  f.importer->add_option("--storage", f.storage, "storage://... URI")->required();
  f.importer->add_option("--in", f.file, "file to read (\"-\" = stdin)");
  for (CLI::App* cmd : {f.exporter, f.importer}) {
    cmd->add_option("--timeout", f.timeout_s, "seconds per store call")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
  }
}

ByokOpsCommands::~ByokOpsCommands() = default;

std::optional<int> ByokOpsCommands::Run() {
  Flags& f = *flags_;
  if (f.rotate->parsed()) return f.RunRotate();
  if (f.exporter->parsed()) return f.RunExport();
  if (f.importer->parsed()) return f.RunImport();
  return std::nullopt;
}

const CLI::App* ByokOpsCommands::parsed_group() const {
  return flags_->kek->parsed() ? flags_->kek : nullptr;
}

}  // namespace keywarden::cli
