// GetDataKey throughput and latency in user-managed mode, per KEK provider, cold (cache off:
// one unwrap at the provider per request) and warm (the default cache), beside managed mode
// (HKDF derivation) in the same run. In process: UserManagedKeys / KeyService as `keywarden
// serve` uses them, without the gRPC layer. Real peers: SoftHSM2 (PKCS#11), PyKMIP (KMIP over
// TLS), moto (AWS KMS, SigV4 checked); stand-ins (no emulators exist) for Azure Key Vault
// (tests/azure_kv_standin.py: Entra ID tokens, RSA-OAEP-256 wrapkey/unwrapkey) and GCP Cloud KMS
// (tests/gcp_kms_standin.py: service-account JWT tokens, AES-GCM encrypt/decrypt with CRC32C).
// The stand-ins are single Python processes, so their cold rows measure the harness, not Azure
// or Google. DEKs in SQLite. docs/performance.md, "User-managed keys".
//
//   keywarden_byok_bench [--threads 8] [--seconds 3] [--ids 256]
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "keywarden/byok/aws.h"
#include "keywarden/byok/kmip.h"
#include "keywarden/byok/user_managed.h"
#include "keywarden/crypto/random.h"
#include "keywarden/keys/hierarchy.h"
#include "keywarden/service/key_service.h"
#include "keywarden/store/sqlite_kek_store.h"
#include "tests/azure_kv_standin.h"
#include "tests/gcp_kms_standin.h"
#include "tests/moto.h"
#include "tests/pykmip.h"
#include "tests/softhsm.h"
#include "tests/subprocess.h"

