// The node commands (`keywarden node join|recovery-server|verification-server`) and the
// operator's `keywarden recover` and `keywarden verify` (docs/attestation.md).
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>

namespace keywarden::cli {

// NodeCommands registers its subcommands on the app and runs the one that was parsed.
class NodeCommands {
 public:
  explicit NodeCommands(CLI::App& app);
  ~NodeCommands();
  // Run returns the exit code of the parsed command, or nullopt when none of these was parsed.
  std::optional<int> Run();
  // group returns the parsed `node` command without a subcommand (for help), or null.
  const CLI::App* parsed_group() const;

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
};

}  // namespace keywarden::cli
