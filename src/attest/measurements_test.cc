// Tests of the measurements file format (keywarden/attest/measurements.h): Constellation's JSON
// and YAML shapes, strict refusal of everything else, round trips, and Compare.

#include "keywarden/attest/measurements.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "keywarden/crypto/encoding.h"

namespace keywarden::attest {
namespace {

using ::testing::HasSubstr;

const std::string kZero(64, '0');
const std::string kA = "0f35c214608d93c7a6e68ae7359b4a8be5a0e99eea9107ece427c4dea4e439cf";
const std::string kF(64, 'f');

PcrValue Value(const std::string& hex) {
  PcrValue v{};
  auto bytes = crypto::HexDecode(hex);
  EXPECT_TRUE(bytes.ok());
  std::copy(bytes->begin(), bytes->end(), v.begin());
  return v;
}

TEST(ParseMeasurementsJson, ReadsConstellationsFormat) {
  const std::string json = R"({
    "0": {"expected": ")" + kA +
                           R"(", "warnOnly": false},
    "11": {"expected": ")" +
                           kZero + R"(", "warnOnly": true},
    "15": {"expected": ")" +
                           kZero + R"("}
  })";
  auto m = ParseMeasurementsJson(json);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 3u);
  EXPECT_EQ(m->at(0), (Measurement{Value(kA), false}));
  EXPECT_EQ(m->at(11), (Measurement{Value(kZero), true}));
  EXPECT_FALSE(m->at(15).warn_only);  // warnOnly defaults to false, as in Constellation
  // Upper-case hex is hex.
  std::string upper = kA;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  auto u = ParseMeasurementsJson(R"({"4": {"expected": ")" + upper + R"("}})");
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->at(4).expected, Value(kA));
}

TEST(ParseMeasurementsYaml, ReadsBlockAndFlowStyles) {
  // As Constellation's config and fetch-measurements write it: integer keys, bare hex.
  const std::string yaml =
      "# measurements\n"
      "0:\n"
      "  expected: " +
      kA +
      "\n"
      "  warnOnly: false\n"
      "\"11\":\n"
      "  expected: \"" +
      kZero +
      "\"\n"
      "  warnOnly: True\n"
      "15: {expected: '" +
      kZero + "'}\n";
  auto m = ParseMeasurementsYaml(yaml);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 3u);
  EXPECT_EQ(m->at(0), (Measurement{Value(kA), false}));
  EXPECT_EQ(m->at(11), (Measurement{Value(kZero), true}));
  EXPECT_EQ(m->at(15), (Measurement{Value(kZero), false}));
  // A JSON document is YAML too.
  auto j = ParseMeasurementsYaml(R"({"4": {"expected": ")" + kF + R"(", "warnOnly": true}})");
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_TRUE(j->at(4).warn_only);
  // Explicit document markers are fine.
  EXPECT_TRUE(ParseMeasurementsYaml("---\n4:\n  expected: " + kF + "\n...\n").ok());
}

TEST(ParseMeasurements, DetectsTheFormat) {
  auto json = ParseMeasurements("  \n{\"1\": {\"expected\": \"" + kF + "\"}}");
  ASSERT_TRUE(json.ok()) << json.status();
  auto yaml = ParseMeasurements("1:\n  expected: " + kF + "\n");
  ASSERT_TRUE(yaml.ok()) << yaml.status();
  EXPECT_EQ(*json, *yaml);
  // A JSON syntax error is reported as JSON, not retried as YAML.
  EXPECT_THAT(std::string(ParseMeasurements("{\"1\": ").status().message()), HasSubstr("JSON"));
}

