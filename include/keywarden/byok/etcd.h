// The etcd DEK store of user-managed mode: `storage://etcd?endpoints=HOST:PORT[,HOST:PORT]
// [&prefix=/keywarden/deks/][&ca=FILE&cert=FILE&key=FILE]`. Wrapped DEKs live at
// prefix + "key-" + id; conditional writes are etcd transactions (docs/byok.md).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"
#include "keywarden/store/etcd_kek_store.h"

namespace keywarden::byok {

inline constexpr char kDefaultEtcdDekPrefix[] = "/keywarden/deks/";

// NewEtcdDekStore connects (UNAVAILABLE when no member answers within the timeout).
// options.prefix is where the DEKs live (kDefaultEtcdDekPrefix when empty).
absl::StatusOr<std::unique_ptr<DekStore>> NewEtcdDekStore(store::EtcdOptions options);

// RegisterEtcd registers `storage://etcd`.
void RegisterEtcd();

}  // namespace keywarden::byok
