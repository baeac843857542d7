// The wrapped-DEK format (docs/formats/wrapped-dek.md), the id binding, kms:// and storage://
// URIs, and the provider/store registry.
#include "keywarden/byok/byok.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <mutex>

#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::byok {
namespace {

constexpr std::array<uint8_t, 4> kMagic = {'K', 'W', 'D', '1'};
// The binding prefix, with its 0x00 separator: "keywarden-dek-v1" || 0x00.
constexpr char kBindingLabel[] = "keywarden-dek-v1";
constexpr size_t kBindingLabelSize = sizeof(kBindingLabel);  // 16 characters + NUL = 17
constexpr size_t kDigestSize = crypto::kSha256Size;
// kBindingOverhead: label || SHA-256(id) before the DEK, SHA-256(B) after it.
constexpr size_t kBindingOverhead = kBindingLabelSize + 2 * kDigestSize;

std::span<const uint8_t> AsBytes(std::string_view text) {
  return {reinterpret_cast<const uint8_t*>(text.data()), text.size()};
}

void PutU16(std::vector<uint8_t>& out, size_t value) {
  out.push_back(static_cast<uint8_t>(value >> 8));
  out.push_back(static_cast<uint8_t>(value));
}

bool PrintableAscii(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x20 && u < 0x7f;
  });
}

absl::Status DataLoss(std::string_view what) {
  return MakeStatus(absl::StatusCode::kDataLoss, "malformed wrapped DEK: {}", what);
}

// Registry of factories, by name.
struct Registry {
  std::mutex mu;
  std::map<std::string, KekProviderFactory, std::less<>> providers;
  std::map<std::string, DekStoreFactory, std::less<>> stores;
};

Registry& GetRegistry() {
  static Registry* registry = new Registry();  // never destroyed: usable from any destructor
  return *registry;
}

template <typename Map>
std::string KnownNames(const Map& map, std::string_view scheme) {
  if (map.empty()) return "none";
  std::string out;
  for (const auto& [name, unused] : map) {
    if (!out.empty()) out += ", ";
    out += fmt::format("{}://{}", scheme, name);
  }
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::StatusOr<std::string> PercentDecode(std::string_view text, std::string_view param) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    const int hi = i + 2 < text.size() ? HexValue(text[i + 1]) : -1;
    const int lo = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      SecureWipe(out);
      return InvalidArgumentError("URI parameter \"{}\" has a bad %-escape", Printable(param));
    }
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

}  // namespace

bool IsSecretUriParam(std::string_view name) {
  static constexpr std::string_view kSecret[] = {"pin",          "accesskey",  "key",
                                                 "clientsecret", "secretkey",  "password",
                                                 "sessiontoken", "credentials"};
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return std::find(std::begin(kSecret), std::end(kSecret), lower) != std::end(kSecret);
}

std::vector<uint8_t> EncodeWrappedDek(const WrappedDek& dek) {
  std::vector<uint8_t> out(kMagic.begin(), kMagic.end());
  out.reserve(kMagic.size() + 4 + dek.kek_id.size() + dek.wrapped.size());
  PutU16(out, dek.kek_id.size());
  out.insert(out.end(), dek.kek_id.begin(), dek.kek_id.end());
  PutU16(out, dek.wrapped.size());
  out.insert(out.end(), dek.wrapped.begin(), dek.wrapped.end());
  return out;
}

