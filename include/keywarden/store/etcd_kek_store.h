// KekStore on etcd 3.4+ through its gRPC v3 API (etcdserverpb.KV), for key-service replicas on
// several machines.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "keywarden/store/kek_store.h"

namespace keywarden::store {

// EtcdOptions describe how to reach an etcd cluster.
struct EtcdOptions {
  std::vector<std::string> endpoints;  // "host:port", at least one
  std::string ca_file;                 // PEM CA bundle: enables TLS when set
  std::string cert_file;               // PEM client certificate (mutual TLS), with key_file
  std::string key_file;
  std::string prefix = "/keywarden/";  // the record lives at prefix + "v1/kek"
  StoreOptions store;
};

// ValidateEtcdEndpoint accepts "host:port" with a decimal port in [1, 65535]; the host may be
// a name, an IPv4 address or a bracketed IPv6 address. INVALID_ARGUMENT otherwise.
absl::Status ValidateEtcdEndpoint(std::string_view endpoint);

// NewEtcdKekStore connects to etcd; UNAVAILABLE when no endpoint answers within
// options.store.timeout, INVALID_ARGUMENT for bad options or unreadable TLS files.
absl::StatusOr<std::unique_ptr<KekStore>> NewEtcdKekStore(const EtcdOptions& options);

}  // namespace keywarden::store
