#include "keywarden/service/server.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>
#include <httplib.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>

#include <charconv>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "keywarden/attest/measurements.h"
#include "keywarden/byok/byok.h"
#include "keywarden/byok/user_managed.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/keys/cluster.h"
#include "keywarden/keys/master_secret.h"
#include "keywarden/service/audit.h"
#include "keywarden/service/join.h"
#include "keywarden/service/key_service.h"
#include "keywarden/service/metrics.h"
#include "keywarden/status.h"
#include "keywarden/store/kek_store.h"
#include "kms.grpc.pb.h"

namespace keywarden::service {
namespace {

namespace fs = std::filesystem;

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), StatusMessage(status));
}

// ReadPem reads a PEM file for TLS setup. Key files are secrets: the caller wipes the result.
absl::StatusOr<std::string> ReadPem(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return FailedPreconditionError("cannot read {} {}: {}", what, path, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// DataKeySource answers GetDataKey(id, length): managed mode's KeyService (derived DEKs) or
// user-managed mode's byok::UserManagedKeys (wrapped DEKs). Called from many threads at once.
using DataKeySource =
    std::function<absl::StatusOr<SecretBytes>(std::string_view id, uint64_t length)>;

// KmsService implements kms.API/GetDataKey on raw bytes, so that a request that is not a valid
// GetDataKeyRequest gets INVALID_ARGUMENT (gRPC's generated handler would answer INTERNAL).
class KmsService : public kms::API::WithRawCallbackMethod_GetDataKey<kms::API::Service> {
 public:
  KmsService(DataKeySource keys, Metrics* metrics) : keys_(std::move(keys)), metrics_(metrics) {}

  grpc::ServerUnaryReactor* GetDataKey(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override {
    const auto start = std::chrono::steady_clock::now();
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    const grpc::Status status = Handle(request, response);
    metrics_->RecordRequest(status.error_code(), std::chrono::steady_clock::now() - start);
    reactor->Finish(status);
    return reactor;
  }

 private:
  grpc::Status Handle(const grpc::ByteBuffer* request, grpc::ByteBuffer* response) const {
    kms::GetDataKeyRequest parsed;
    grpc::ByteBuffer copy(*request);  // shares the slices; ProtoBufferReader needs non-const
    grpc::ProtoBufferReader reader(&copy);
    if (!parsed.ParseFromZeroCopyStream(&reader)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "request is not a valid kms.GetDataKeyRequest");
    }
    absl::StatusOr<SecretBytes> key = keys_(parsed.data_key_id(), parsed.length());
    if (!key.ok()) return ToGrpc(key.status());
    kms::GetDataKeyResponse answer;
    const auto bytes = key->Reveal(InsecureSecretAccess::Get());
    answer.set_data_key(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    bool own_buffer = false;
    const grpc::Status serialized = grpc::SerializationTraits<kms::GetDataKeyResponse>::Serialize(
        answer, response, &own_buffer);
    // The DEK now lives in gRPC's send buffer; do not leave another copy in the heap.
    SecureWipe(*answer.mutable_data_key());
    return serialized;
  }

  const DataKeySource keys_;
  Metrics* const metrics_;
};

// HealthBridge forwards store health to grpc.health.v1 once the server exists.
class HealthBridge {
 public:
  void Attach(grpc::HealthCheckServiceInterface* health, bool serving) {
    std::lock_guard<std::mutex> lock(mu_);
    health_ = health;
    ApplyLocked(serving);
  }
  void Set(bool serving) {
    std::lock_guard<std::mutex> lock(mu_);
    ApplyLocked(serving);
  }
  void Shutdown() {
    std::lock_guard<std::mutex> lock(mu_);
    if (health_ != nullptr) health_->Shutdown();
    health_ = nullptr;
  }

 private:
  void ApplyLocked(bool serving) {
    if (health_ == nullptr) return;
    health_->SetServingStatus(serving);
    health_->SetServingStatus("kms.API", serving);
  }
  std::mutex mu_;
  grpc::HealthCheckServiceInterface* health_ = nullptr;
};

const char* HealthName(StoreHealth health) {
  switch (health) {
    case StoreHealth::kConfirmed:
      return "confirmed";
    case StoreHealth::kStale:
      return "stale";
    case StoreHealth::kMismatch:
      return "mismatch";
  }
  return "unknown";
}

// RecordFromMasterSecret computes the record a master secret and DIR/cluster.json imply.
absl::StatusOr<store::KekRecord> RecordFromMasterSecret(const fs::path& secret_path,
                                                        const fs::path& dir) {
  ASSIGN_OR_RETURN(keys::MasterSecret secret, keys::ReadMasterSecretFile(secret_path));
  ASSIGN_OR_RETURN(keys::ClusterInfo info, keys::ReadClusterInfo(dir));
  ASSIGN_OR_RETURN(keys::ClusterInfo computed,
                   keys::ComputeClusterInfo(secret, info.measurement_salt));
  if (computed.cluster_id != info.cluster_id) {
    return FailedPreconditionError(
        "{} does not belong to {}: the clusterID it records is not derived from this master "
        "secret",
        (dir / keys::kClusterFileName).string(), secret_path.string());
  }
  ASSIGN_OR_RETURN(auto kek, keys::Kek::FromMasterSecret(secret));
  return store::KekRecord{kek->bytes().Clone(), info.measurement_salt};
}

// ResolveRecord loads the store's record, or initializes an empty store from the master secret.
absl::StatusOr<store::KekRecord> ResolveRecord(store::KekStore& store, const ServeOptions& options,
                                               const Logger& log) {
  fs::path secret_path = options.master_secret;
  if (secret_path.empty() && fs::exists(options.dir / keys::kMasterSecretFileName)) {
    secret_path = options.dir / keys::kMasterSecretFileName;
  }
  std::optional<store::KekRecord> from_secret;
  if (!secret_path.empty()) {
    ASSIGN_OR_RETURN(store::KekRecord record, RecordFromMasterSecret(secret_path, options.dir));
    from_secret = std::move(record);
  }
  absl::StatusOr<store::KekRecord> stored = store.Load();
  if (stored.status().code() == absl::StatusCode::kNotFound) {
    if (!from_secret) {
      return FailedPreconditionError(
          "cluster store {} holds no KEK and no master secret was given to initialize it: run "
          "`keywarden init --dir DIR` and start with --dir DIR (or --master-secret FILE)",
          store.Describe());
    }
    log.Info("initializing empty cluster store", {{"store", store.Describe()}});
    stored = store.InitializeOrLoad(*from_secret);
  }
  if (!stored.ok()) return stored.status();
  if (from_secret && !store::SameKekRecord(*stored, *from_secret)) {
    return FailedPreconditionError(
        "cluster store {} holds the KEK of another cluster (fingerprint {}) than {} (fingerprint "
        "{}); refusing to serve",
        store.Describe(), store::KekFingerprint(stored->kek), secret_path.string(),
        store::KekFingerprint(from_secret->kek));
  }
  return stored;
}

absl::StatusOr<std::pair<std::string, int>> SplitHostPort(const std::string& address) {
  const size_t colon = address.rfind(':');
  int port = -1;
  if (colon != std::string::npos) {
    const char* end = address.data() + address.size();
    if (std::from_chars(address.data() + colon + 1, end, port).ptr != end) port = -1;
  }
  if (colon == std::string::npos || colon == 0 || port < 0 || port > 65535) {
    return InvalidArgumentError("\"{}\" is not HOST:PORT", Printable(address));
  }
  return std::make_pair(address.substr(0, colon), port);
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(
    const ServeOptions& options) {
  if (options.tls_cert.empty() && options.tls_key.empty()) {
    if (!options.tls_client_ca.empty()) {
      return InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_cert.empty() || options.tls_key.empty()) {
    return InvalidArgumentError("--tls-cert and --tls-key go together");
  }
  grpc::SslServerCredentialsOptions ssl;
  ASSIGN_OR_RETURN(std::string cert, ReadPem(options.tls_cert, "TLS certificate"));
  ASSIGN_OR_RETURN(std::string key, ReadPem(options.tls_key, "TLS private key"));
  ssl.pem_key_cert_pairs.push_back({key, cert});
  SecureWipe(key);
  if (!options.tls_client_ca.empty()) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.tls_client_ca, "client CA bundle"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  auto credentials = grpc::SslServerCredentials(ssl);
  SecureWipe(ssl.pem_key_cert_pairs[0].private_key);
  return credentials;
}

// JoinSetup is what the join service needs from ServeOptions, read before serving.
struct JoinSetup {
  std::string host;
  uint16_t port = 0;
  std::string ek_ca_pem;
  attest::Measurements measurements;
  fs::path audit_path;
};

// ReadJoinSetup returns nothing when the join service is off (no --join-listen, or neither
// --measurements nor --ek-ca), and an error for half a configuration or unreadable files.
absl::StatusOr<std::optional<JoinSetup>> ReadJoinSetup(const ServeOptions& options) {
  const bool has_measurements = !options.join_measurements.empty();
  const bool has_ca = !options.join_ek_ca.empty();
  if (options.join_listen.empty() || (!has_measurements && !has_ca)) {
    return std::optional<JoinSetup>();
  }
  if (!has_measurements || !has_ca) {
    return InvalidArgumentError(
        "the join service needs both --measurements and --ek-ca (or --join-listen \"\" to turn "
        "it off)");
  }
  JoinSetup setup;
  ASSIGN_OR_RETURN(auto address, SplitHostPort(options.join_listen));
  setup.host = address.first;
  setup.port = static_cast<uint16_t>(address.second);
  ASSIGN_OR_RETURN(setup.ek_ca_pem, ReadPem(options.join_ek_ca.string(), "EK CA bundle"));
  ASSIGN_OR_RETURN(std::string text,
                   ReadPem(options.join_measurements.string(), "measurements file"));
  absl::StatusOr<attest::Measurements> measurements = attest::ParseMeasurements(text);
  if (!measurements.ok()) {
    return InvalidArgumentError("{}: {}", options.join_measurements.string(),
                                StatusMessage(measurements.status()));
  }
  setup.measurements = *std::move(measurements);
  if (PrepareJoinMeasurements(setup.measurements).empty()) {
    return InvalidArgumentError(
        "{} measures none of PCRs 0-14; the join service would accept any node",
        options.join_measurements.string());
  }
  setup.audit_path = options.audit_log.empty() ? options.dir / "audit.log" : options.audit_log;
  return std::optional<JoinSetup>(std::move(setup));
}

// CheckUserManagedOptions refuses managed-mode options next to --kms / --storage.
absl::Status CheckUserManagedOptions(const ServeOptions& options) {
  if (options.kms_uri.empty() || options.storage_uri.empty()) {
    return InvalidArgumentError(
        "user-managed mode needs both --kms (the KEK provider) and --storage (the DEK store)");
  }
  if (!options.join_measurements.empty() || !options.join_ek_ca.empty()) {
    return InvalidArgumentError(
        "--measurements and --ek-ca start the join service, which releases keys derived from "
        "managed mode's master secret; it cannot run with --kms (user-managed mode)");
  }
  if (!options.store_uri.empty()) {
    return InvalidArgumentError(
        "--store is managed mode's cluster store; in user-managed mode (--kms) the wrapped DEKs "
        "live in --storage");
  }
  if (!options.master_secret.empty()) {
    return InvalidArgumentError(
        "--master-secret is for managed mode; user-managed mode (--kms) has no master secret");
  }
  return absl::OkStatus();
}

// Front is what both modes serve through: the gRPC server with kms.API and grpc.health.v1,
// and the optional Prometheus endpoint.
struct Front {
  HealthBridge health;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  httplib::Server metrics_server;
  std::thread metrics_thread;
  bool metrics_on = false;

  // Start listens on options.listen (TLS as configured) and, when asked, on the metrics address.
  absl::Status Start(const ServeOptions& options,
                     std::shared_ptr<grpc::ServerCredentials> credentials, KmsService& service,
                     const std::optional<std::pair<std::string, int>>& metrics_address,
                     Metrics& metrics, bool serving) {
    grpc::ServerBuilder builder;
    // Security: without this, gRPC sets SO_REUSEPORT and a second process could bind the same
    // port and receive a share of the key requests.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort(options.listen, credentials, &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
    if (server == nullptr || port == 0) {
      return UnavailableError("cannot listen on {} (address in use or invalid)", options.listen);
    }
    health.Attach(server->GetHealthCheckService(), serving);
    if (!metrics_address) return absl::OkStatus();
    // Security: cpp-httplib's default socket options include SO_REUSEPORT, which would let
    // another process bind the same port; only SO_REUSEADDR (restart after TIME_WAIT) here.
    metrics_server.set_socket_options([](int sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    metrics_server.Get("/metrics", [&metrics](const httplib::Request&, httplib::Response& res) {
      res.set_content(metrics.Render(), "text/plain; version=0.0.4");
    });
    if (!metrics_server.bind_to_port(metrics_address->first.c_str(), metrics_address->second)) {
      Stop(std::chrono::milliseconds(0));
      return UnavailableError("cannot listen for metrics on {}", options.metrics_listen);
    }
    metrics_on = true;
    metrics_thread = std::thread([this] { metrics_server.listen_after_bind(); });
    return absl::OkStatus();
  }

  // Bound is "host:port" as listening (the port resolved when 0 was asked for).
  std::string Bound(const ServeOptions& options) const {
    return fmt::format("{}:{}", options.listen.substr(0, options.listen.rfind(':')), port);
  }

  // ~Front stops what an early return left running.
  ~Front() { Stop(std::chrono::milliseconds(0)); }

  // Stop reports NOT_SERVING, lets in-flight calls finish (at most `drain`), and stops all.
  // Idempotent.
  void Stop(std::chrono::milliseconds drain) {
    health.Set(false);
    if (server != nullptr) {
      server->Shutdown(std::chrono::system_clock::now() + drain);
      server->Wait();
    }
    health.Shutdown();  // the health service belongs to the server: before it goes
    server.reset();
    if (metrics_on) {
      metrics_server.stop();
      metrics_thread.join();
      metrics_on = false;
    }
  }
};

void HardenProcess() {
  // Security: no core dumps, no ptrace attach by other processes of the same user.
  (void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  rlimit no_core{0, 0};
  (void)setrlimit(RLIMIT_CORE, &no_core);
}

// RunUserManaged serves kms.API from a KEK provider and a DEK store (RunKeyService's
// user-managed mode); the stop signals are already blocked.
absl::Status RunUserManaged(const ServeOptions& options, const Logger& log,
                            std::shared_ptr<grpc::ServerCredentials> credentials,
                            std::optional<std::pair<std::string, int>> metrics_address,
                            const sigset_t& stop_signals) {
  RETURN_IF_ERROR(CheckUserManagedOptions(options));
  byok::RemoteOptions remote;
  remote.timeout = options.store_timeout;
  absl::StatusOr<std::unique_ptr<byok::KekProvider>> provider =
      byok::OpenKekProvider(options.kms_uri, remote);
  if (!provider.ok()) {
    return absl::Status(provider.status().code(),
                        internal::ToAbsl(fmt::format("cannot open the KEK provider {}: {}",
                                                     byok::RedactUri(options.kms_uri),
                                                     StatusMessage(provider.status()))));
  }
  const std::string kek_id = (*provider)->kek_id();
  std::vector<std::unique_ptr<byok::KekProvider>> previous;
  std::vector<std::string> previous_ids;
  for (const std::string& uri : options.previous_kms_uris) {
    absl::StatusOr<std::unique_ptr<byok::KekProvider>> opened = byok::OpenKekProvider(uri, remote);
    if (!opened.ok()) {
      return absl::Status(
          opened.status().code(),
          internal::ToAbsl(fmt::format("cannot open the previous KEK provider {}: {}",
                                       byok::RedactUri(uri), StatusMessage(opened.status()))));
    }
    previous_ids.push_back((*opened)->kek_id());
    previous.push_back(*std::move(opened));
  }
  absl::StatusOr<std::unique_ptr<byok::DekStore>> store =
      byok::OpenDekStore(options.storage_uri, remote);
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        internal::ToAbsl(fmt::format("cannot open the DEK store {}: {}",
                                                     byok::RedactUri(options.storage_uri),
                                                     StatusMessage(store.status()))));
  }
  const fs::path audit_path =
      options.audit_log.empty() ? options.dir / "audit.log" : options.audit_log;
  std::error_code ec;
  if (options.audit_log.empty() && !fs::is_directory(options.dir)) {
    fs::create_directories(options.dir, ec);
    if (!ec) fs::permissions(options.dir, fs::perms::owner_all, ec);
    if (ec) {
      return FailedPreconditionError("cannot create {} for the audit log: {}", options.dir.string(),
                                     ec.message());
    }
  }
  ASSIGN_OR_RETURN(std::unique_ptr<AuditLog> audit, AuditLog::Open(audit_path));
  byok::UserManagedOptions keys_options;
  keys_options.cache_entries = options.dek_cache_entries;
  keys_options.cache_ttl = options.dek_cache_ttl;
  keys_options.audit = audit.get();
  ASSIGN_OR_RETURN(std::unique_ptr<byok::UserManagedKeys> keys,
                   byok::UserManagedKeys::New(std::move(*provider), std::move(*store), keys_options,
                                              std::move(previous)));

  // keywarden_store_up is managed mode's KEK confirmation; here requests and their codes tell.
  Metrics metrics;
  grpc::EnableDefaultHealthCheckService(true);
  KmsService kms_service(
      [user_keys = keys.get()](std::string_view id,
                               uint64_t length) -> absl::StatusOr<SecretBytes> {
        if (length > byok::kMaxDekSize) {
          return InvalidArgumentError("length must be 1 to {}, not {}", byok::kMaxDekSize, length);
        }
        return user_keys->GetDataKey(id, static_cast<size_t>(length));
      },
      &metrics);
  Front front;
  RETURN_IF_ERROR(front.Start(options, std::move(credentials), kms_service, metrics_address,
                              metrics, /*serving=*/true));
  const std::string bound = front.Bound(options);
  const std::string cache = options.dek_cache_entries == 0 || options.dek_cache_ttl.count() == 0
                                ? "off"
                                : fmt::format("{} entries, {} s", options.dek_cache_entries,
                                              options.dek_cache_ttl.count() / 1000.0);
  log.Info("serving kms.API (user-managed keys)",
           {{"listen", bound},
            {"tls", options.tls_cert.empty()        ? "off"
                    : options.tls_client_ca.empty() ? "server"
                                                    : "mutual"},
            {"kms", byok::RedactUri(options.kms_uri)},
            {"kek_id", kek_id},
            {"previous_kek_ids",
             previous_ids.empty() ? "none" : fmt::format("{}", fmt::join(previous_ids, ","))},
            {"storage", byok::RedactUri(options.storage_uri)},
            {"dek_cache", cache},
            {"audit_log", audit_path.string()},
            {"metrics", options.metrics_listen.empty() ? "off" : options.metrics_listen}});
  fmt::print("listening on {}\n", bound);
  std::fflush(stdout);

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  log.Info("draining", {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
  front.Stop(options.drain_timeout);
  keys.reset();
  audit.reset();
  log.Info("stopped");
  return absl::OkStatus();
}

}  // namespace

absl::Status RunKeyService(const ServeOptions& options) {
  HardenProcess();
  // Block the stop signals in every thread (threads inherit the mask); one sigwait below.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  Logger log(options.log_format);
  ASSIGN_OR_RETURN(auto credentials, ServerCredentials(options));
  std::optional<std::pair<std::string, int>> metrics_address;
  if (!options.metrics_listen.empty()) {
    ASSIGN_OR_RETURN(metrics_address, SplitHostPort(options.metrics_listen));
  }

  if (!options.kms_uri.empty() || !options.storage_uri.empty() ||
      !options.previous_kms_uris.empty()) {
    return RunUserManaged(options, log, std::move(credentials), std::move(metrics_address),
                          stop_signals);
  }

  ASSIGN_OR_RETURN(std::optional<JoinSetup> join_setup, ReadJoinSetup(options));

  const std::string store_uri = options.store_uri.empty()
                                    ? "sqlite://" + (options.dir / "keywarden.db").string()
                                    : options.store_uri;
  if (store_uri.starts_with("sqlite://") && !fs::is_directory(options.dir) &&
      options.store_uri.empty()) {
    return FailedPreconditionError(
        "{} does not exist: run `keywarden init --dir {}` first, or give --store",
        options.dir.string(), options.dir.string());
  }
  store::StoreOptions store_options;
  store_options.timeout = options.store_timeout;
  absl::StatusOr<std::unique_ptr<store::KekStore>> store =
      store::OpenKekStore(store_uri, store_options);
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        internal::ToAbsl(fmt::format("cannot open cluster store: {}",
                                                     StatusMessage(store.status()))));
  }
  absl::StatusOr<store::KekRecord> record = ResolveRecord(**store, options, log);
  if (!record.ok()) return record.status();

  Metrics metrics;
  Front front;
  HealthBridge& health = front.health;
  KeyService::Options service_options;
  service_options.check_interval = options.store_check_interval;
  service_options.stale_after = options.store_stale_after;
  service_options.on_store_error = [&](const absl::Status& error) {
    metrics.RecordStoreError();
    log.Warn("cluster store read failed", {{"error", StatusMessage(error)}});
  };
  service_options.on_health_change = [&](StoreHealth state, const absl::Status& reason) {
    const bool up = state == StoreHealth::kConfirmed;
    metrics.SetStoreUp(up);
    health.Set(up);
    if (up) {
      log.Info("cluster store confirms the KEK again; serving");
    } else {
      log.Error("not serving keys",
                {{"store_health", HealthName(state)}, {"reason", StatusMessage(reason)}});
    }
  };
  ASSIGN_OR_RETURN(std::unique_ptr<KeyService> keys,
                   KeyService::Start(std::move(*store), std::move(*record), service_options));

  grpc::EnableDefaultHealthCheckService(true);
  KmsService kms_service(
      [service = keys.get()](std::string_view id, uint64_t length) {
        return service->GetDataKey(id, length);
      },
      &metrics);
  RETURN_IF_ERROR(front.Start(options, std::move(credentials), kms_service, metrics_address,
                              metrics, keys->health() == StoreHealth::kConfirmed));
  const std::string bound = front.Bound(options);
  log.Info("serving kms.API",
           {{"listen", bound},
            {"tls", options.tls_cert.empty()        ? "off"
                    : options.tls_client_ca.empty() ? "server"
                                                    : "mutual"},
            {"store", keys->store_description()},
            {"cluster_id", crypto::HexEncode(keys->cluster_id())},
            {"kek_fingerprint", keys->kek_fingerprint()},
            {"metrics", options.metrics_listen.empty() ? "off" : options.metrics_listen}});
  fmt::print("listening on {}\n", bound);
  std::fflush(stdout);

  // The join service, after kms.API: test harnesses take the first "listening on" line.
  std::unique_ptr<AuditLog> audit;
  std::unique_ptr<JoinService> join;
  if (join_setup) {
    absl::Status started = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(audit, AuditLog::Open(join_setup->audit_path));
      JoinServiceOptions join_options;
      join_options.host = join_setup->host;
      join_options.port = join_setup->port;
      join_options.ek_ca_bundle_pem = std::move(join_setup->ek_ca_pem);
      join_options.measurements = std::move(join_setup->measurements);
      join_options.net_credential_lifetime = options.net_credential_lifetime;
      ASSIGN_OR_RETURN(join, JoinService::Start(std::move(join_options), keys.get(), audit.get()));
      return absl::OkStatus();
    }();
    if (!started.ok()) {
      front.Stop(std::chrono::milliseconds(0));
      return absl::Status(started.code(), internal::ToAbsl(fmt::format(
                                              "cannot start the join service on {}: {}",
                                              options.join_listen, StatusMessage(started))));
    }
    const std::string join_bound = fmt::format("{}:{}", join_setup->host, join->port());
    log.Info("serving the join service", {{"listen", join_bound},
                                          {"audit_log", join_setup->audit_path.string()},
                                          {"measurements", options.join_measurements.string()},
                                          {"ek_ca", options.join_ek_ca.string()}});
    fmt::print("join service listening on {}\n", join_bound);
    std::fflush(stdout);
  }

  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  log.Info("draining", {{"signal", signal_number == SIGTERM ? "SIGTERM" : "SIGINT"}});
  health.Set(false);
  if (join) join->Shutdown();  // cuts aTLS connections, waits for running ticket calls
  front.Stop(options.drain_timeout);
  join.reset();
  audit.reset();
  keys.reset();
  log.Info("stopped");
  return absl::OkStatus();
}

absl::StatusOr<SecretBytes> GetDataKeyRemote(const ClientOptions& options, const std::string& id,
                                             uint32_t length) {
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (!options.tls_ca.empty() || !options.tls_cert.empty()) {
    if (options.tls_cert.empty() != options.tls_key.empty()) {
      return InvalidArgumentError("--tls-cert and --tls-key go together");
    }
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadPem(options.tls_ca, "CA bundle"));
    }
    if (!options.tls_cert.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadPem(options.tls_cert, "TLS certificate"));
      ASSIGN_OR_RETURN(ssl.pem_private_key, ReadPem(options.tls_key, "TLS private key"));
    }
    credentials = grpc::SslCredentials(ssl);
    SecureWipe(ssl.pem_private_key);
  }
  auto channel = grpc::CreateChannel(options.endpoint, credentials);
  auto stub = kms::API::NewStub(channel);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + options.timeout);
  kms::GetDataKeyRequest request;
  request.set_data_key_id(id);
  request.set_length(length);
  kms::GetDataKeyResponse response;
  const grpc::Status status = stub->GetDataKey(&context, request, &response);
  if (!status.ok()) {
    return MakeStatus(static_cast<absl::StatusCode>(status.error_code()), "{}: {}",
                      options.endpoint, status.error_message());
  }
  SecretBytes key(std::span<const uint8_t>(
      reinterpret_cast<const uint8_t*>(response.data_key().data()), response.data_key().size()));
  SecureWipe(*response.mutable_data_key());
  return key;
}

}  // namespace keywarden::service
