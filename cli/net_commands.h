// The network commands (`keywarden net agent|status|remove`, docs/network.md "Commands").
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>

namespace keywarden::cli {

// NetCommands registers its subcommands on the app and runs the one that was parsed.
class NetCommands {
 public:
  explicit NetCommands(CLI::App& app);
  ~NetCommands();
  // Run returns the exit code of the parsed command, or nullopt when none of these was parsed.
  std::optional<int> Run();
  // parsed_group returns the parsed `net` command without a subcommand (for help), or null.
  const CLI::App* parsed_group() const;

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
};

}  // namespace keywarden::cli
