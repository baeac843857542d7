#include "keywarden/service/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "keywarden/status.h"

namespace keywarden::service {
namespace {

std::string TextValue(std::string_view value) {
  const bool plain = !value.empty() && value.find_first_of(" \"=\\") == std::string_view::npos;
  std::string printable = Printable(value, 4096);
  if (plain) return printable;
  std::string quoted = "\"";
  for (char c : printable) {
    if (c == '"') quoted += "\\";
    quoted += c;
  }
  return quoted + "\"";
}

}  // namespace

Logger::Logger(LogFormat format) : format_(format) {
  logger_ = std::make_shared<spdlog::logger>("keywarden",
                                             std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (format == LogFormat::kJson) {
    logger_->set_pattern(R"({"time":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l",%v})",
                         spdlog::pattern_time_type::utc);
  } else {
    logger_->set_pattern("%Y-%m-%dT%H:%M:%S.%fZ %l %v", spdlog::pattern_time_type::utc);
  }
  logger_->flush_on(spdlog::level::info);
}

Logger::~Logger() = default;

std::string Logger::Format(LogFormat format, std::string_view message, Fields fields) {
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json line;
    line["msg"] = std::string(message);
    for (const auto& [key, value] : fields) line[std::string(key)] = std::string(value);
    std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    return text.substr(1, text.size() - 2);  // the pattern supplies the braces
  }
  std::string text = Printable(message, 4096);
  for (const auto& [key, value] : fields) {
    text += fmt::format(" {}={}", key, TextValue(value));
  }
  return text;
}

void Logger::Info(std::string_view message, Fields fields) const {
  logger_->info("{}", Format(format_, message, fields));
}
void Logger::Warn(std::string_view message, Fields fields) const {
  logger_->warn("{}", Format(format_, message, fields));
}
void Logger::Error(std::string_view message, Fields fields) const {
  logger_->error("{}", Format(format_, message, fields));
}

}  // namespace keywarden::service
