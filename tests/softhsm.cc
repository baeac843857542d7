#include "tests/softhsm.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include "keywarden/byok/pkcs11.h"

namespace keywarden::testing {

std::string SoftHsm::module() {
  for (const char* path :
       {"/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"}) {
    if (std::filesystem::exists(path)) return path;
  }
  return "/usr/lib/softhsm/libsofthsm2.so";
}

SoftHsm::SoftHsm(std::string label) : dir_("keywarden-softhsm"), label_(std::move(label)) {
  if (dir_.path().empty()) return;
  std::filesystem::create_directories(dir_ / "tokens");
  config_ = dir_.WriteFile("softhsm2.conf", "directories.tokendir = " + (dir_ / "tokens").string() +
                                                "\nobjectstore.backend = file\nlog.level = ERROR\n"
                                                "slots.removable = false\n");
  setenv("SOFTHSM2_CONF", config_.c_str(), 1);
  const RunResult init = Run({"softhsm2-util", "--init-token", "--free", "--label", label_,
                              "--so-pin", kSoPin, "--pin", kPin});
  ok_ = init.ok();
  EXPECT_TRUE(ok_) << "softhsm2-util --init-token failed (is softhsm2 installed?)\n" << init;
}

std::string SoftHsm::KmsUri(const std::string& key, const std::string& pin) const {
  return "kms://pkcs11?module=" + module() + "&token=" + label_ + "&pin=" + pin + "&key=" + key;
}

absl::Status SoftHsm::CreateAesKey(const std::string& key) const {
  byok::Pkcs11Config config;
  config.module = module();
  config.token = label_;
  config.pin = SecretBytes(
      std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(kPin), sizeof(kPin) - 1));
  config.key = key;
  return byok::CreatePkcs11AesKey(config, 32);
}

RunResult SoftHsm::DeleteToken() const {
  return Run({"softhsm2-util", "--delete-token", "--token", label_});
}

}  // namespace keywarden::testing
