// Costs of the attestation core: TPM operations against a real swtpm (started here, on
// loopback, and stopped at exit) and the verifier's pure functions.
//
//   build-*/keywarden_attest_bench [--benchmark_repetitions=3 ...]
//
// TPM operations are wall-clock times (the work happens in the swtpm process); verifier
// operations are CPU times of this process. swtpm is a software TPM on the same host: a
// discrete hardware TPM is typically 10-100x slower for the TPM side (RSA decryption and ECDSA
// signing on a TPM chip take tens to hundreds of milliseconds); the verifier side does not
// depend on the TPM.

#include <benchmark/benchmark.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "keywarden/attest/tpm.h"
#include "keywarden/attest/verify.h"
#include "keywarden/crypto/random.h"
#include "tests/swtpm.h"

namespace keywarden::attest {
namespace {

using Bytes = std::vector<uint8_t>;

// Fixture state, prepared once in main().
struct Env {
  std::unique_ptr<keywarden::testing::SwtpmInstance> swtpm;
  std::unique_ptr<Tpm> tpm;
  std::string bundle;
  Bytes ek_cert;
  crypto::RsaPublicKey ek;
  AkInfo ak_info;
  AkPublic ak;
  PcrBank pcrs;
  Bytes nonce;
  attest::Quote quote;
  Credential credential;
};
Env* env = nullptr;

void Check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "attest_bench: %s failed\n", what);
    // Stop swtpm (a daemon) before exiting; exit() would skip main's destructors.
    env->tpm.reset();
    env->swtpm.reset();
    std::exit(1);
  }
}

bool Prepare() {
  env->swtpm = std::make_unique<keywarden::testing::SwtpmInstance>();
  if (!env->swtpm->Start()) return false;
  auto tpm = Tpm::Open(env->swtpm->tcti());
  Check(tpm.ok(), "Tpm::Open");
  env->tpm = std::move(tpm).value();
  env->bundle = keywarden::testing::ReadFile(env->swtpm->ca_bundle()).value_or("");
  auto cert = env->tpm->ReadEkCertificate();
  Check(cert.ok(), "ReadEkCertificate");
  env->ek_cert = *cert;
  auto ek = VerifyEkCertificate(env->ek_cert, env->bundle);
  Check(ek.ok(), "VerifyEkCertificate");
  env->ek = *ek;
  auto ak = env->tpm->CreateAk();
  Check(ak.ok(), "CreateAk");
  env->ak_info = *ak;
  env->ak = *ParseAkPublic(ak->tpm2b_public);
  env->pcrs = *env->tpm->ReadPcrs();
  env->nonce = Bytes(32, 0x17);
  auto quote = env->tpm->Quote(env->nonce);
  Check(quote.ok(), "Quote");
  env->quote = *quote;
  auto credential = MakeCredential(env->ek, env->ak.name, *crypto::RandomSecret(32));
  Check(credential.ok(), "MakeCredential");
  env->credential = *credential;
  return true;
}

std::span<const PcrValue> Quoted() {
  return std::span<const PcrValue>(env->pcrs).first(kQuotedPcrCount);
}

// ---- TPM side (swtpm) ----

void BM_TpmQuote(benchmark::State& state) {
  for (auto _ : state) {
    auto quote = env->tpm->Quote(env->nonce);
    Check(quote.ok(), "Quote");
    benchmark::DoNotOptimize(quote);
  }
}
BENCHMARK(BM_TpmQuote)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_TpmActivateCredential(benchmark::State& state) {
  for (auto _ : state) {
    auto secret =
        env->tpm->ActivateCredential(env->credential.blob, env->credential.encrypted_secret);
    Check(secret.ok(), "ActivateCredential");
    benchmark::DoNotOptimize(secret);
  }
}
BENCHMARK(BM_TpmActivateCredential)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_TpmCreateAk(benchmark::State& state) {
  for (auto _ : state) {
    auto ak = env->tpm->CreateAk();
    Check(ak.ok(), "CreateAk");
    benchmark::DoNotOptimize(ak);
  }
  // Leave the benchmark's AK (and credential) consistent for later runs.
  env->ak_info = *env->tpm->CreateAk();
  env->ak = *ParseAkPublic(env->ak_info.tpm2b_public);
  env->credential = *MakeCredential(env->ek, env->ak.name, *crypto::RandomSecret(32));
  env->quote = *env->tpm->Quote(env->nonce);
}
BENCHMARK(BM_TpmCreateAk)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_TpmReadPcrs(benchmark::State& state) {
  for (auto _ : state) {
    auto pcrs = env->tpm->ReadPcrs();
    Check(pcrs.ok(), "ReadPcrs");
    benchmark::DoNotOptimize(pcrs);
  }
}
BENCHMARK(BM_TpmReadPcrs)->UseRealTime()->Unit(benchmark::kMillisecond);

void BM_TpmReadEkCertificate(benchmark::State& state) {
  for (auto _ : state) {
    auto cert = env->tpm->ReadEkCertificate();
    Check(cert.ok(), "ReadEkCertificate");
    benchmark::DoNotOptimize(cert);
  }
}
BENCHMARK(BM_TpmReadEkCertificate)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- verifier side ----

void BM_VerifyQuote(benchmark::State& state) {
  for (auto _ : state) {
    auto info = VerifyQuote(env->ak, env->quote.attest, env->quote.signature, env->nonce, Quoted());
    Check(info.ok(), "VerifyQuote");
    benchmark::DoNotOptimize(info);
  }
}
BENCHMARK(BM_VerifyQuote)->Unit(benchmark::kMicrosecond);

void BM_ParseAkPublic(benchmark::State& state) {
  for (auto _ : state) {
    auto ak = ParseAkPublic(env->ak_info.tpm2b_public);
    Check(ak.ok(), "ParseAkPublic");
    benchmark::DoNotOptimize(ak);
  }
}
BENCHMARK(BM_ParseAkPublic)->Unit(benchmark::kMicrosecond);

void BM_VerifyEkCertificate(benchmark::State& state) {
  for (auto _ : state) {
    auto ek = VerifyEkCertificate(env->ek_cert, env->bundle);
    Check(ek.ok(), "VerifyEkCertificate");
    benchmark::DoNotOptimize(ek);
  }
}
BENCHMARK(BM_VerifyEkCertificate)->Unit(benchmark::kMicrosecond);

void BM_MakeCredential(benchmark::State& state) {
  auto secret = crypto::RandomSecret(32);
  for (auto _ : state) {
    auto credential = MakeCredential(env->ek, env->ak.name, *secret);
    Check(credential.ok(), "MakeCredential");
    benchmark::DoNotOptimize(credential);
  }
}
BENCHMARK(BM_MakeCredential)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace keywarden::attest

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  keywarden::attest::Env env;
  keywarden::attest::env = &env;
  if (!keywarden::attest::Prepare()) {
    std::fprintf(stderr, "attest_bench: cannot start swtpm\n");
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  env.tpm.reset();  // close the connection before swtpm is stopped
  return 0;
}
