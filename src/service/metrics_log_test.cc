#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "keywarden/service/log.h"
#include "keywarden/service/metrics.h"

namespace keywarden::service {
namespace {

using namespace std::chrono_literals;

TEST(MetricsTest, RendersCountersAndCumulativeHistogram) {
  Metrics m;
  m.RecordRequest(0, 70us);
  m.RecordRequest(0, 3ms);
  m.RecordRequest(3, 10us);
  m.RecordStoreError();
  m.SetStoreUp(false);
  const std::string text = m.Render();
  EXPECT_NE(text.find("keywarden_requests_total{method=\"GetDataKey\",code=\"OK\"} 2\n"),
            std::string::npos);
  EXPECT_NE(
      text.find("keywarden_requests_total{method=\"GetDataKey\",code=\"INVALID_ARGUMENT\"} 1\n"),
      std::string::npos);
  EXPECT_EQ(text.find("UNAVAILABLE"), std::string::npos);  // zero counters are omitted
  EXPECT_NE(text.find("le=\"5e-05\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("le=\"0.0001\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("le=\"0.005\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("le=\"+Inf\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("keywarden_request_duration_seconds_count{method=\"GetDataKey\"} 3\n"),
            std::string::npos);
  EXPECT_NE(text.find("keywarden_store_errors_total 1\n"), std::string::npos);
  EXPECT_NE(text.find("keywarden_store_up 0\n"), std::string::npos);
}

TEST(LogFormatTest, TextQuotesAndEscapes) {
  EXPECT_EQ(Logger::Format(LogFormat::kText, "serving", {{"listen", "127.0.0.1:9000"}}),
            "serving listen=127.0.0.1:9000");
  EXPECT_EQ(Logger::Format(LogFormat::kText, "x", {{"error", "a b \"c\""}}),
            "x error=\"a b \\\"c\\\"\"");
  const std::string line = Logger::Format(LogFormat::kText, "x", {{"id", "a\nb\x1b"}});
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line.find('\x1b'), std::string::npos);
}

TEST(LogFormatTest, JsonIsOneValidObject) {
  const std::string payload =
      Logger::Format(LogFormat::kJson, "store \"down\"", {{"error", "a\nb"}, {"n", "3"}});
  auto doc = nlohmann::json::parse("{" + payload + "}", nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << payload;
  EXPECT_EQ(doc["msg"], "store \"down\"");
  EXPECT_EQ(doc["error"], "a\nb");
  EXPECT_EQ(payload.find('\n'), std::string::npos);
}

}  // namespace
}  // namespace keywarden::service
