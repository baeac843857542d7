#include "cli/byok_commands.h"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>

#include "cli/commands.h"
#include "keywarden/byok/byok.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/status.h"

namespace keywarden::cli {

struct ByokCommands::Flags {
  CLI::App* recover = nullptr;
  std::string kms_uri;
  std::string storage_uri;
  std::string id;
  size_t length = 0;  // 0: whatever the stored DEK has
  double timeout_s = 10;
};

namespace {

absl::StatusOr<SecretBytes> RecoverDek(const std::string& kms_uri, const std::string& storage_uri,
                                       const std::string& id, size_t length,
                                       std::chrono::milliseconds timeout) {
  byok::RemoteOptions remote;
  remote.timeout = timeout;
  absl::StatusOr<std::unique_ptr<byok::KekProvider>> provider =
      byok::OpenKekProvider(kms_uri, remote);
  if (!provider.ok()) {
    return MakeStatus(provider.status().code(), "cannot open the KEK provider {}: {}",
                      byok::RedactUri(kms_uri), StatusMessage(provider.status()));
  }
  absl::StatusOr<std::unique_ptr<byok::DekStore>> store = byok::OpenDekStore(storage_uri, remote);
  if (!store.ok()) {
    return MakeStatus(store.status().code(), "cannot open the DEK store {}: {}",
                      byok::RedactUri(storage_uri), StatusMessage(store.status()));
  }
  ASSIGN_OR_RETURN(std::optional<byok::StoredDek> stored, (*store)->Get(id));
  if (!stored) {
    return NotFoundError("{} holds no DEK for key id \"{}\"", (*store)->Describe(), Printable(id));
  }
  ASSIGN_OR_RETURN(SecretBytes dek, byok::UnwrapDek(**provider, id, stored->blob));
  if (length != 0 && dek.size() != length) {
    return InvalidArgumentError("the DEK of key id \"{}\" is {} bytes, not {}", Printable(id),
                                dek.size(), length);
  }
  return dek;
}

}  // namespace

ByokCommands::ByokCommands(CLI::App& app) : flags_(std::make_unique<Flags>()) {
  byok::RegisterAllProviders();
  CLI::App* dek = app.get_subcommand("dek");
  Flags& f = *flags_;
  f.recover = dek->add_subcommand(
      "recover",
      "Print, in hex, the user-managed DEK of key id ID: read its wrapped form from the DEK store "
      "and unwrap it locally at the KEK provider (no key service needed). Creates nothing.");
  f.recover
      ->add_option("--kms", f.kms_uri,
                   "KEK provider URI, e.g. kms://pkcs11?module=PATH&token=LABEL&pin=PIN&key=LABEL")
      ->required();
  f.recover
      ->add_option("--storage", f.storage_uri, "DEK store URI, e.g. storage://sqlite?path=FILE")
      ->required();
  f.recover->add_option("--id", f.id, "data_key_id (without the \"key-\" prefix)")->required();
  f.recover
      ->add_option("--length", f.length,
                   "expected key length in bytes (default: the stored DEK's length)")
      ->check(CLI::Range(size_t{1}, byok::kMaxDekSize));
  f.recover->add_option("--timeout", f.timeout_s, "seconds a provider or store call may take")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
}

ByokCommands::~ByokCommands() = default;

std::optional<int> ByokCommands::Run() {
  const Flags& f = *flags_;
  if (f.recover->parsed()) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(f.timeout_s * 1000));
    absl::StatusOr<SecretBytes> dek = RecoverDek(f.kms_uri, f.storage_uri, f.id, f.length, timeout);
    if (!dek.ok()) return Fail(dek.status());
    // The DEK is what the user asked for: print it from locked memory, as `derive dek` does.
    const SecretBytes text = crypto::HexEncodeSecret(*dek);
    const auto bytes = text.Reveal(InsecureSecretAccess::Get());
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
    return kExitOk;
  }
  return std::nullopt;
}

}  // namespace keywarden::cli
