// `keywarden kek rotate` and `keywarden dek export|import` (docs/byok.md, "Operations").
#pragma once

#include <CLI/CLI.hpp>
#include <memory>
#include <optional>

namespace keywarden::cli {

// ByokOpsCommands registers its subcommands (after the `dek` command exists) and runs the parsed
// one.
class ByokOpsCommands {
 public:
  explicit ByokOpsCommands(CLI::App& app);
  ~ByokOpsCommands();
  std::optional<int> Run();
  const CLI::App* parsed_group() const;

 private:
  struct Flags;
  std::unique_ptr<Flags> flags_;
};

}  // namespace keywarden::cli
