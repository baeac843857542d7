// Join service throughput (issue 5): verified joins per second that `keywarden serve`'s join
// service sustains with many concurrent joining clients, each join the full path — a fresh aTLS
// connection (TLS 1.3 handshake, both sides' per-connection keys and certificates), the client's
// TPM quote checked (AK, signature, nonce and TLS-key binding, PCRs against the base
// measurements, PCR 15), the EK certificate chain verified against the CA bundle, two key
// derivations, sealing to the TPM (software MakeCredential: RSA-OAEP under the EK, AES-GCM) and
// a durable audit record — and the cost of each part.
//
//   build-*/keywarden_join_bench [--connections 48] [--seconds 10]
//                                [--swtpms 4] [--swtpm-seconds 10] [google-benchmark flags]
//   (scripts/bench-join runs it; `make bench-join`)
//
// Phases, all in one run:
//   1. software quoter: a swtpm is started once for its EK certificate, EK public area, an AK
//      template and a real quote; clients then quote in software with an ECDSA P-256 key
//      presented as the AK, marshaling TPMS_ATTEST / TPMT_SIGNATURE / TPM2B_PUBLIC with tss2-mu
//      from the real TPM's structures (only extraData and the AK's point change). The server
//      cannot tell: it runs every check. A swtpm does a few hundred quotes/s, so this is the
//      figure that measures the server.
//   2. real swtpm: SWTPMS swtpm instances quote for real (two client threads per TPM).
//   3. google-benchmark microbenchmarks of each server-side part (CPU time of this process).
// The server is the real `keywarden serve` binary (a child process); its CPU time comes from
// /proc/PID/stat over the measurement window.
#include <benchmark/benchmark.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_tpm2_types.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "attest.pb.h"
#include "keywarden/attest/measurements.h"
#include "keywarden/attest/release.h"
#include "keywarden/attest/tpm.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/attest/verify.h"
#include "keywarden/crypto/asymmetric.h"
#include "keywarden/crypto/atls.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/x509.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/service/audit.h"
#include "keywarden/service/join.h"
#include "keywarden/status.h"
#include "tests/service_process.h"
#include "tests/subprocess.h"
#include "tests/swtpm.h"

namespace keywarden {
namespace {

using Bytes = std::vector<uint8_t>;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr char kUuid[] = "0b1c2d3e-aaaa-4000-8000-00000000abcd";

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "join_bench: %s\n", what.c_str());
  std::_Exit(1);
}
template <typename T>
T Must(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(std::string(what) + ": " + std::string(v.status().message()));
  return *std::move(v);
}
void Must(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + std::string(s.message()));
}
std::string Str(std::span<const uint8_t> b) { return std::string(b.begin(), b.end()); }

// TpmMaterial is what one real swtpm gives the software quoter.
struct TpmMaterial {
  Bytes ek_certificate, ek_public, ak_public_template;
  attest::PcrBank pcrs;
  TPMS_ATTEST attest_template{};
};

