// User-managed keys on the command line (docs/byok.md): `keywarden dek recover`, which unwraps
// a stored DEK locally with the KEK provider, without a key service.
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>

namespace keywarden::cli {

// ByokCommands registers its subcommands on the app (under the existing `dek` command) and runs
// the one that was parsed. Constructing it also registers every KEK provider and DEK store this
// build has (byok::RegisterAllProviders), for these commands and for `keywarden serve --kms`.
class ByokCommands {
 public:
  explicit ByokCommands(CLI::App& app);
  ~ByokCommands();
  // Run returns the exit code of the parsed command, or nullopt when none of these was parsed.
  std::optional<int> Run();

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
};

}  // namespace keywarden::cli
