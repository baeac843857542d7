// Logger: the key service's log lines on stderr, as text or as JSON (one object per line).
// Never pass key bytes: fields are for ids, addresses, fingerprints, counts and errors.
#pragma once

#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace spdlog {
class logger;
}

namespace keywarden::service {

enum class LogFormat { kText, kJson };

class Logger {
 public:
  using Fields = std::initializer_list<std::pair<std::string_view, std::string_view>>;

  // Logger writes to stderr in `format`. Thread-safe.
  explicit Logger(LogFormat format);
  ~Logger();

  void Info(std::string_view message, Fields fields = {}) const;
  void Warn(std::string_view message, Fields fields = {}) const;
  void Error(std::string_view message, Fields fields = {}) const;

  // Format renders one line's payload (without time and level): `message k=v ...` for text
  // (values with spaces or quotes are quoted), `"msg":...,"k":"v"` for JSON. Exposed for tests.
  static std::string Format(LogFormat format, std::string_view message, Fields fields);

 private:
  LogFormat format_;
  std::shared_ptr<spdlog::logger> logger_;
};

}  // namespace keywarden::service