// SoftwareQuoter issues version-1 documents exactly as TpmIssuer does, with a software AK.
class SoftwareQuoter final : public crypto::AttestationIssuer {
 public:
  explicit SoftwareQuoter(const TpmMaterial& m)
      : material_(m), key_(Must(crypto::EcdsaP256PrivateKey::Generate(), "AK key")) {
    TPM2B_PUBLIC pub{};
    size_t offset = 0;
    if (Tss2_MU_TPM2B_PUBLIC_Unmarshal(m.ak_public_template.data(), m.ak_public_template.size(),
                                       &offset, &pub) != TSS2_RC_SUCCESS) {
      Die("AK public template does not unmarshal");
    }
    auto& point = pub.publicArea.unique.ecc;
    point.x.size = point.y.size = 32;
    std::memcpy(point.x.buffer, key_.public_key().x.data(), 32);
    std::memcpy(point.y.buffer, key_.public_key().y.data(), 32);
    uint8_t buffer[sizeof(TPM2B_PUBLIC)];
    offset = 0;
    if (Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, buffer, sizeof(buffer), &offset) != TSS2_RC_SUCCESS) {
      Die("AK public does not marshal");
    }
    ak_public_.assign(buffer, buffer + offset);
  }

  absl::StatusOr<std::string> Issue(std::span<const uint8_t> nonce,
                                    std::span<const uint8_t> tls_key_hash) override {
    ASSIGN_OR_RETURN(auto qualifying, attest::QuoteQualifyingData(nonce, tls_key_hash));
    TPMS_ATTEST a = material_.attest_template;
    a.extraData.size = static_cast<UINT16>(qualifying.size());
    std::memcpy(a.extraData.buffer, qualifying.data(), qualifying.size());
    uint8_t attest[sizeof(TPMS_ATTEST)];
    size_t attest_size = 0;
    if (Tss2_MU_TPMS_ATTEST_Marshal(&a, attest, sizeof(attest), &attest_size) != TSS2_RC_SUCCESS) {
      return InternalError("TPMS_ATTEST marshal");
    }
    ASSIGN_OR_RETURN(crypto::EcdsaSignature sig,
                     key_.Sign(std::span<const uint8_t>(attest, attest_size)));
    TPMT_SIGNATURE s{};
    s.sigAlg = TPM2_ALG_ECDSA;
    s.signature.ecdsa.hash = TPM2_ALG_SHA256;
    s.signature.ecdsa.signatureR.size = static_cast<UINT16>(sig.r.size());
    std::memcpy(s.signature.ecdsa.signatureR.buffer, sig.r.data(), sig.r.size());
    s.signature.ecdsa.signatureS.size = static_cast<UINT16>(sig.s.size());
    std::memcpy(s.signature.ecdsa.signatureS.buffer, sig.s.data(), sig.s.size());
    uint8_t signature[sizeof(TPMT_SIGNATURE)];
    size_t signature_size = 0;
    if (Tss2_MU_TPMT_SIGNATURE_Marshal(&s, signature, sizeof(signature), &signature_size) !=
        TSS2_RC_SUCCESS) {
      return InternalError("TPMT_SIGNATURE marshal");
    }
    attest::AttestationDocument doc;
    doc.set_version(attest::kDocumentVersion);
    doc.set_quote_attest(std::string(reinterpret_cast<char*>(attest), attest_size));
    doc.set_quote_signature(std::string(reinterpret_cast<char*>(signature), signature_size));
    for (size_t i = 0; i < attest::kQuotedPcrCount; ++i) doc.add_pcrs(Str(material_.pcrs[i]));
    doc.set_ak_public(Str(ak_public_));
    doc.set_ek_certificate(Str(material_.ek_certificate));
    doc.set_ek_public(Str(material_.ek_public));
    return doc.SerializeAsString();
  }

 private:
  const TpmMaterial& material_;
  crypto::EcdsaP256PrivateKey key_;
  Bytes ak_public_;
};

// Env is prepared once in main() and used by the microbenchmarks.
struct Env {
  std::string bundle;
  attest::Measurements measurements;
  TpmMaterial material;
  std::unique_ptr<SoftwareQuoter> quoter;
  std::string document;  // a software document for (nonce, key_hash)
  Bytes nonce = Bytes(32, 0x17), key_hash = Bytes(32, 0x42);
  std::unique_ptr<keys::Kek> kek;
  std::filesystem::path audit_dir;
};
Env* env = nullptr;

void BM_ClientSoftwareQuote(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(env->quoter->Issue(env->nonce, env->key_hash));
}
BENCHMARK(BM_ClientSoftwareQuote);

// BM_CheckDocument: the whole document check as TpmValidator runs it (CA bundle parsed once;
// the EK chain fully verified on every call).
void BM_CheckDocument(benchmark::State& state) {
  attest::Pcr15Rule rule;
  const auto m = service::PrepareJoinMeasurements(env->measurements);
  auto store = Must(crypto::CaStore::FromPem(env->bundle), "CaStore");
  for (auto _ : state) {
    auto checked = attest::CheckDocument(env->document, env->nonce, env->key_hash, *store, m, rule);
    if (!checked.ok()) Die(std::string(checked.status().message()));
  }
}
BENCHMARK(BM_CheckDocument);

