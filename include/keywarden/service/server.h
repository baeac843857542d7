// The key service process (`keywarden serve`) and its client (`keywarden dek get`).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/secret_bytes.h"
#include "keywarden/service/log.h"

namespace keywarden::service {

struct ServeOptions {
  // dir holds mastersecret.json and cluster.json (from `keywarden init`) and, by default, the
  // embedded store keywarden.db.
  std::filesystem::path dir = "./keywarden-state";
  std::string listen = "127.0.0.1:9000";
  // store_uri: empty means sqlite://DIR/keywarden.db.
  std::string store_uri;
  // master_secret: empty means DIR/mastersecret.json when that file exists. Needed only to
  // initialize an empty store (and then DIR/cluster.json supplies the measurement salt); when
  // given and the store is initialized, it must match the stored KEK.
  std::filesystem::path master_secret;
  // metrics_listen: HOST:PORT for Prometheus text metrics at /metrics; empty = off.
  std::string metrics_listen;
  // TLS on the gRPC port: cert + key enable TLS; client_ca additionally requires and verifies
  // client certificates (mutual TLS).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // The join service (issue 5, keywarden/service/join.h) on join_listen, over aTLS. It runs only
  // when join_listen is not empty and both join_measurements (base measurements, JSON or YAML)
  // and join_ek_ca (PEM bundle of the EK CAs) are given; giving only one of the two is an error.
  std::string join_listen = "0.0.0.0:9090";
  std::filesystem::path join_measurements;
  std::filesystem::path join_ek_ca;
  // net_credential_lifetime: how long the network node credentials the join service issues stay
  // valid (JoinServiceOptions::net_credential_lifetime, whose default, 1 d, this repeats:
  // join.h is not included here; agents renew at 2/3 of it).
  std::chrono::seconds net_credential_lifetime{24 * 3600};
  // audit_log: the join service's audit log; empty means DIR/audit.log.
  std::filesystem::path audit_log;
  // User-managed mode (BYOK / HYOK, docs/byok.md): with kms_uri (kms://...) and storage_uri
  // (storage://...) GetDataKey serves random DEKs that the KEK provider wraps and the DEK store
  // keeps, instead of DEKs derived from the cluster KEK. The cluster store, master secret and
  // join service (which needs managed mode's measurement secret) are not used, and giving their
  // options is an error. audit_log (default DIR/audit.log; DIR is created if missing) records
  // every wrap/unwrap decision. Unwrapped DEKs are cached: at most dek_cache_entries, each for
  // at most dek_cache_ttl (0 turns the cache off).
  std::string kms_uri;
  std::string storage_uri;
  // previous_kms_uris (--kms-previous) are KEKs that stored DEKs may still be wrapped under
  // while `keywarden kek rotate` moves them to kms_uri: such blobs unwrap at the provider they
  // name; new DEKs are wrapped under kms_uri only.
  std::vector<std::string> previous_kms_uris;
  size_t dek_cache_entries = 4096;
  std::chrono::milliseconds dek_cache_ttl{std::chrono::minutes(5)};
  LogFormat log_format = LogFormat::kText;
  std::chrono::milliseconds store_timeout{2000};
  std::chrono::milliseconds store_check_interval{1000};
  std::chrono::milliseconds store_stale_after{5000};
  std::chrono::milliseconds drain_timeout{10000};
};

// RunKeyService serves kms.API/GetDataKey and grpc.health.v1 until SIGTERM or SIGINT, then
// stops accepting calls, lets in-flight calls finish and waits for clients to close their
// connections (gRPC sends them GOAWAY), at most drain_timeout, and returns OK. Once listening it
// prints "listening on HOST:PORT" on stdout, and then, when the join service runs, "join service
// listening on HOST:PORT"; the join service stops with the gRPC server. Errors before serving
// (store unreachable, no KEK and no master secret, a master secret of another cluster, a port in
// use, unreadable TLS, measurements or CA files, an audit log whose chain is broken; in
// user-managed mode a KEK provider or DEK store that cannot be opened) are returned with a
// message that says what to do.
absl::Status RunKeyService(const ServeOptions& options);

struct ClientOptions {
  std::string endpoint;  // HOST:PORT
  std::string tls_ca;    // PEM CA bundle: enables TLS when set
  std::string tls_cert;  // client certificate for mutual TLS, with tls_key
  std::string tls_key;
  std::chrono::milliseconds timeout{10000};
};

// GetDataKeyRemote calls kms.API/GetDataKey. Errors carry the gRPC status code and message.
absl::StatusOr<SecretBytes> GetDataKeyRemote(const ClientOptions& options, const std::string& id,
                                             uint32_t length);

}  // namespace keywarden::service
