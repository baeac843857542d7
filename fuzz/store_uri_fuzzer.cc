// Fuzzes the store URI parser (operators type these; they also arrive from config files): no
// crash, and an accepted etcd URI has at least one HOST:PORT endpoint and a cert only with a
// key.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "keywarden/store/kek_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace keywarden::store;
  auto uri = ParseStoreUri(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!uri.ok()) return 0;
  if (uri->kind == StoreUri::Kind::kEtcd) {
    if (uri->etcd_endpoints.empty()) std::abort();
    for (const auto& e : uri->etcd_endpoints) {
      if (e.find(':') == std::string::npos) std::abort();
    }
    if (uri->etcd_cert.empty() != uri->etcd_key.empty()) std::abort();
  } else if (uri->sqlite_path.empty()) {
    std::abort();
  }
  return 0;
}