void BM_VerifyEkCertificate(benchmark::State& state) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        attest::VerifyEkCertificate(env->material.ek_certificate, env->bundle));
  }
}
BENCHMARK(BM_VerifyEkCertificate);

// BM_VerifyEkCertificateCaStore: the same full path validation against the bundle parsed once
// (what TpmValidator does on every join).
void BM_VerifyEkCertificateCaStore(benchmark::State& state) {
  auto store = Must(crypto::CaStore::FromPem(env->bundle), "CaStore");
  for (auto _ : state) {
    auto ek = attest::VerifyEkCertificate(env->material.ek_certificate, *store);
    if (!ek.ok()) Die(std::string(ek.status().message()));
  }
}
BENCHMARK(BM_VerifyEkCertificateCaStore);

void BM_QuoteVerification(benchmark::State& state) {
  attest::AttestationDocument doc;
  doc.ParseFromString(env->document);
  const Bytes ak_public(doc.ak_public().begin(), doc.ak_public().end());
  const Bytes attest(doc.quote_attest().begin(), doc.quote_attest().end());
  const Bytes sig(doc.quote_signature().begin(), doc.quote_signature().end());
  const auto pcrs = std::span<const attest::PcrValue>(env->material.pcrs).first(16);
  auto qualifying = *attest::QuoteQualifyingData(env->nonce, env->key_hash);
  for (auto _ : state) {
    auto ak = attest::ParseAkPublic(ak_public);
    auto q = attest::VerifyQuote(*ak, attest, sig, qualifying, pcrs);
    if (!q.ok()) Die(std::string(q.status().message()));
  }
}
BENCHMARK(BM_QuoteVerification);

void BM_ParseDocumentAndEkPublic(benchmark::State& state) {
  for (auto _ : state) {
    attest::AttestationDocument doc;
    doc.ParseFromString(env->document);
    auto ek = attest::ParseEkPublic(std::span<const uint8_t>(
        reinterpret_cast<const uint8_t*>(doc.ek_public().data()), doc.ek_public().size()));
    benchmark::DoNotOptimize(ek);
  }
}
BENCHMARK(BM_ParseDocumentAndEkPublic);

void BM_KeyDerivation(benchmark::State& state) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(env->kek->DeriveDek(kUuid, 32));
    benchmark::DoNotOptimize(env->kek->DeriveDek("measurementSecret", 32));
  }
}
BENCHMARK(BM_KeyDerivation);

void BM_SealForTpm(benchmark::State& state) {
  auto peer = Must(attest::PeerTpmFromDocument(env->document), "PeerTpmFromDocument");
  attest::NodeSecrets secrets{Must(crypto::RandomSecret(32), "rand"),
                              Must(crypto::RandomSecret(32), "rand")};
  auto plaintext = Must(attest::EncodeNodeSecrets(secrets), "encode");
  const Bytes salt(32, 1);
  for (auto _ : state) {
    attest::SealedRelease out;
    Must(attest::SealForTpm(peer, attest::kPurposeJoin, attest::ReleaseContext(kUuid, salt),
                            plaintext, &out),
         "SealForTpm");
  }
}
BENCHMARK(BM_SealForTpm);

void BM_MakeCredential(benchmark::State& state) {
  auto peer = Must(attest::PeerTpmFromDocument(env->document), "PeerTpmFromDocument");
  auto secret = Must(crypto::RandomSecret(32), "rand");
  for (auto _ : state)
    benchmark::DoNotOptimize(attest::MakeCredential(peer.ek, peer.ak_name, secret));
}
BENCHMARK(BM_MakeCredential);