TEST(Measurements, RoundTripsThroughBothFormats) {
  std::array<PcrValue, 24> pcrs{};
  for (size_t i = 0; i < pcrs.size(); ++i) pcrs[i].fill(static_cast<uint8_t>(i * 11));
  Measurements m = MeasurementsFromPcrs(pcrs);
  ASSERT_EQ(m.size(), 24u);
  m[3].warn_only = true;
  auto from_json = ParseMeasurementsJson(MeasurementsToJson(m));
  ASSERT_TRUE(from_json.ok()) << from_json.status();
  EXPECT_EQ(*from_json, m);
  auto from_yaml = ParseMeasurementsYaml(MeasurementsToYaml(m));
  ASSERT_TRUE(from_yaml.ok()) << from_yaml.status();
  EXPECT_EQ(*from_yaml, m);
  // ToJson: numeric order ("2" before "10"), enforced, lower-case hex, final newline.
  const std::string json = ToJson(pcrs);
  EXPECT_LT(json.find("\"2\":"), json.find("\"10\":"));
  EXPECT_EQ(json.find("true"), std::string::npos);
  EXPECT_EQ(json.back(), '\n');
  EXPECT_THAT(json, HasSubstr("  \"1\": {\n    \"expected\": \"" + crypto::HexEncode(pcrs[1]) +
                              "\",\n    \"warnOnly\": false\n  },\n"));
}

struct BadCase {
  const char* what;
  std::string text;
  const char* fragment;
};

TEST(ParseMeasurementsJson, RefusesEverythingElse) {
  const std::string e = "{\"expected\": \"" + kZero + "\"}";
  const std::vector<BadCase> cases = {
      {"array", "[]", "must be a JSON object"},
      {"string document", "\"x\"", "must be a JSON object"},
      {"empty object", "{}", "no PCR"},
      {"empty text", "", "not valid JSON"},
      {"truncated", "{\"1\": " + e, "not valid JSON"},
      {"trailing", "{\"1\": " + e + "} x", "not valid JSON"},
      {"legacy string", "{\"1\": \"" + kZero + "\"}", "legacy"},
      {"unknown field", "{\"1\": {\"expected\": \"" + kZero + "\", \"warn\": true}}",
       "unknown field"},
      {"missing expected", "{\"1\": {\"warnOnly\": true}}", "missing"},
      {"duplicate PCR", "{\"1\": " + e + ", \"1\": " + e + "}", "twice"},
      {"duplicate field",
       "{\"1\": {\"expected\": \"" + kZero + "\", \"expected\": \"" + kZero + "\"}}", "twice"},
      {"leading zero", "{\"01\": " + e + "}", "not a PCR index"},
      {"sign", "{\"+1\": " + e + "}", "not a PCR index"},
      {"negative", "{\"-1\": " + e + "}", "not a PCR index"},
      {"too large", "{\"24\": " + e + "}", "above 23"},
      {"word", "{\"pcr1\": " + e + "}", "not a PCR index"},
      {"SHA-384 value", "{\"1\": {\"expected\": \"" + std::string(96, '0') + "\"}}",
       "64 hex digits"},
      {"base64 value", "{\"1\": {\"expected\": \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"}}",
       "64 hex digits"},
      {"not hex", "{\"1\": {\"expected\": \"" + std::string(63, '0') + "g\"}}", "not hex"},
      {"number", "{\"1\": {\"expected\": 0}}", "must be a string"},
      {"warnOnly string", "{\"1\": {\"expected\": \"" + kZero + "\", \"warnOnly\": \"true\"}}",
       "must be a boolean"},
      {"warnOnly number", "{\"1\": {\"expected\": \"" + kZero + "\", \"warnOnly\": 1}}",
       "must be a boolean"},
      {"nested", "{\"1\": {\"expected\": {\"x\": 1}}}", "must be a string"},
      {"metadata wrapper", "{\"csp\": \"QEMU\", \"measurements\": {}}", "not a PCR index"},
  };
  for (const BadCase& c : cases) {
    auto m = ParseMeasurementsJson(c.text);
    ASSERT_FALSE(m.ok()) << c.what;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.fragment)) << c.what;
  }
}

