// Fuzzes the network registry's record parser and verifier (src/net/registry.cc): records are
// read from the cluster store, which any node (or whoever reaches etcd) can write. What
// ParseRecord accepts must serialize back to the same bytes (the format is canonical), and
// Verify must agree with ParseRecord about malformed input. The seed corpus
// (fuzz/corpus/net_registry/) holds records that verify under the authority below (and one of
// another cluster), credentials, and two short inputs.
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "keywarden/net/registry.h"

namespace {

using namespace keywarden;

net::EntryVerifier* Verifier() {
  static net::EntryVerifier* verifier = [] {
    auto authority = net::NewAuthorityFromSeed(SecretBytes(std::vector<uint8_t>(32, 0x11)));
    if (!authority.ok()) std::abort();
    auto v = net::NewEntryVerifier((*authority)->public_key(), std::string(64, 'c'), [] {
      return std::chrono::system_clock::time_point(std::chrono::seconds(1'750'000'000));
    });
    if (!v.ok()) std::abort();
    return v->release();
  }();
  return verifier;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view record(reinterpret_cast<const char*>(data), size);
  auto parsed = net::ParseRecord(record);
  if (parsed.ok()) {
    auto again = net::SerializeRecord(*parsed);
    if (!again.ok() || *again != record) std::abort();
    if (!net::ParseCredential(parsed->credential_bytes).ok()) std::abort();
  }
  // The verifier checks the store key against the credential; try the credential's own name so
  // that the signature and TOFU paths are reached.
  const std::string node = parsed.ok() ? parsed->credential.node : "node-a";
  auto verified = Verifier()->Verify(node, record);
  if (verified.ok() && !parsed.ok()) std::abort();
  if (!parsed.ok() && verified.status().code() != absl::StatusCode::kDataLoss) std::abort();
  (void)net::ParseCredential({data, size});
  return 0;
}