absl::StatusOr<WrappedDek> DecodeWrappedDek(std::span<const uint8_t> bytes) {
  if (bytes.size() < kMagic.size() || !std::equal(kMagic.begin(), kMagic.end(), bytes.begin())) {
    return DataLoss("it does not start with \"KWD1\" (not a Keywarden DEK, or another version)");
  }
  size_t pos = kMagic.size();
  auto read_u16 = [&](size_t& value) {
    if (bytes.size() - pos < 2) return false;
    value = (static_cast<size_t>(bytes[pos]) << 8) | bytes[pos + 1];
    pos += 2;
    return true;
  };
  size_t kek_size = 0;
  if (!read_u16(kek_size)) return DataLoss("truncated KEK id length");
  if (kek_size == 0 || kek_size > kMaxKekIdSize) return DataLoss("KEK id length out of range");
  if (bytes.size() - pos < kek_size) return DataLoss("truncated KEK id");
  WrappedDek dek;
  dek.kek_id.assign(reinterpret_cast<const char*>(bytes.data() + pos), kek_size);
  pos += kek_size;
  if (!PrintableAscii(dek.kek_id)) return DataLoss("KEK id is not printable ASCII");
  size_t wrapped_size = 0;
  if (!read_u16(wrapped_size)) return DataLoss("truncated ciphertext length");
  if (wrapped_size == 0 || wrapped_size > kMaxWrappedSize) {
    return DataLoss("ciphertext length out of range");
  }
  if (bytes.size() - pos < wrapped_size) return DataLoss("truncated ciphertext");
  dek.wrapped.assign(bytes.begin() + static_cast<std::ptrdiff_t>(pos),
                     bytes.begin() + static_cast<std::ptrdiff_t>(pos + wrapped_size));
  pos += wrapped_size;
  if (pos != bytes.size()) return DataLoss("trailing bytes after the ciphertext");
  return dek;
}

absl::StatusOr<std::vector<uint8_t>> WrapDek(KekProvider& provider, std::string_view id,
                                             const SecretBytes& dek) {
  if (dek.empty() || dek.size() > kMaxDekSize) {
    return InvalidArgumentError("a DEK is 1 to {} bytes, not {}", kMaxDekSize, dek.size());
  }
  const std::string kek_id = provider.kek_id();
  if (kek_id.empty() || kek_id.size() > kMaxKekIdSize || !PrintableAscii(kek_id)) {
    return InternalError("{}: KEK id is not 1 to {} printable characters", provider.Describe(),
                         kMaxKekIdSize);
  }
  // B = label || 0x00 || SHA-256(id) || DEK; plaintext = B || SHA-256(B).
  SecretBytes plaintext(kBindingOverhead + dek.size());
  const auto out = plaintext.MutableReveal(InsecureSecretAccess::Get());
  std::memcpy(out.data(), kBindingLabel, kBindingLabelSize);
  const auto id_digest = crypto::Sha256({AsBytes(id)});
  std::copy(id_digest.begin(), id_digest.end(), out.begin() + kBindingLabelSize);
  const auto key = dek.Reveal(InsecureSecretAccess::Get());
  std::copy(key.begin(), key.end(), out.begin() + kBindingLabelSize + kDigestSize);
  const size_t body = kBindingLabelSize + kDigestSize + key.size();
  auto check = crypto::Sha256({out.first(body)});
  std::copy(check.begin(), check.end(), out.begin() + static_cast<std::ptrdiff_t>(body));
  SecureWipe(check);

  ASSIGN_OR_RETURN(std::vector<uint8_t> wrapped, provider.Wrap(plaintext));
  if (wrapped.empty() || wrapped.size() > kMaxWrappedSize) {
    return InternalError("{} returned a {}-byte ciphertext (1 to {} expected)", provider.Describe(),
                         wrapped.size(), kMaxWrappedSize);
  }
  return EncodeWrappedDek(WrappedDek{kek_id, std::move(wrapped)});
}