// BM_AuditAppend: one durable record (write + fdatasync), N threads appending at once (group
// commit shares one fdatasync among the records waiting for it). Real time per record.
void BM_AuditAppend(benchmark::State& state) {
  static std::unique_ptr<service::AuditLog> log;
  if (state.thread_index() == 0) {
    const auto path = env->audit_dir / ("audit-" + std::to_string(state.threads()) + ".log");
    std::filesystem::remove(path);
    log = Must(service::AuditLog::Open(path), "AuditLog::Open");
  }
  service::AuditRecord record{"join",
                              std::string(64, 'a'),
                              kUuid,
                              true,
                              "attestation verified; state-disk key and measurementSecret "
                              "sealed to the node's TPM",
                              "127.0.0.1:40000"};
  for (auto _ : state) Must(log->Append(record), "Append");
  if (state.thread_index() == 0) state.counters["records"] = 0;
}
BENCHMARK(BM_AuditAppend)->Threads(1)->Threads(16)->UseRealTime();

// BM_AtlsJoinHandshake: one full aTLS connection in join mode in this process (client: fresh
// key, certificate, software quote; server: fresh key and certificate, CertificateVerify,
// the full document check), then one tiny call. Both sides' CPU, one connection at a time.
void BM_AtlsJoinHandshake(benchmark::State& state) {
  crypto::AtlsServerOptions so;
  so.client_validator = std::make_shared<attest::TpmValidator>(
      env->bundle, service::PrepareJoinMeasurements(env->measurements), attest::Pcr15Rule{});
  so.worker_threads = 1;
  auto server = Must(
      crypto::AtlsServer::Start(so,
                                [](std::string_view, std::string_view, const crypto::PeerInfo&)
                                    -> absl::StatusOr<std::string> { return std::string("ok"); }),
      "AtlsServer");
  crypto::AtlsClientOptions co;
  co.issuer = std::make_shared<SoftwareQuoter>(env->material);
  co.accept_unattested_server = true;
  auto client = Must(crypto::AtlsClient::New(co), "AtlsClient");
  for (auto _ : state) Must(client->Call(server->endpoint(), "x", "", 10s), "call");
}
BENCHMARK(BM_AtlsJoinHandshake)->Unit(benchmark::kMicrosecond);

// ---- load phases against the real `keywarden serve` ----

clock_t CpuTicks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), {});
  const size_t close = text.rfind(')');
  std::istringstream fields(text.substr(close + 2));
  std::string f;
  long utime = 0, stime = 0;
  for (int i = 1; i <= 13 && fields >> f; ++i) {
    if (i == 12) utime = std::stol(f);
    if (i == 13) stime = std::stol(f);
  }
  return utime + stime;
}
double ProcessCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct LoadResult {
  uint64_t ok = 0, failed = 0;
  double seconds = 0, server_cpu_s = 0, client_cpu_s = 0;
  std::string first_error;
};

// RunLoad runs `threads` clients, each joining over a fresh connection in a loop, for `seconds`.
LoadResult RunLoad(const std::string& endpoint, pid_t server_pid,
                   const std::vector<std::shared_ptr<crypto::AttestationIssuer>>& issuers,
                   int threads, double seconds) {
  std::vector<std::unique_ptr<crypto::AtlsClient>> clients;
  for (const auto& issuer : issuers) {
    crypto::AtlsClientOptions co;
    co.issuer = issuer;
    co.accept_unattested_server = true;
    clients.push_back(Must(crypto::AtlsClient::New(co), "AtlsClient"));
  }
  attest::JoinTicketRequest request;
  request.set_disk_uuid(kUuid);
  const std::string body = request.SerializeAsString();
  std::atomic<bool> measuring{false}, stop{false};
  std::atomic<uint64_t> ok{0}, failed{0};
  std::mutex mu;
  LoadResult result;
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      const auto& client = clients[t % clients.size()];
      while (!stop.load()) {
        auto reply = client->Call(endpoint, service::kIssueJoinTicketMethod, body, 30s);
        if (!measuring.load()) continue;
        if (reply.ok()) {
          ok.fetch_add(1);
        } else {
          failed.fetch_add(1);
          std::lock_guard<std::mutex> lock(mu);
          if (result.first_error.empty())
            result.first_error = std::string(reply.status().message());
        }
      }
    });
  }
  std::this_thread::sleep_for(1s);  // warm-up: connections in flight, caches warm
  const clock_t ticks0 = CpuTicks(server_pid);
  const double client0 = ProcessCpuSeconds();
  const auto start = Clock::now();
  measuring = true;
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  measuring = false;
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  result.server_cpu_s = double(CpuTicks(server_pid) - ticks0) / sysconf(_SC_CLK_TCK);
  result.client_cpu_s = ProcessCpuSeconds() - client0;
  stop = true;
  for (auto& t : pool) t.join();
  result.ok = ok.load();
  result.failed = failed.load();
  return result;
}

