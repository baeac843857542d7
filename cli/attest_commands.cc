#include "cli/attest_commands.h"

#include <fmt/format.h>

#include <cstdlib>

#include "cli/commands.h"
#include "keywarden/attest/measurements.h"
#include "keywarden/attest/tpm.h"
#include "keywarden/status.h"

namespace keywarden::cli {

int RunMeasurementsRead(const std::string& tcti, const std::string& format) {
  // tpm2-tss logs its own errors to stderr; Keywarden reports them once, in its own words
  // (an explicit TSS2_LOG still wins).
  setenv("TSS2_LOG", "all+NONE", /*overwrite=*/0);
  auto tpm = attest::Tpm::Open(tcti);
  if (!tpm.ok()) return Fail(tpm.status());
  auto pcrs = (*tpm)->ReadPcrs();
  if (!pcrs.ok()) return Fail(pcrs.status());
  const attest::Measurements measurements = attest::MeasurementsFromPcrs(*pcrs);
  const std::string text = format == "yaml" ? attest::MeasurementsToYaml(measurements)
                                            : attest::MeasurementsToJson(measurements);
  fmt::print("{}{}", text, text.empty() || text.back() == '\n' ? "" : "\n");
  return kExitOk;
}

}  // namespace keywarden::cli