absl::StatusOr<SecretBytes> UnwrapDek(KekProvider& provider, std::string_view id,
                                      std::span<const uint8_t> stored) {
  ASSIGN_OR_RETURN(WrappedDek parsed, DecodeWrappedDek(stored));
  const std::string kek_id = provider.kek_id();
  if (parsed.kek_id != kek_id) {
    return FailedPreconditionError(
        "the stored DEK for key id \"{}\" was wrapped under KEK \"{}\", not under the configured "
        "KEK \"{}\" (rotate with `keywarden kek rotate`, or give the old KEK)",
        Printable(id), Printable(parsed.kek_id), Printable(kek_id));
  }
  ASSIGN_OR_RETURN(SecretBytes plaintext, provider.Unwrap(parsed.wrapped));
  const absl::Status refused = PermissionDeniedError(
      "the stored DEK for key id \"{}\" does not unwrap under KEK \"{}\" (tampered, or not made "
      "by Keywarden)",
      Printable(id), Printable(kek_id));
  const auto bytes = plaintext.Reveal(InsecureSecretAccess::Get());
  if (bytes.size() <= kBindingOverhead || bytes.size() > kBindingOverhead + kMaxDekSize) {
    return refused;
  }
  const size_t body = bytes.size() - kDigestSize;
  auto check = crypto::Sha256({bytes.first(body)});
  const bool intact = std::memcmp(bytes.data(), kBindingLabel, kBindingLabelSize) == 0 &&
                      crypto::ConstantTimeEquals(check, bytes.subspan(body));
  SecureWipe(check);
  if (!intact) return refused;
  const auto id_digest = crypto::Sha256({AsBytes(id)});
  if (!std::equal(id_digest.begin(), id_digest.end(), bytes.begin() + kBindingLabelSize)) {
    return PermissionDeniedError(
        "the stored DEK for key id \"{}\" belongs to another key id (a blob copied or swapped "
        "between ids); refusing it",
        Printable(id));
  }
  return SecretBytes(
      bytes.subspan(kBindingLabelSize + kDigestSize, body - kBindingLabelSize - kDigestSize));
}

absl::StatusOr<ByokUri> ParseByokUri(std::string_view uri) {
  const size_t sep = uri.find("://");
  if (sep == std::string_view::npos || sep == 0) {
    return InvalidArgumentError("\"{}\" is not a SCHEME://NAME?PARAMS URI",
                                Printable(RedactUri(uri)));
  }
  ByokUri out;
  out.scheme = std::string(uri.substr(0, sep));
  // A scheme is letters only ("kms", "storage"); anything else (a '?' before "://") would make
  // the query start somewhere RedactUri does not look (found by fuzz/byok_fuzzer.cc).
  if (!std::all_of(out.scheme.begin(), out.scheme.end(),
                   [](char c) { return c >= 'a' && c <= 'z'; })) {
    return InvalidArgumentError("\"{}\" is not a SCHEME://NAME?PARAMS URI",
                                Printable(RedactUri(uri)));
  }
  std::string_view rest = uri.substr(sep + 3);
  const size_t query = rest.find('?');
  out.name = std::string(rest.substr(0, query));
  if (out.name.empty() || out.name.find('/') != std::string::npos) {
    return InvalidArgumentError("{}:// URI: \"{}\" is not a provider or store name", out.scheme,
                                Printable(out.name));
  }
  if (query == std::string_view::npos) return out;
  std::string_view params = rest.substr(query + 1);
  while (!params.empty()) {
    const size_t amp = params.find('&');
    const std::string_view pair = params.substr(0, amp);
    params = amp == std::string_view::npos ? std::string_view() : params.substr(amp + 1);
    if (pair.empty()) continue;
    const size_t eq = pair.find('=');
    const std::string_view raw_name = pair.substr(0, eq);
    ASSIGN_OR_RETURN(std::string name, PercentDecode(raw_name, raw_name));
    if (name.empty()) {
      return InvalidArgumentError("{}://{} URI has a parameter without a name", out.scheme,
                                  out.name);
    }
    std::string value;
    if (eq != std::string_view::npos) {
      ASSIGN_OR_RETURN(value, PercentDecode(pair.substr(eq + 1), name));
    }
    if (out.params.contains(name)) {
      SecureWipe(value);
      return InvalidArgumentError("{}://{} URI repeats parameter \"{}\"", out.scheme, out.name,
                                  Printable(name));
    }
    out.params.emplace(std::move(name), std::move(value));
  }
  return out;
}

absl::Status CheckUriParams(const UriParams& params,
                            std::initializer_list<std::string_view> required,
                            std::initializer_list<std::string_view> optional,
                            std::string_view what) {
  for (std::string_view name : required) {
    const auto it = params.find(std::string(name));
    if (it == params.end() || it->second.empty()) {
      return InvalidArgumentError("{} needs the parameter {}=", what, name);
    }
  }
  for (const auto& [name, unused] : params) {
    const bool known = std::find(required.begin(), required.end(), name) != required.end() ||
                       std::find(optional.begin(), optional.end(), name) != optional.end();
    if (!known) {
      std::string allowed;
      for (auto list : {required, optional}) {
        for (std::string_view n : list)
          allowed += fmt::format("{}{}=", allowed.empty() ? "" : ", ", n);
      }
      return InvalidArgumentError("{} has no parameter \"{}\" (it takes {})", what, Printable(name),
                                  allowed);
    }
  }
  return absl::OkStatus();
}

