// keywarden_volume_floor: the transport floor for the volume benchmarks (scripts/bench-volume).
// Serves a file's bytes from --offset on through exactly the FUSE server and data path that
// `keywarden volume open --fuse-dir` uses, with the sector codec replaced by a plain copy, so
// fio against it measures everything but the encryption. Not a product feature: it never reads
// a LUKS header and never encrypts.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <cstdio>

#include "keywarden/status.h"
#include "keywarden/volume/data_path.h"
#include "keywarden/volume/fuse_server.h"

int main(int argc, char** argv) {
  using namespace keywarden;
  CLI::App app{"Serve FILE (from --offset on) unencrypted through Keywarden's FUSE data path."};
  std::string target, dir, name = "floor";
  uint64_t offset = volume::kLuks2DataOffset;
  size_t sector = volume::kLuks2SectorSize;
  unsigned threads = 8;
  app.add_option("FILE", target)->required();
  app.add_option("--fuse-dir", dir)->required();
  app.add_option("--name", name)->capture_default_str();
  app.add_option("--offset", offset)->capture_default_str();
  app.add_option("--sector-size", sector)->check(CLI::IsMember({512, 4096}))->capture_default_str();
  app.add_option("--threads", threads)->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  auto path =
      volume::DataPath::Open(target, offset, volume::NewPlaintextCodecForBenchmarks(sector));
  if (!path.ok()) {
    fmt::print(stderr, "error: {}\n", StatusMessage(path.status()));
    return 1;
  }
  volume::FuseServeOptions options;
  options.mount_dir = dir;
  options.file_name = name;
  options.max_threads = threads;
  options.mounted = [&] {
    fmt::print("{}/{}\n", dir, name);
    std::fflush(stdout);
  };
  const absl::Status status = volume::ServeFuse(**path, options);
  if (!status.ok()) {
    fmt::print(stderr, "error: {}\n", StatusMessage(status));
    return 1;
  }
  return 0;
}
