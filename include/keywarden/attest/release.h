// Sealed release: secrets that only one TPM can read, and the node secrets that join, rejoin
// and recovery hand to a node (docs/attestation.md, docs/formats/attestation.md).
//
// The sender makes a fresh 32-byte transport key, sends it as a TPM credential for (EK, AK
// Name) with a software MakeCredential, and encrypts the secrets under it with AES-256-GCM. The
// receiver recovers the key with TPM2_ActivateCredential, which only the TPM that holds the EK
// and has that AK loaded can do: this is what ties the quoting AK to the certified EK, with no
// extra round trip. The GCM additional data binds a purpose ("join", "rejoin", "recover",
// "verify") and a context (e.g. the disk UUID and the measurement salt), so a release cannot be
// replayed for another purpose or disk.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "keywarden/attest/tpm_attestation.h"
#include "keywarden/crypto/asymmetric.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::attest {

class SealedRelease;  // proto/attest.proto (generated in attest.pb.h)

inline constexpr uint32_t kSealedReleaseVersion = 1;
inline constexpr std::string_view kPurposeJoin = "join";
inline constexpr std::string_view kPurposeRejoin = "rejoin";
inline constexpr std::string_view kPurposeRecover = "recover";
inline constexpr std::string_view kPurposeVerify = "verify";

// PeerTpm is what a handler needs about the TPM behind an accepted attestation document.
struct PeerTpm {
  crypto::RsaPublicKey ek;
  TpmName ak_name{};
  std::string ek_fingerprint;  // hex SHA-256 of the EK's TPM2B_PUBLIC
};

// PeerTpmFromDocument re-reads the EK and AK of a document that a TpmValidator has already
// accepted (PeerInfo::document). It does not re-verify anything; INVALID_ARGUMENT when the
// document does not parse.
absl::StatusOr<PeerTpm> PeerTpmFromDocument(std::string_view document);

// SealForTpm seals `plaintext` (1 to 4096 bytes) for the TPM of `peer`; the GCM additional data
// is "keywarden-release-v1" || 0x00 || purpose || 0x00 || context. Writes a SealedRelease.
absl::Status SealForTpm(const PeerTpm& peer, std::string_view purpose, std::string_view context,
                        const SecretBytes& plaintext, SealedRelease* out);

// OpenSealed recovers the plaintext with this node's TPM (through the issuer that holds the AK
// that was quoted). PERMISSION_DENIED when the TPM refuses the credential or the ciphertext,
// purpose or context do not match; INVALID_ARGUMENT for a malformed release.
absl::StatusOr<SecretBytes> OpenSealed(TpmIssuer& issuer, const SealedRelease& sealed,
                                       std::string_view purpose, std::string_view context);

// NodeSecrets is what a node needs to unlock its state disk and measure its cluster: the
// state-disk key DEK(lowercase disk UUID) and measurementSecret. The sealed layout is
// state_disk_key (32 bytes) || measurement_secret (32 bytes).
struct NodeSecrets {
  SecretBytes state_disk_key;
  SecretBytes measurement_secret;
};
inline constexpr size_t kNodeSecretSize = 32;
absl::StatusOr<SecretBytes> EncodeNodeSecrets(const NodeSecrets& secrets);
absl::StatusOr<NodeSecrets> DecodeNodeSecrets(const SecretBytes& plaintext);

// ReleaseContext is the context string join, rejoin and recovery bind: the lower-case disk
// UUID, and the hex measurement salt when the release carries one ("" for recovery).
std::string ReleaseContext(std::string_view disk_uuid, std::span<const uint8_t> measurement_salt);

}  // namespace keywarden::attest