void RegisterKekProvider(std::string name, KekProviderFactory factory) {
  Registry& registry = GetRegistry();
  std::lock_guard<std::mutex> lock(registry.mu);
  registry.providers[std::move(name)] = std::move(factory);
}

void RegisterDekStore(std::string name, DekStoreFactory factory) {
  Registry& registry = GetRegistry();
  std::lock_guard<std::mutex> lock(registry.mu);
  registry.stores[std::move(name)] = std::move(factory);
}

absl::StatusOr<std::unique_ptr<KekProvider>> OpenKekProvider(std::string_view uri,
                                                             const RemoteOptions& options) {
  ASSIGN_OR_RETURN(ByokUri parsed, ParseByokUri(uri));
  if (parsed.scheme != "kms") {
    return InvalidArgumentError("a KEK provider URI starts with kms://, not {}://",
                                Printable(parsed.scheme));
  }
  KekProviderFactory factory;
  {
    Registry& registry = GetRegistry();
    std::lock_guard<std::mutex> lock(registry.mu);
    const auto it = registry.providers.find(parsed.name);
    if (it == registry.providers.end()) {
      return MakeStatus(absl::StatusCode::kUnimplemented,
                        "no KEK provider kms://{} in this build (known: {})",
                        Printable(parsed.name), KnownNames(registry.providers, "kms"));
    }
    factory = it->second;
  }
  auto provider = factory(parsed.params, options);
  for (auto& [name, value] : parsed.params) SecureWipe(value);
  return provider;
}

absl::StatusOr<std::unique_ptr<DekStore>> OpenDekStore(std::string_view uri,
                                                       const RemoteOptions& options) {
  ASSIGN_OR_RETURN(ByokUri parsed, ParseByokUri(uri));
  if (parsed.scheme != "storage") {
    return InvalidArgumentError("a DEK store URI starts with storage://, not {}://",
                                Printable(parsed.scheme));
  }
  DekStoreFactory factory;
  {
    Registry& registry = GetRegistry();
    std::lock_guard<std::mutex> lock(registry.mu);
    const auto it = registry.stores.find(parsed.name);
    if (it == registry.stores.end()) {
      return MakeStatus(absl::StatusCode::kUnimplemented,
                        "no DEK store storage://{} in this build (known: {})",
                        Printable(parsed.name), KnownNames(registry.stores, "storage"));
    }
    factory = it->second;
  }
  auto store = factory(parsed.params, options);
  for (auto& [name, value] : parsed.params) SecureWipe(value);
  return store;
}

std::string RedactUri(std::string_view uri) {
  // The query starts at the first '?' after "://" (where ParseByokUri looks), or at the first
  // '?' of a URI without "://".
  const size_t scheme_end = uri.find("://");
  const size_t query = uri.find('?', scheme_end == std::string_view::npos ? 0 : scheme_end);
  if (query == std::string_view::npos) return std::string(uri);
  std::string out(uri.substr(0, query + 1));
  std::string_view params = uri.substr(query + 1);
  bool first = true;
  while (true) {
    const size_t amp = params.find('&');
    const std::string_view pair = params.substr(0, amp);
    if (!first) out += '&';
    first = false;
    const size_t eq = pair.find('=');
    const std::string_view name = pair.substr(0, eq);
    // Names are compared after %-decoding, so "p%69n=" is redacted too.
    const absl::StatusOr<std::string> decoded = PercentDecode(name, "");
    if (eq != std::string_view::npos && (!decoded.ok() || IsSecretUriParam(*decoded))) {
      out += name;
      out += "=***";
    } else {
      out += pair;
    }
    if (amp == std::string_view::npos) break;
    params = params.substr(amp + 1);
  }
  return out;
}

}  // namespace keywarden::byok