TEST(ParseMeasurementsYaml, RefusesEverythingElse) {
  const std::string e = "\n  expected: " + kZero + "\n";
  const std::vector<BadCase> cases = {
      {"sequence", "- 1\n- 2\n", "must be a mapping"},
      {"scalar", "hello\n", "must be a mapping"},
      {"empty", "", "no PCR"},
      {"only comments", "# nothing\n", "no PCR"},
      {"empty mapping", "{}\n", "no PCR"},
      {"legacy string", "1: " + kZero + "\n", "legacy"},
      {"unknown field", "1:" + e + "  warn: true\n", "unknown field"},
      {"missing expected", "1:\n  warnOnly: true\n", "missing"},
      {"duplicate PCR", "1:" + e + "1:" + e, "twice"},
      {"leading zero", "01:" + e, "not a PCR index"},
      {"too large", "24:" + e, "above 23"},
      {"quoted bool", "1:" + e + "  warnOnly: \"true\"\n", "true or false"},
      {"yes", "1:" + e + "  warnOnly: yes\n", "true or false"},
      {"expected sequence", "1:\n  expected: [1, 2]\n", "must be a scalar"},
      {"alias", "1: &x\n  expected: " + kZero + "\n2: *x\n", "anchors"},
      {"tag", "1:\n  expected: !!str " + kZero + "\n", "anchors"},
      {"two documents", "1:" + e + "---\n2:" + e, "one YAML document"},
      {"syntax", "\"1: x\n", "not valid YAML"},
      {"bad indentation", "1:\n  expected: " + kZero + "\n warnOnly: true\n", "not valid YAML"},
      {"SHA-384", "1:\n  expected: " + std::string(96, 'a') + "\n", "64 hex digits"},
  };
  for (const BadCase& c : cases) {
    auto m = ParseMeasurementsYaml(c.text);
    ASSERT_FALSE(m.ok()) << c.what;
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.fragment))
        << c.what << ": " << m.status();
  }
}

TEST(ParseMeasurements, RefusesOversizedInput) {
  const std::string big(kMaxMeasurementsFileSize + 1, ' ');
  EXPECT_EQ(ParseMeasurementsJson(big).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMeasurementsYaml(big).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Compare, SplitsFailuresAndWarnings) {
  std::array<PcrValue, 16> pcrs{};
  pcrs[4] = Value(kA);
  Measurements m;
  m[0] = {Value(kZero), false};   // matches
  m[4] = {Value(kZero), false};   // enforced mismatch
  m[9] = {Value(kF), true};       // warnOnly mismatch
  m[16] = {Value(kZero), false};  // not in the quoted PCRs
  const Comparison c = Compare(m, pcrs);
  EXPECT_FALSE(c.ok());
  ASSERT_EQ(c.failures.size(), 2u);
  EXPECT_EQ(c.failures[0].index, 4u);
  EXPECT_EQ(c.failures[0].expected, Value(kZero));
  ASSERT_TRUE(c.failures[0].actual.has_value());
  EXPECT_EQ(*c.failures[0].actual, Value(kA));
  EXPECT_EQ(c.failures[1].index, 16u);
  EXPECT_FALSE(c.failures[1].actual.has_value());
  ASSERT_EQ(c.warnings.size(), 1u);
  EXPECT_EQ(c.warnings[0].index, 9u);
  EXPECT_TRUE(c.warnings[0].warn_only);

  // Only warnOnly mismatches: ok. PCRs without a measurement are not checked.
  Measurements lenient;
  lenient[0] = {Value(kZero), false};
  lenient[9] = {Value(kF), true};
  EXPECT_TRUE(Compare(lenient, pcrs).ok());
  EXPECT_EQ(Compare(lenient, pcrs).warnings.size(), 1u);
  pcrs[9] = Value(kF);
  EXPECT_TRUE(Compare(lenient, pcrs).warnings.empty());
}

}  // namespace
}  // namespace keywarden::attest
