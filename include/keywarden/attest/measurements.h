// Base measurements: the PCR values a node must show, in Constellation's file format
// (docs/formats/attestation.md "Measurements"):
//
//   JSON  {"4": {"expected": "<64 hex digits>", "warnOnly": false}, "15": {...}}
//   YAML  4:
//           expected: "<64 hex digits>"
//           warnOnly: false
//
// Keys are PCR indices 0-23 in canonical decimal; "expected" is a SHA-256 PCR value in hex;
// "warnOnly" (default false, as in Constellation) makes a mismatch a warning instead of a
// failure. Parsing is strict: unknown fields, duplicate keys or fields, other value types,
// Constellation's legacy forms (a bare hex/base64 string per PCR, base64 values, SHA-384
// values), YAML anchors/aliases/tags and multi-document streams are refused with
// INVALID_ARGUMENT naming the PCR and field.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/attest/verify.h"

namespace keywarden::attest {

// kMaxMeasurementIndex is the highest PCR index a measurement may name (PC Client: 24 PCRs).
inline constexpr uint32_t kMaxMeasurementIndex = 23;
// kMaxMeasurementsFileSize bounds the text the parsers accept.
inline constexpr size_t kMaxMeasurementsFileSize = 1 << 20;

// Measurement is the expectation for one PCR.
struct Measurement {
  PcrValue expected{};
  bool warn_only = false;

  friend bool operator==(const Measurement&, const Measurement&) = default;
};

// Measurements maps PCR index to its expectation, ordered by index.
using Measurements = std::map<uint32_t, Measurement>;

// ParseMeasurementsJson parses the JSON form. An empty object is refused (it would accept any
// node).
absl::StatusOr<Measurements> ParseMeasurementsJson(std::string_view text);
// ParseMeasurementsYaml parses the YAML form (YAML 1.1/1.2 block or flow mapping; booleans
// true/True/TRUE/false/False/FALSE as plain scalars; keys and hex values plain or quoted).
absl::StatusOr<Measurements> ParseMeasurementsYaml(std::string_view text);
// ParseMeasurements parses JSON when the first non-blank character is '{' and YAML otherwise.
absl::StatusOr<Measurements> ParseMeasurements(std::string_view text);

// MeasurementsToJson writes the JSON form: one key per PCR in ascending numeric order,
// two-space indentation, lower-case hex, a final newline. ParseMeasurementsJson reads it back.
std::string MeasurementsToJson(const Measurements& measurements);
// MeasurementsToYaml writes the YAML form (hex values quoted), ascending order.
std::string MeasurementsToYaml(const Measurements& measurements);

// MeasurementsFromPcrs makes enforced measurements of `pcrs`, index i for pcrs[i]
// (at most 24 values).
Measurements MeasurementsFromPcrs(std::span<const PcrValue> pcrs);

// ToJson is MeasurementsToJson(MeasurementsFromPcrs(pcrs)): what `keywarden measurements read`
// prints for a TPM's PCRs 0-23.
std::string ToJson(std::span<const PcrValue> pcrs);

// PcrMismatch is one PCR whose value differs from its measurement.
struct PcrMismatch {
  uint32_t index = 0;
  PcrValue expected{};
  // actual is empty when the measured index was not among the PCR values given (e.g. a
  // measurement of PCR 16 against a quote of PCRs 0-15): that counts as a mismatch.
  std::optional<PcrValue> actual;
  bool warn_only = false;
};

// Comparison is the outcome of Compare.
struct Comparison {
  // failures are mismatches of enforced measurements; warnings of warnOnly ones.
  std::vector<PcrMismatch> failures;
  std::vector<PcrMismatch> warnings;
  // ok is true when no enforced measurement mismatched.
  bool ok() const { return failures.empty(); }
};

// Compare checks `pcr_values` (pcr_values[i] is PCR i) against every measurement, in index
// order. PCRs without a measurement are not checked. Pure; comparisons of public values.
Comparison Compare(const Measurements& measurements, std::span<const PcrValue> pcr_values);

}  // namespace keywarden::attest
