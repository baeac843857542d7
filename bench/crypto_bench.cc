// Crypto core benchmarks (Google Benchmark). scripts/bench runs these next to their ceilings
// (`openssl speed`) and reports the ratios; docs/performance.md records the figures.
//
//   BM_DeriveDek             DEK(id, 32) from a cached KEK: one HKDF-Expand (issue goal: at
//                            least 0.5 of the HMAC-SHA256 ceiling on 64-byte messages)
//   BM_HkdfOneShot           the same DEK through EVP_KDF with extract, for contrast
//   BM_HmacSha256_64         Keywarden's HMAC-SHA256 on 64 bytes, the in-process ceiling
//   BM_XtsEncrypt4096        aes-xts-plain64 encryption of 4096-byte sectors (goal: at least
//                            0.8 of `openssl speed -evp aes-256-xts -bytes 4096`)
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "keywarden/crypto/hkdf.h"
#include "keywarden/crypto/hmac.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/xts.h"
#include "keywarden/keys/hierarchy.h"

namespace keywarden {
namespace {

keys::MasterSecret NewMasterSecret() { return *keys::MasterSecret::Generate(); }

void BM_DeriveDek(benchmark::State& state) {
  auto kek = *keys::Kek::FromMasterSecret(NewMasterSecret());
  const std::string id = "0b1c2d3e-aaaa-4000-8000-00000000abcd";
  for (auto _ : state) {
    auto dek = kek->DeriveDek(id, 32);
    benchmark::DoNotOptimize(dek);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_DeriveDek);

void BM_HkdfOneShot(benchmark::State& state) {
  const auto secret = NewMasterSecret();
  const auto token = InsecureSecretAccess::Get();
  const std::string info = "key-0b1c2d3e-aaaa-4000-8000-00000000abcd";
  const std::span<const uint8_t> info_bytes(reinterpret_cast<const uint8_t*>(info.data()),
                                            info.size());
  for (auto _ : state) {
    auto dek =
        crypto::HkdfSha256(secret.key.Reveal(token), secret.salt.Reveal(token), info_bytes, 32);
    benchmark::DoNotOptimize(dek);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HkdfOneShot);

void BM_HmacSha256_64(benchmark::State& state) {
  auto hmac = *crypto::HmacSha256::New(*crypto::RandomSecret(32));
  std::vector<uint8_t> message(64, 0x5a);
  for (auto _ : state) {
    auto tag = hmac->Compute(message);
    benchmark::DoNotOptimize(tag);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HmacSha256_64);

void BM_XtsEncrypt4096(benchmark::State& state) {
  const size_t sectors = static_cast<size_t>(state.range(0));
  auto cipher = *crypto::XtsSectorCipher::New(*crypto::RandomSecret(64), 4096);
  std::vector<uint8_t> buffer(4096 * sectors, 0x33);
  uint64_t sector = 0;
  for (auto _ : state) {
    auto status = cipher->EncryptSectors(sector, buffer, buffer);
    benchmark::DoNotOptimize(status);
    sector += sectors;
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * buffer.size()));
}
BENCHMARK(BM_XtsEncrypt4096)->Arg(1)->Arg(32);

}  // namespace
}  // namespace keywarden

BENCHMARK_MAIN();
