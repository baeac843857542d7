#include "tests/azurite.h"

#include <chrono>
#include <cstdlib>
#include <vector>

namespace keywarden::testing {

Azurite::Azurite() : dir_("kw-azurite"), port_(ReservedPort::Reserve()) {}

Azurite::~Azurite() { Stop(); }

std::string Azurite::Program() {
  if (const char* env = std::getenv("KEYWARDEN_AZURITE_BLOB"); env != nullptr && *env != '\0') {
    return env;
  }
  const std::filesystem::path installed =
      "/opt/keywarden-test-peers/node_modules/.bin/azurite-blob";
  return std::filesystem::exists(installed) ? installed.string() : "";
}

::testing::AssertionResult Azurite::Start() {
  const std::string program = Program();
  if (program.empty()) return ::testing::AssertionFailure() << "azurite-blob is not installed";
  if (port() == 0) return ::testing::AssertionFailure() << "no port reserved";
  // Node (libuv) binds with SO_REUSEADDR, so azurite can take the reserved port.
  BackgroundOptions options;
  options.log = dir_ / "azurite.log";
  if (auto started =
          server_.Start({program, "--blobHost", "127.0.0.1", "--blobPort", std::to_string(port()),
                         "--location", (dir_ / "data").string(), "--disableTelemetry",
                         "--skipApiVersionCheck", "--loose", "--silent"},
                        options);
      !started) {
    return started;
  }
  return WaitForPort(server_, port(), "azurite-blob", std::chrono::seconds(60));
}

void Azurite::Stop() { server_.Kill(); }

std::string Azurite::endpoint() const {
  return "http://127.0.0.1:" + std::to_string(port()) + "/" + kAccount;
}

std::string Azurite::log() const { return server_.Log(); }

}  // namespace keywarden::testing
