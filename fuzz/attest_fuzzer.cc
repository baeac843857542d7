// Fuzzes the attestation parsers of untrusted bytes (keywarden/attest/verify.h and
// measurements.h). The first input byte picks the parser, the rest is its input:
//   0  ParseAkPublic + ComputeName     (TPM2B_PUBLIC from an attester)
//   1  ParseEkPublic                   (TPM2B_PUBLIC from an attester)
//   2  VerifyQuote                     (next byte n, then n bytes of TPMT_SIGNATURE, then the
//                                       TPMS_ATTEST; checked against a fixed software AK)
//   3  ParseMeasurementsJson           (a measurements file)
//   4  ParseMeasurementsYaml
// Invariants: an accepted AK has a Name equal to ComputeName; a parsed measurements set
// re-serializes to text that parses to the same set.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <string_view>
#include <vector>

#include "keywarden/attest/measurements.h"
#include "keywarden/attest/verify.h"
#include "keywarden/crypto/asymmetric.h"

namespace {

using keywarden::attest::AkPublic;

// FixedAk is a valid AK public area built once (a P-256 point from a generated key), so that
// VerifyQuote gets past its argument checks and exercises the TPMS_ATTEST/TPMT_SIGNATURE
// unmarshaling and the signature check.
const AkPublic& FixedAk() {
  static const AkPublic* ak = [] {
    auto key = keywarden::crypto::EcdsaP256PrivateKey::Generate();
    if (!key.ok()) std::abort();
    // TPM2B_PUBLIC of the Keywarden AK template with this point (see src/attest/tpm_types.h).
    std::vector<uint8_t> pub = {0x00, 0x58,              // size 88
                                0x00, 0x23, 0x00, 0x0b,  // ECC, SHA-256
                                0x00, 0x05, 0x00, 0x72,  // attributes
                                0x00, 0x00,              // authPolicy (empty)
                                0x00, 0x10,              // symmetric NULL
                                0x00, 0x18, 0x00, 0x0b,  // ECDSA, SHA-256
                                0x00, 0x03,              // NIST P-256
                                0x00, 0x10,              // kdf NULL
                                0x00, 0x20};             // x
    pub.insert(pub.end(), key->public_key().x.begin(), key->public_key().x.end());
    pub.insert(pub.end(), {0x00, 0x20});  // y
    pub.insert(pub.end(), key->public_key().y.begin(), key->public_key().y.end());
    auto parsed = keywarden::attest::ParseAkPublic(pub);
    if (!parsed.ok()) std::abort();
    return new AkPublic(*parsed);
  }();
  return *ak;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::span<const uint8_t> input(data + 1, size - 1);
  const std::string_view text(reinterpret_cast<const char*>(input.data()), input.size());
  switch (data[0] % 5) {
    case 0: {
      auto ak = keywarden::attest::ParseAkPublic(input);
      auto name = keywarden::attest::ComputeName(input);
      if (ak.ok() && (!name.ok() || *name != ak->name)) std::abort();
      break;
    }
    case 1: {
      auto ek = keywarden::attest::ParseEkPublic(input);
      if (ek.ok() && ek->modulus.size() != 256) std::abort();
      break;
    }
    case 2: {
      if (input.empty()) break;
      const size_t sig_size = std::min<size_t>(input[0], input.size() - 1);
      const auto signature = input.subspan(1, sig_size);
      const auto attest = input.subspan(1 + sig_size);
      const std::array<uint8_t, 32> nonce{};
      const std::array<keywarden::attest::PcrValue, keywarden::attest::kQuotedPcrCount> pcrs{};
      // A random input never carries a valid signature of the fixed AK.
      if (keywarden::attest::VerifyQuote(FixedAk(), attest, signature, nonce, pcrs).ok()) {
        std::abort();
      }
      break;
    }
    case 3:
    case 4: {
      const bool json = data[0] % 5 == 3;
      auto m = json ? keywarden::attest::ParseMeasurementsJson(text)
                    : keywarden::attest::ParseMeasurementsYaml(text);
      if (m.ok()) {
        auto again = json ? keywarden::attest::ParseMeasurementsJson(
                                keywarden::attest::MeasurementsToJson(*m))
                          : keywarden::attest::ParseMeasurementsYaml(
                                keywarden::attest::MeasurementsToYaml(*m));
        if (!again.ok() || *again != *m) std::abort();
      }
      break;
    }
  }
  return 0;
}