void Report(const char* label, const LoadResult& r, int threads) {
  const double rate = r.ok / r.seconds;
  std::printf("| %s | %d | %.1f | %llu | %llu | **%.0f** | %.0f | %.0f | %.2f |\n", label, threads,
              r.seconds, static_cast<unsigned long long>(r.ok),
              static_cast<unsigned long long>(r.failed), rate,
              r.ok ? r.server_cpu_s / r.ok * 1e6 : 0.0, r.ok ? r.client_cpu_s / r.ok * 1e6 : 0.0,
              rate / 1000.0);
  if (!r.first_error.empty()) std::printf("\nfirst error: %s\n\n", r.first_error.c_str());
  std::fflush(stdout);
}

}  // namespace
}  // namespace keywarden

int main(int argc, char** argv) {
  using namespace keywarden;
  const std::string binary = KEYWARDEN_BINARY;  // the `keywarden` built beside this bench
  int connections = 48, swtpms = 4;
  double seconds = 10, swtpm_seconds = 10;
  std::vector<char*> rest = {argv[0]};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value for " + a);
      return argv[++i];
    };
    if (a == "--connections")
      connections = std::stoi(next());
    else if (a == "--seconds")
      seconds = std::stod(next());
    else if (a == "--swtpms")
      swtpms = std::stoi(next());
    else if (a == "--swtpm-seconds")
      swtpm_seconds = std::stod(next());
    else
      rest.push_back(argv[i]);
  }
  int rest_argc = static_cast<int>(rest.size());
  benchmark::Initialize(&rest_argc, rest.data());

  Env e;
  env = &e;
  keywarden::testing::TempDir work("kw-join-bench");
  e.audit_dir = work.path();

  // One swtpm for the EK certificate, EK public, an AK template and a real quote; the other
  // swtpms (phase 2) share its CA.
  auto ca = std::make_shared<keywarden::testing::SwtpmCa>();
  std::vector<std::unique_ptr<keywarden::testing::SwtpmInstance>> tpms;
  tpms.push_back(std::make_unique<keywarden::testing::SwtpmInstance>(ca));
  if (!tpms[0]->Start()) Die("swtpm did not start");
  {
    auto tpm = Must(attest::Tpm::Open(tpms[0]->tcti()), "Tpm::Open");
    e.material.ek_certificate = Must(tpm->ReadEkCertificate(), "ReadEkCertificate");
    e.material.ek_public = Must(tpm->EkPublic(), "EkPublic");
    auto ak = Must(tpm->CreateAk(), "CreateAk");
    e.material.ak_public_template = ak.tpm2b_public;
    e.material.pcrs = Must(tpm->ReadPcrs(), "ReadPcrs");
    const Bytes q(32, 9);
    auto quote = Must(tpm->Quote(q), "Quote");
    size_t offset = 0;
    if (Tss2_MU_TPMS_ATTEST_Unmarshal(quote.attest.data(), quote.attest.size(), &offset,
                                      &e.material.attest_template) != TSS2_RC_SUCCESS) {
      Die("quote does not unmarshal");
    }
  }
  e.bundle = *keywarden::testing::ReadFile(tpms[0]->ca_bundle());
  e.measurements = attest::MeasurementsFromPcrs(
      std::span<const attest::PcrValue>(e.material.pcrs).first(attest::kQuotedPcrCount));
  e.quoter = std::make_unique<SoftwareQuoter>(e.material);
  e.document = Must(e.quoter->Issue(e.nonce, e.key_hash), "software quote");
  Must(attest::CheckDocument(e.document, e.nonce, e.key_hash, e.bundle,
                             service::PrepareJoinMeasurements(e.measurements), attest::Pcr15Rule{})
           .status(),
       "the software document does not verify");

  // The cluster and `keywarden serve` with the join service.
  const auto dir = work.path() / "state";
  auto init = keywarden::testing::Run({binary, "init", "--dir", dir.string()});
  if (!init.ok()) Die("keywarden init failed");
  e.kek = Must(keys::Kek::FromMasterSecret(
                   Must(keys::ReadMasterSecretFile(dir / "mastersecret.json"), "master secret")),
               "Kek");
  const auto measurements_file = work.path() / "measurements.json";
  std::ofstream(measurements_file) << attest::MeasurementsToJson(e.measurements);
  const auto bundle_file = work.path() / "ek-ca.pem";
  std::ofstream(bundle_file) << e.bundle;
  const auto audit_file = work.path() / "audit.log";
  keywarden::testing::ServiceProcess server(
      {"--dir", dir.string(), "--join-listen", "127.0.0.1:0", "--measurements",
       measurements_file.string(), "--ek-ca", bundle_file.string(), "--audit-log",
       audit_file.string()},
      work.path() / "serve.log");
  if (!server.Start()) Die("keywarden serve did not start: " + server.stderr_text());
  std::string endpoint;
  const std::regex served("serving the join service listen=(\\S+)");
  for (int i = 0; i < 200 && endpoint.empty(); ++i) {
    std::smatch m;
    const std::string text = server.stderr_text();
    if (std::regex_search(text, m, served))
      endpoint = m[1];
    else
      std::this_thread::sleep_for(50ms);
  }
  if (endpoint.empty()) Die("no join service line: " + server.stderr_text());

  std::printf(
      "join_bench: %u cores; `keywarden serve` (pid %d) join service on %s; audit log on %s\n\n",
      std::thread::hardware_concurrency(), server.pid(), endpoint.c_str(), work.path().c_str());
  std::printf(
      "| quotes by | client connections | s | joins | failed | joins/s | server CPU µs/join | "
      "client CPU µs/join | / goal (1,000/s) |\n|---|---|---|---|---|---|---|---|---|\n");
  std::fflush(stdout);

  // Phase 1: software quoter, one AK per client thread (as separate nodes would have).
  std::vector<std::shared_ptr<crypto::AttestationIssuer>> soft;
  for (int i = 0; i < connections; ++i)
    soft.push_back(std::make_shared<SoftwareQuoter>(e.material));
  auto r1 = RunLoad(endpoint, server.pid(), soft, connections, seconds);
  Report("software quoter (real EK cert)", r1, connections);

  // Phase 2: real swtpm instances quoting.
  std::vector<std::shared_ptr<crypto::AttestationIssuer>> real;
  for (int i = 0; i < swtpms; ++i) {
    if (i > 0) {
      tpms.push_back(std::make_unique<keywarden::testing::SwtpmInstance>(ca));
      if (!tpms.back()->Start()) Die("swtpm did not start");
    }
    auto tpm = Must(attest::Tpm::Open(tpms[i]->tcti()), "Tpm::Open");
    real.push_back(std::shared_ptr<attest::TpmIssuer>(
        Must(attest::TpmIssuer::New(std::move(tpm)), "TpmIssuer")));
  }
  if (swtpms > 0) {
    auto r2 = RunLoad(endpoint, server.pid(), real, swtpms * 2, swtpm_seconds);
    Report("real swtpm", r2, swtpms * 2);
  }
  std::printf("\n");
  const int exit_code = server.Stop();
  auto records = service::VerifyAuditLog(audit_file);
  std::printf("keywarden serve exited %d; audit log: %s records, chain %s\n\n", exit_code,
              records.ok() ? std::to_string(*records).c_str() : "?",
              records.ok() ? "verifies" : std::string(records.status().message()).c_str());
  std::fflush(stdout);

  // Phase 3: the parts.
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  real.clear();
  tpms.clear();
  return 0;
}
