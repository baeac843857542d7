// The network registry's record format, authority, node signer and entry verifier
// (include/keywarden/net/registry.h). docs/formats/network-registry.md describes every byte;
// the constants below are named after its fields.
#include "keywarden/net/registry.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <utility>

#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/hkdf.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::net {
namespace {

using std::chrono::seconds;
using std::chrono::system_clock;

constexpr std::string_view kCredentialMagic = "KWNC";
constexpr std::string_view kEntryMagic = "KWNE";
constexpr std::string_view kRecordMagic = "KWNR";
constexpr uint8_t kVersion = 1;
// Domain-separation prefixes of the two signed payloads (the trailing NUL is part of each).
constexpr std::string_view kCredentialContext{"keywarden-net-credential-v1\0", 28};
constexpr std::string_view kEntryContext{"keywarden-net-entry-v1\0", 23};
constexpr size_t kMaxNodeName = 63;
constexpr size_t kClusterIdSize = 32;
constexpr size_t kEkFingerprintSize = 32;
constexpr uint8_t kFamilyV4 = 4;
constexpr uint8_t kFamilyV6 = 6;
// Times are whole Unix seconds in [0, kMaxUnixSeconds] (year 2223), which keeps every value
// representable as a system_clock::time_point (64-bit nanoseconds).
constexpr int64_t kMaxUnixSeconds = 8'000'000'000;

std::span<const uint8_t> Bytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

bool IsLowerHex(std::string_view s, size_t size) {
  if (s.size() != size) return false;
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

absl::StatusOr<int64_t> ToUnixSeconds(system_clock::time_point t, std::string_view what) {
  const int64_t s = std::chrono::floor<seconds>(t.time_since_epoch()).count();
  if (s < 0 || s > kMaxUnixSeconds) {
    return InvalidArgumentError("{} is outside [1970, 2223]", what);
  }
  return s;
}

system_clock::time_point FromUnixSeconds(int64_t s) { return system_clock::time_point(seconds(s)); }

// ---- Writer / Reader: big-endian fixed-width fields ----

class Writer {
 public:
  void U8(uint8_t v) { out_.push_back(v); }
  void U16(uint16_t v) {
    U8(static_cast<uint8_t>(v >> 8));
    U8(static_cast<uint8_t>(v));
  }
  void U64(uint64_t v) {
    for (int shift = 56; shift >= 0; shift -= 8) U8(static_cast<uint8_t>(v >> shift));
  }
  void Put(std::span<const uint8_t> b) { out_.insert(out_.end(), b.begin(), b.end()); }
  void Put(std::string_view s) { Put(Bytes(s)); }
  std::vector<uint8_t>& bytes() { return out_; }

 private:
  std::vector<uint8_t> out_;
};

class Reader {
 public:
  Reader(std::span<const uint8_t> in, std::string_view what) : in_(in), what_(what) {}

  absl::StatusOr<std::span<const uint8_t>> Take(size_t n, std::string_view field) {
    if (in_.size() - pos_ < n) {
      return MakeStatus(absl::StatusCode::kDataLoss, "{} truncated at {} (offset {})", what_, field,
                        pos_);
    }
    auto out = in_.subspan(pos_, n);
    pos_ += n;
    return out;
  }
  absl::StatusOr<uint8_t> U8(std::string_view field) {
    ASSIGN_OR_RETURN(auto b, Take(1, field));
    return b[0];
  }
  absl::StatusOr<uint16_t> U16(std::string_view field) {
    ASSIGN_OR_RETURN(auto b, Take(2, field));
    return static_cast<uint16_t>((b[0] << 8) | b[1]);
  }
  absl::StatusOr<uint64_t> U64(std::string_view field) {
    ASSIGN_OR_RETURN(auto b, Take(8, field));
    uint64_t v = 0;
    for (uint8_t x : b) v = (v << 8) | x;
    return v;
  }
  size_t pos() const { return pos_; }
  absl::Status Done() const {
    if (pos_ != in_.size()) {
      return MakeStatus(absl::StatusCode::kDataLoss, "{} has {} trailing bytes", what_,
                        in_.size() - pos_);
    }
    return absl::OkStatus();
  }
  absl::Status Error(std::string_view message) const {
    return MakeStatus(absl::StatusCode::kDataLoss, "{}: {}", what_, message);
  }

 private:
  std::span<const uint8_t> in_;
  std::string_view what_;
  size_t pos_ = 0;
};

absl::Status ExpectMagic(Reader& r, std::string_view magic) {
  ASSIGN_OR_RETURN(auto m, r.Take(magic.size(), "magic"));
  if (!std::equal(m.begin(), m.end(), magic.begin())) return r.Error("wrong magic");
  ASSIGN_OR_RETURN(uint8_t version, r.U8("version"));
  if (version != kVersion) {
    return r.Error(fmt::format("unknown version {} (this build reads {})", version, kVersion));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadName(Reader& r) {
  ASSIGN_OR_RETURN(uint8_t n, r.U8("name length"));
  if (n == 0 || n > kMaxNodeName) return r.Error(fmt::format("name length {}", n));
  ASSIGN_OR_RETURN(auto b, r.Take(n, "name"));
  std::string name(b.begin(), b.end());
  if (!ValidNodeName(name))
    return r.Error(fmt::format("invalid node name \"{}\"", Printable(name)));
  return name;
}

void WriteAddress(Writer& w, const IpAddress& a) {
  w.U8(a.is_v4() ? kFamilyV4 : kFamilyV6);
  w.Put(a.bytes());
}

absl::StatusOr<IpAddress> ReadAddress(Reader& r, std::string_view field) {
  ASSIGN_OR_RETURN(uint8_t family, r.U8(field));
  if (family == kFamilyV4) {
    ASSIGN_OR_RETURN(auto b, r.Take(4, field));
    std::array<uint8_t, 4> a{};
    std::copy(b.begin(), b.end(), a.begin());
    return IpAddress::V4(a);
  }
  if (family == kFamilyV6) {
    ASSIGN_OR_RETURN(auto b, r.Take(16, field));
    std::array<uint8_t, 16> a{};
    std::copy(b.begin(), b.end(), a.begin());
    return IpAddress::V6(a);
  }
  return r.Error(fmt::format("{} has unknown address family {}", field, family));
}

// ---- Credential ----

struct CredentialParts {
  NodeCredential credential;
  std::span<const uint8_t> signed_body;  // magic .. not_after
  std::span<const uint8_t> signature;
};

absl::StatusOr<std::vector<uint8_t>> EncodeCredentialBody(const NodeCredential& c) {
  if (!ValidNodeName(c.node)) {
    return InvalidArgumentError("credential for an invalid node name \"{}\"", Printable(c.node));
  }
  if (!IsLowerHex(c.cluster_id, 2 * kClusterIdSize)) {
    return InvalidArgumentError("credential clusterID must be {} lower-case hex digits",
                                2 * kClusterIdSize);
  }
  if (!IsLowerHex(c.ek_fingerprint, 2 * kEkFingerprintSize)) {
    return InvalidArgumentError("credential EK fingerprint must be {} lower-case hex digits",
                                2 * kEkFingerprintSize);
  }
  if (std::all_of(c.signing_key.begin(), c.signing_key.end(), [](uint8_t b) { return b == 0; })) {
    return InvalidArgumentError("credential for an all-zero signing key");
  }
  ASSIGN_OR_RETURN(const int64_t not_after, ToUnixSeconds(c.not_after, "credential not-after"));
  ASSIGN_OR_RETURN(std::vector<uint8_t> cluster, crypto::HexDecode(c.cluster_id));
  ASSIGN_OR_RETURN(std::vector<uint8_t> ek, crypto::HexDecode(c.ek_fingerprint));
  Writer w;
  w.Put(kCredentialMagic);
  w.U8(kVersion);
  w.U8(static_cast<uint8_t>(c.node.size()));
  w.Put(c.node);
  w.Put(c.signing_key);
  w.Put(cluster);
  w.Put(ek);
  w.U64(static_cast<uint64_t>(not_after));
  return std::move(w.bytes());
}

absl::StatusOr<CredentialParts> DecodeCredential(std::span<const uint8_t> bytes) {
  Reader r(bytes, "network credential");
  RETURN_IF_ERROR(ExpectMagic(r, kCredentialMagic));
  CredentialParts out;
  ASSIGN_OR_RETURN(out.credential.node, ReadName(r));
  ASSIGN_OR_RETURN(auto key, r.Take(32, "signing key"));
  std::copy(key.begin(), key.end(), out.credential.signing_key.begin());
  ASSIGN_OR_RETURN(auto cluster, r.Take(kClusterIdSize, "clusterID"));
  out.credential.cluster_id = crypto::HexEncode(cluster);
  ASSIGN_OR_RETURN(auto ek, r.Take(kEkFingerprintSize, "EK fingerprint"));
  out.credential.ek_fingerprint = crypto::HexEncode(ek);
  ASSIGN_OR_RETURN(const uint64_t not_after, r.U64("not-after"));
  if (not_after > static_cast<uint64_t>(kMaxUnixSeconds)) return r.Error("not-after out of range");
  out.credential.not_after = FromUnixSeconds(static_cast<int64_t>(not_after));
  out.signed_body = bytes.subspan(0, r.pos());
  ASSIGN_OR_RETURN(out.signature, r.Take(crypto::kEd25519SignatureSize, "authority signature"));
  RETURN_IF_ERROR(r.Done());
  return out;
}

// ---- Entry ----

absl::StatusOr<std::vector<uint8_t>> EncodeEntry(const NodeEntry& e) {
  if (!ValidNodeName(e.node)) {
    return InvalidArgumentError("entry for an invalid node name \"{}\"", Printable(e.node));
  }
  if (std::all_of(e.public_key.begin(), e.public_key.end(), [](uint8_t b) { return b == 0; })) {
    return InvalidArgumentError("entry for node {} has an all-zero WireGuard key", e.node);
  }
  if (e.endpoint.port == 0) {
    return InvalidArgumentError("entry for node {} has endpoint port 0", e.node);
  }
  if (e.allowed_ips.size() > kMaxAllowedIps) {
    return InvalidArgumentError("entry for node {} has {} allowed IPs; at most {}", e.node,
                                e.allowed_ips.size(), kMaxAllowedIps);
  }
  std::set<Cidr> seen;
  for (const Cidr& c : e.allowed_ips) {
    if (!seen.insert(c).second) {
      return InvalidArgumentError("entry for node {} lists allowed IP {} twice", e.node,
                                  c.ToString());
    }
  }
  ASSIGN_OR_RETURN(const int64_t issued_at, ToUnixSeconds(e.issued_at, "entry issued-at"));
  Writer w;
  w.Put(kEntryMagic);
  w.U8(kVersion);
  w.U8(static_cast<uint8_t>(e.node.size()));
  w.Put(e.node);
  w.Put(e.public_key);
  WriteAddress(w, e.endpoint.address);
  w.U16(e.endpoint.port);
  w.U64(e.epoch);
  w.U64(static_cast<uint64_t>(issued_at));
  w.U8(static_cast<uint8_t>(e.allowed_ips.size()));
  for (const Cidr& c : e.allowed_ips) {
    WriteAddress(w, c.address());
    w.U8(static_cast<uint8_t>(c.prefix_length()));
  }
  return std::move(w.bytes());
}

absl::StatusOr<NodeEntry> DecodeEntry(std::span<const uint8_t> bytes) {
  Reader r(bytes, "network entry");
  RETURN_IF_ERROR(ExpectMagic(r, kEntryMagic));
  NodeEntry e;
  ASSIGN_OR_RETURN(e.node, ReadName(r));
  ASSIGN_OR_RETURN(auto key, r.Take(kWireGuardKeySize, "WireGuard key"));
  std::copy(key.begin(), key.end(), e.public_key.begin());
  if (std::all_of(e.public_key.begin(), e.public_key.end(), [](uint8_t b) { return b == 0; })) {
    return r.Error("all-zero WireGuard key");
  }
  ASSIGN_OR_RETURN(e.endpoint.address, ReadAddress(r, "endpoint"));
  ASSIGN_OR_RETURN(e.endpoint.port, r.U16("endpoint port"));
  if (e.endpoint.port == 0) return r.Error("endpoint port 0");
  ASSIGN_OR_RETURN(e.epoch, r.U64("epoch"));
  ASSIGN_OR_RETURN(const uint64_t issued_at, r.U64("issued-at"));
  if (issued_at > static_cast<uint64_t>(kMaxUnixSeconds)) return r.Error("issued-at out of range");
  e.issued_at = FromUnixSeconds(static_cast<int64_t>(issued_at));
  ASSIGN_OR_RETURN(const uint8_t count, r.U8("allowed IP count"));
  if (count > kMaxAllowedIps) {
    return r.Error(fmt::format("{} allowed IPs; at most {}", count, kMaxAllowedIps));
  }
  std::set<Cidr> seen;
  for (size_t i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(IpAddress address, ReadAddress(r, "allowed IP"));
    ASSIGN_OR_RETURN(const uint8_t length, r.U8("allowed IP prefix length"));
    auto cidr = Cidr::Make(address, length);
    if (!cidr.ok()) {
      return r.Error(
          fmt::format("allowed IP {} is not canonical: {}", i, StatusMessage(cidr.status())));
    }
    if (!seen.insert(*cidr).second) {
      return r.Error(fmt::format("allowed IP {} listed twice", cidr->ToString()));
    }
    e.allowed_ips.push_back(*cidr);
  }
  RETURN_IF_ERROR(r.Done());
  return e;
}

std::vector<uint8_t> EntrySignedPayload(std::span<const uint8_t> credential,
                                        std::span<const uint8_t> entry) {
  const auto credential_hash = crypto::Sha256({credential});
  Writer w;
  w.Put(kEntryContext);
  w.Put(credential_hash);
  w.Put(entry);
  return std::move(w.bytes());
}

std::vector<uint8_t> CredentialSignedPayload(std::span<const uint8_t> body) {
  Writer w;
  w.Put(kCredentialContext);
  w.Put(body);
  return std::move(w.bytes());
}

// ---- Record ----

struct RecordParts {
  std::span<const uint8_t> credential;
  std::span<const uint8_t> entry;
  std::span<const uint8_t> signature;
};

absl::StatusOr<RecordParts> SplitRecord(std::string_view record) {
  if (record.size() > kMaxRecordSize) {
    return MakeStatus(absl::StatusCode::kDataLoss, "network record of {} bytes; at most {}",
                      record.size(), kMaxRecordSize);
  }
  Reader r(Bytes(record), "network record");
  RETURN_IF_ERROR(ExpectMagic(r, kRecordMagic));
  RecordParts out;
  ASSIGN_OR_RETURN(const uint16_t credential_size, r.U16("credential length"));
  ASSIGN_OR_RETURN(out.credential, r.Take(credential_size, "credential"));
  ASSIGN_OR_RETURN(const uint16_t entry_size, r.U16("entry length"));
  ASSIGN_OR_RETURN(out.entry, r.Take(entry_size, "entry"));
  ASSIGN_OR_RETURN(out.signature, r.Take(crypto::kEd25519SignatureSize, "entry signature"));
  RETURN_IF_ERROR(r.Done());
  return out;
}

std::string JoinRecord(std::span<const uint8_t> credential, std::span<const uint8_t> entry,
                       std::span<const uint8_t> signature) {
  Writer w;
  w.Put(kRecordMagic);
  w.U8(kVersion);
  w.U16(static_cast<uint16_t>(credential.size()));
  w.Put(credential);
  w.U16(static_cast<uint16_t>(entry.size()));
  w.Put(entry);
  w.Put(signature);
  return std::string(w.bytes().begin(), w.bytes().end());
}

// ---- Implementations ----

class AuthorityImpl final : public Authority {
 public:
  explicit AuthorityImpl(crypto::Ed25519KeyPair key) : key_(std::move(key)) {}
  Ed25519PublicKey public_key() const override { return key_.public_key(); }

  absl::StatusOr<std::vector<uint8_t>> Issue(const NodeCredential& credential) override {
    ASSIGN_OR_RETURN(std::vector<uint8_t> body, EncodeCredentialBody(credential));
    ASSIGN_OR_RETURN(const crypto::Ed25519Signature signature,
                     key_.Sign(CredentialSignedPayload(body)));
    body.insert(body.end(), signature.begin(), signature.end());
    return body;
  }

 private:
  const crypto::Ed25519KeyPair key_;
};

class NodeSignerImpl final : public NodeSigner {
 public:
  NodeSignerImpl(std::vector<uint8_t> credential, std::string node, NodeSigningKey key)
      : credential_(std::move(credential)), node_(std::move(node)), key_(std::move(key)) {}
  Ed25519PublicKey public_key() const override { return key_.public_key(); }

  absl::StatusOr<std::string> Record(const NodeEntry& entry) override {
    if (entry.node != node_) {
      return FailedPreconditionError("entry for node \"{}\" but the credential is for {}",
                                     Printable(entry.node), node_);
    }
    ASSIGN_OR_RETURN(const std::vector<uint8_t> body, EncodeEntry(entry));
    ASSIGN_OR_RETURN(const crypto::Ed25519Signature signature,
                     key_.Sign(EntrySignedPayload(credential_, body)));
    return JoinRecord(credential_, body, signature);
  }

 private:
  const std::vector<uint8_t> credential_;
  const std::string node_;
  const NodeSigningKey key_;
};

std::string ShortFingerprint(std::string_view fingerprint) {
  return std::string(fingerprint.substr(0, 16));
}

class EntryVerifierImpl final : public EntryVerifier {
 public:
  EntryVerifierImpl(const Ed25519PublicKey& authority, std::string cluster_id, VerifierClock clock)
      : authority_(authority), cluster_id_(std::move(cluster_id)), clock_(std::move(clock)) {}

  absl::StatusOr<VerifiedEntry> Verify(std::string_view node, std::string_view record) override {
    ASSIGN_OR_RETURN(const RecordParts parts, SplitRecord(record));
    ASSIGN_OR_RETURN(const CredentialParts credential, DecodeCredential(parts.credential));
    ASSIGN_OR_RETURN(NodeEntry entry, DecodeEntry(parts.entry));
    const NodeCredential& c = credential.credential;
    const std::string where = Printable(node);
    if (!crypto::Ed25519Verify(authority_, CredentialSignedPayload(credential.signed_body),
                               credential.signature)) {
      return PermissionDeniedError(
          "record for {}: the credential's signature does not verify under the network "
          "authority key",
          where);
    }
    if (c.cluster_id != cluster_id_) {
      return PermissionDeniedError("record for {}: the credential is for another cluster", where);
    }
    if (c.node != node) {
      return PermissionDeniedError("record stored under {} carries the credential of node {}",
                                   where, c.node);
    }
    if (entry.node != c.node) {
      return PermissionDeniedError("record for {}: the entry names node {}", where, entry.node);
    }
    const auto now = clock_();
    if (now > c.not_after) {
      return PermissionDeniedError("record for {}: the credential expired {} s ago", where,
                                   std::chrono::floor<seconds>(now - c.not_after).count());
    }
    if (!crypto::Ed25519Verify(c.signing_key, EntrySignedPayload(parts.credential, parts.entry),
                               parts.signature)) {
      return PermissionDeniedError(
          "record for {}: the entry's signature does not verify under the credential's "
          "signing key",
          where);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto [it, inserted] = ek_by_node_.try_emplace(c.node, c.ek_fingerprint);
      if (!inserted && it->second != c.ek_fingerprint) {
        return PermissionDeniedError(
            "record for {}: the name is bound to EK {}..., this credential is for EK {}... "
            "(trust on first use)",
            where, ShortFingerprint(it->second), ShortFingerprint(c.ek_fingerprint));
      }
    }
    VerifiedEntry out;
    out.entry = std::move(entry);
    out.ek_fingerprint = c.ek_fingerprint;
    out.credential_not_after = c.not_after;
    return out;
  }

 private:
  const Ed25519PublicKey authority_;
  const std::string cluster_id_;
  const VerifierClock clock_;
  std::mutex mu_;
  std::map<std::string, std::string, std::less<>> ek_by_node_;  // guarded by mu_
};

}  // namespace

bool ValidNodeName(std::string_view name) {
  if (name.empty() || name.size() > kMaxNodeName) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  if (!alnum(name.front()) || !alnum(name.back())) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) { return alnum(c) || c == '-'; });
}

absl::StatusOr<std::unique_ptr<Authority>> NewAuthorityFromSeed(const SecretBytes& seed) {
  ASSIGN_OR_RETURN(crypto::Ed25519KeyPair key, crypto::Ed25519KeyPair::FromSeed(seed));
  return std::unique_ptr<Authority>(new AuthorityImpl(std::move(key)));
}

absl::StatusOr<std::unique_ptr<Authority>> NewAuthority(const SecretBytes& kek) {
  if (kek.size() != crypto::kHkdfSha256HashLen) {
    return InvalidArgumentError("KEK of {} bytes; want {}", kek.size(), crypto::kHkdfSha256HashLen);
  }
  ASSIGN_OR_RETURN(auto expander, crypto::HkdfSha256Expander::New(kek));
  ASSIGN_OR_RETURN(const SecretBytes seed,
                   expander->Expand(Bytes(kAuthorityInfo), crypto::kEd25519SeedSize));
  return NewAuthorityFromSeed(seed);
}

absl::StatusOr<NodeSigningKey> GenerateNodeSigningKey() {
  return crypto::Ed25519KeyPair::Generate();
}

absl::StatusOr<std::unique_ptr<NodeSigner>> NewNodeSigner(std::span<const uint8_t> credential,
                                                          NodeSigningKey signing_key) {
  ASSIGN_OR_RETURN(const CredentialParts parts, DecodeCredential(credential));
  if (parts.credential.signing_key != signing_key.public_key()) {
    return FailedPreconditionError("the credential for node {} certifies another signing key",
                                   parts.credential.node);
  }
  return std::unique_ptr<NodeSigner>(
      new NodeSignerImpl(std::vector<uint8_t>(credential.begin(), credential.end()),
                         parts.credential.node, std::move(signing_key)));
}

absl::StatusOr<std::unique_ptr<EntryVerifier>> NewEntryVerifier(const Ed25519PublicKey& authority,
                                                                std::string_view cluster_id,
                                                                VerifierClock clock) {
  if (!IsLowerHex(cluster_id, 2 * kClusterIdSize)) {
    return InvalidArgumentError("clusterID must be {} lower-case hex digits", 2 * kClusterIdSize);
  }
  if (!clock) clock = [] { return system_clock::now(); };
  return std::unique_ptr<EntryVerifier>(
      new EntryVerifierImpl(authority, std::string(cluster_id), std::move(clock)));
}

absl::StatusOr<NodeCredential> ParseCredential(std::span<const uint8_t> credential) {
  ASSIGN_OR_RETURN(CredentialParts parts, DecodeCredential(credential));
  return std::move(parts.credential);
}

absl::StatusOr<ParsedRecord> ParseRecord(std::string_view record) {
  ASSIGN_OR_RETURN(const RecordParts parts, SplitRecord(record));
  ParsedRecord out;
  ASSIGN_OR_RETURN(CredentialParts credential, DecodeCredential(parts.credential));
  out.credential = std::move(credential.credential);
  out.credential_bytes.assign(parts.credential.begin(), parts.credential.end());
  ASSIGN_OR_RETURN(out.entry, DecodeEntry(parts.entry));
  std::copy(parts.signature.begin(), parts.signature.end(), out.entry_signature.begin());
  return out;
}

absl::StatusOr<std::string> SerializeRecord(const ParsedRecord& record) {
  auto credential = DecodeCredential(record.credential_bytes);
  if (!credential.ok()) {
    return InvalidArgumentError("record to serialize: {}", StatusMessage(credential.status()));
  }
  ASSIGN_OR_RETURN(const std::vector<uint8_t> entry, EncodeEntry(record.entry));
  return JoinRecord(record.credential_bytes, entry, record.entry_signature);
}

}  // namespace keywarden::net
