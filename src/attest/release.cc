#include "keywarden/attest/release.h"

#include <cstring>

#include "attest.pb.h"
#include "keywarden/attest/verify.h"
#include "keywarden/crypto/aes_gcm.h"
#include "keywarden/crypto/encoding.h"
#include "keywarden/crypto/random.h"
#include "keywarden/crypto/sha256.h"
#include "keywarden/status.h"

namespace keywarden::attest {
namespace {

constexpr std::string_view kAadLabel = "keywarden-release-v1";
constexpr size_t kTransportKeySize = 32;
constexpr size_t kMaxPlaintextSize = 4096;
constexpr size_t kMaxBlobSize = 1024;

std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string AadText(std::string_view purpose, std::string_view context) {
  std::string aad(kAadLabel);
  aad.push_back('\0');
  aad.append(purpose);
  aad.push_back('\0');
  aad.append(context);
  return aad;
}

}  // namespace

absl::StatusOr<PeerTpm> PeerTpmFromDocument(std::string_view document) {
  AttestationDocument doc;
  if (!doc.ParseFromArray(document.data(), static_cast<int>(document.size()))) {
    return InvalidArgumentError("the attestation document does not parse");
  }
  PeerTpm peer;
  ASSIGN_OR_RETURN(peer.ek, ParseEkPublic(Span(doc.ek_public())));
  ASSIGN_OR_RETURN(AkPublic ak, ParseAkPublic(Span(doc.ak_public())));
  peer.ak_name = AkName(ak);
  peer.ek_fingerprint = crypto::HexEncode(crypto::Sha256({Span(doc.ek_public())}));
  return peer;
}

absl::Status SealForTpm(const PeerTpm& peer, std::string_view purpose, std::string_view context,
                        const SecretBytes& plaintext, SealedRelease* out) {
  if (plaintext.empty() || plaintext.size() > kMaxPlaintextSize) {
    return InvalidArgumentError("a sealed release holds 1 to {} bytes, not {}", kMaxPlaintextSize,
                                plaintext.size());
  }
  ASSIGN_OR_RETURN(SecretBytes transport_key, crypto::RandomSecret(kTransportKeySize));
  ASSIGN_OR_RETURN(Credential credential, MakeCredential(peer.ek, peer.ak_name, transport_key));
  const std::string aad = AadText(purpose, context);
  ASSIGN_OR_RETURN(auto gcm, crypto::AesGcm::New(transport_key));
  ASSIGN_OR_RETURN(std::vector<uint8_t> ciphertext,
                   gcm->Encrypt(plaintext.Reveal(InsecureSecretAccess::Get()), Span(aad)));
  out->Clear();
  out->set_version(kSealedReleaseVersion);
  out->set_credential_blob(std::string(credential.blob.begin(), credential.blob.end()));
  out->set_encrypted_secret(
      std::string(credential.encrypted_secret.begin(), credential.encrypted_secret.end()));
  out->set_ciphertext(std::string(ciphertext.begin(), ciphertext.end()));
  return absl::OkStatus();
}

absl::StatusOr<SecretBytes> OpenSealed(TpmIssuer& issuer, const SealedRelease& sealed,
                                       std::string_view purpose, std::string_view context) {
  if (sealed.version() != kSealedReleaseVersion) {
    return InvalidArgumentError("sealed release version {} (this node knows {})", sealed.version(),
                                kSealedReleaseVersion);
  }
  if (sealed.credential_blob().empty() || sealed.credential_blob().size() > kMaxBlobSize ||
      sealed.encrypted_secret().empty() || sealed.encrypted_secret().size() > kMaxBlobSize) {
    return InvalidArgumentError("the sealed release's credential is missing or oversized");
  }
  if (sealed.ciphertext().size() < crypto::AesGcm::kNonceSize + crypto::AesGcm::kTagSize + 1 ||
      sealed.ciphertext().size() >
          crypto::AesGcm::kNonceSize + crypto::AesGcm::kTagSize + kMaxPlaintextSize) {
    return InvalidArgumentError("the sealed release's ciphertext has a bad size");
  }
  auto transport_key =
      issuer.ActivateCredential(Span(sealed.credential_blob()), Span(sealed.encrypted_secret()));
  if (!transport_key.ok()) {
    if (absl::IsPermissionDenied(transport_key.status())) {
      return PermissionDeniedError(
          "this TPM cannot activate the release's credential: it was made for another TPM or "
          "another attestation key");
    }
    return transport_key.status();
  }
  if (transport_key->size() != kTransportKeySize) {
    return PermissionDeniedError("the release's credential is not a {}-byte key",
                                 kTransportKeySize);
  }
  const std::string aad = AadText(purpose, context);
  ASSIGN_OR_RETURN(auto gcm, crypto::AesGcm::New(*transport_key));
  auto plaintext = gcm->Decrypt(Span(sealed.ciphertext()), Span(aad));
  if (!plaintext.ok()) {
    return PermissionDeniedError(
        "the sealed release does not decrypt for purpose \"{}\" and this context (tampered, or "
        "made for another purpose or disk)",
        purpose);
  }
  return std::move(*plaintext);
}

absl::StatusOr<SecretBytes> EncodeNodeSecrets(const NodeSecrets& secrets) {
  if (secrets.state_disk_key.size() != kNodeSecretSize ||
      secrets.measurement_secret.size() != kNodeSecretSize) {
    return InvalidArgumentError("node secrets are {} bytes each", kNodeSecretSize);
  }
  SecretBytes out(2 * kNodeSecretSize);
  const auto access = InsecureSecretAccess::Get();
  std::span<uint8_t> dst = out.MutableReveal(access);
  std::memcpy(dst.data(), secrets.state_disk_key.Reveal(access).data(), kNodeSecretSize);
  std::memcpy(dst.data() + kNodeSecretSize, secrets.measurement_secret.Reveal(access).data(),
              kNodeSecretSize);
  return out;
}

absl::StatusOr<NodeSecrets> DecodeNodeSecrets(const SecretBytes& plaintext) {
  if (plaintext.size() != 2 * kNodeSecretSize) {
    return InvalidArgumentError("node secrets are {} bytes, not {}", 2 * kNodeSecretSize,
                                plaintext.size());
  }
  const auto all = plaintext.Reveal(InsecureSecretAccess::Get());
  NodeSecrets secrets;
  secrets.state_disk_key = SecretBytes(all.first(kNodeSecretSize));
  secrets.measurement_secret = SecretBytes(all.subspan(kNodeSecretSize));
  return secrets;
}

std::string ReleaseContext(std::string_view disk_uuid, std::span<const uint8_t> measurement_salt) {
  std::string context;
  for (char c : disk_uuid) {
    context.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c);
  }
  context.push_back('/');
  context += crypto::HexEncode(measurement_salt);
  return context;
}

}  // namespace keywarden::attest