namespace {

using Clock = std::chrono::steady_clock;
using GetFn = std::function<bool(const std::string& id)>;

struct Result {
  double per_second = 0;
  double p50_us = 0, p99_us = 0;
  uint64_t errors = 0;
};

Result Drive(const GetFn& get, const std::vector<std::string>& ids, int threads, double seconds) {
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> errors{0};
  std::vector<std::vector<double>> latencies(threads);
  std::vector<std::thread> workers;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      size_t i = static_cast<size_t>(t) * 7919;
      while (!stop.load(std::memory_order_relaxed)) {
        const auto before = Clock::now();
        if (!get(ids[i++ % ids.size()])) ++errors;
        latencies[t].push_back(
            std::chrono::duration<double, std::micro>(Clock::now() - before).count());
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& w : workers) w.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  for (auto& l : latencies) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  Result r;
  r.errors = errors;
  if (all.empty()) return r;
  r.per_second = static_cast<double>(all.size()) / elapsed;
  r.p50_us = all[all.size() / 2];
  r.p99_us = all[std::min(all.size() - 1, all.size() * 99 / 100)];
  return r;
}

void Row(const std::string& name, const std::string& mode, const Result& r, double managed) {
  fmt::print("| {} | {} | {:.0f} | {:.0f} | {:.0f} | {} | {:.3g} |\n", name, mode, r.per_second,
             r.p50_us, r.p99_us, r.errors, managed > 0 ? r.per_second / managed : 0.0);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 8, ids_count = 256;
  double seconds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--threads") == 0) threads = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--seconds") == 0) seconds = std::atof(argv[i + 1]);
    if (std::strcmp(argv[i], "--ids") == 0) ids_count = std::atoi(argv[i + 1]);
  }
  using namespace keywarden;  // NOLINT
  keywarden::testing::TempDir dir("kw-byok-bench");
  std::vector<std::string> ids;
  for (int i = 0; i < ids_count; ++i) ids.push_back(fmt::format("volume-{:05d}", i));

  fmt::print("byok_bench: {} threads, {} s per row, {} ids\n\n", threads, seconds, ids_count);
  fmt::print("| provider | mode | GetDataKey/s | p50 µs | p99 µs | errors | / managed |\n");
  fmt::print("|---|---|---|---|---|---|---|\n");

  // Managed mode: the KEK in an SQLite cluster store, DEK = HKDF-Expand.
  auto kek_store = store::NewSqliteKekStore(dir / "kek.db");
  store::KekRecord record;
  record.kek = *crypto::RandomSecret(32);
  record.measurement_salt.assign(32, 1);
  (void)(*kek_store)->InitializeOrLoad(record);
  auto managed_service = service::KeyService::Start(std::move(*kek_store), std::move(record), {});
  if (!managed_service.ok()) {
    fmt::print(stderr, "managed: {}\n", managed_service.status().ToString());
    return 1;
  }
  const Result managed =
      Drive([&](const std::string& id) { return (*managed_service)->GetDataKey(id, 32).ok(); }, ids,
            threads, seconds);
  Row("managed (HKDF)", "derive", managed, managed.per_second);

  byok::RegisterAllProviders();
  auto run = [&](const std::string& name, auto make_provider) {
    for (const bool warm : {false, true}) {
      auto provider = make_provider();
      if (!provider.ok()) {
        fmt::print("| {} | - | provider unavailable: {} | | | | |\n", name,
                   provider.status().ToString());
        return;
      }
      auto dek_store = byok::OpenDekStore(
          "storage://sqlite?path=" + (dir / (name + ".db")).string(), byok::RemoteOptions{});
      byok::UserManagedOptions options;
      if (!warm) options.cache_entries = 0;
      auto keys = byok::UserManagedKeys::New(std::move(*provider), std::move(*dek_store), options);
      if (!keys.ok()) {
        fmt::print("| {} | - | {} | | | | |\n", name, keys.status().ToString());
        return;
      }
      // First requests create the DEKs (wrap + store), outside the timed window.
      for (const auto& id : ids) (void)(*keys)->GetDataKey(id, 32);
      const Result r =
          Drive([&](const std::string& id) { return (*keys)->GetDataKey(id, 32).ok(); }, ids,
                threads, seconds);
      Row(name, warm ? "warm (cache)" : "cold (unwrap per request)", r, managed.per_second);
    }
  };

  keywarden::testing::SoftHsm hsm;
  (void)hsm.CreateAesKey("bench");
  run("pkcs11 (SoftHSM2)", [&] { return byok::OpenKekProvider(hsm.KmsUri("bench")); });

  keywarden::testing::PyKmipServer kmip;
  std::string uid;
  if (kmip.Start() && kmip.CreateAesKey(256, &uid)) {
    run("kmip (PyKMIP)", [&] { return byok::NewKmipProvider(kmip.Config(uid)); });
  } else {
    fmt::print("| kmip (PyKMIP) | - | server did not start | | | | |\n");
  }

  keywarden::testing::Moto moto;
  if (moto.Start()) {
    auto key_id = moto.CreateKmsKey();
    run("aws-kms (moto)", [&]() -> absl::StatusOr<std::unique_ptr<byok::KekProvider>> {
      if (!key_id.ok()) return key_id.status();
      byok::AwsKmsConfig config;
      config.key_id = *key_id;
      config.region = "us-east-1";
      config.credentials.access_key_id = moto.access_key_id();
      config.credentials.secret_access_key = SecretBytes(std::span<const uint8_t>(
          reinterpret_cast<const uint8_t*>(moto.secret_access_key().data()),
          moto.secret_access_key().size()));
      config.endpoint = moto.endpoint();
      return byok::NewAwsKmsProvider(std::move(config), byok::RemoteOptions{});
    });
  } else {
    fmt::print("| aws-kms (moto) | - | moto did not start | | | | |\n");
  }

  // Azure Key Vault: RSA-2048 key, RSA-OAEP-256, through kms://azure as `keywarden serve` opens it.
  keywarden::testing::AzureKvStandIn azure;
  if (auto started = azure.Start(); started) {
    run("azure-kv (stand-in)", [&] { return byok::OpenKekProvider(azure.Uri("kek")); });
  } else {
    fmt::print("| azure-kv (stand-in) | - | stand-in did not start: {} | | | | |\n",
               started.message());
  }

  // GCP Cloud KMS: a fresh service-account key, through kms://gcp (credentialsPath=).
  keywarden::testing::GcpKmsStandIn gcp;
  if (auto started = gcp.Start(keywarden::testing::GcpKmsStandIn::GenerateRsa2048()); started) {
    run("gcp-kms (stand-in)", [&] { return byok::OpenKekProvider(gcp.Uri("kek")); });
  } else {
    fmt::print("| gcp-kms (stand-in) | - | stand-in did not start: {} | | | | |\n",
               started.message());
  }
  return 0;
}
