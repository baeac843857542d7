// Tpm: the attester side of TPM 2.0 remote attestation, through tpm2-tss's ESAPI (the only
// place in Keywarden that uses tpm2-tss besides src/attest/verify.cc's marshaling).
//
// What it does, with the TCG TPM2 Library commands (Part 3) it sends:
//   ReadPcrs               TPM2_PCR_Read of the SHA-256 bank, PCRs 0-23
//   ExtendPcr15WithEvent   TPM2_PCR_Event on PCR 15 (how a node measures its clusterID)
//   EkPublic               the RSA-2048 endorsement key from the TCG default template: the
//                          persistent EK at 0x81010001 if it matches the template, otherwise
//                          TPM2_CreatePrimary under TPM_RH_ENDORSEMENT (same key either way)
//   ReadEkCertificate      TPM2_NV_Read of the RSA EK certificate at NV index 0x01c00002
//   CreateAk               TPM2_Create + TPM2_Load of a restricted ECC P-256 ECDSA/SHA-256
//                          signing key under the EK (EK use authorized by a policy session with
//                          TPM2_PolicySecret(TPM_RH_ENDORSEMENT))
//   Quote                  TPM2_Quote over SHA-256 PCRs 0-15 with the AK
//   ActivateCredential     TPM2_ActivateCredential with the AK and the EK (Part 1 §24)
//
// Resource use: the TPM is assumed to have no resource manager (swtpm, or /dev/tpm0), so every
// transient object and session is flushed before a call returns. The EK (when not persistent)
// and the AK are kept between calls only as saved contexts (TPM2_ContextSave) in this object and
// re-loaded (TPM2_ContextLoad) when needed, so a Tpm holds no TPM object slot between calls.
// Saved contexts do not survive a TPM reset (TPM2_Startup(CLEAR)); after one, open a new Tpm.
//
// Costs, measured on swtpm 0.7 on the CI machine (bench/attest_bench.cc; a hardware TPM is
// 10-100x slower): see docs/formats/attestation.md "Costs". A quote is one ContextLoad + Quote +
// FlushContext; CreateAk and ActivateCredential each start and flush policy sessions.
//
// Thread-compatible: one Tpm per thread; calls on one Tpm must not overlap. Two Tpm objects on
// one swtpm serialize (swtpm serves one connection at a time).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/attest/verify.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::attest {

// kPcrCount is the number of PCRs of a PC Client TPM's SHA-256 bank that ReadPcrs returns.
inline constexpr size_t kPcrCount = 24;
using PcrBank = std::array<PcrValue, kPcrCount>;

// kMaxPcrEventSize is TPM2B_EVENT's capacity (Part 2 §10.4.7): the most TPM2_PCR_Event takes.
inline constexpr size_t kMaxPcrEventSize = 1024;

// NV indices of the TCG EK certificates (EK Credential Profile 2.0, EK credential NV indices)
// and the persistent handle of the RSA EK (TCG TPM v2.0 Provisioning Guidance).
inline constexpr uint32_t kRsaEkCertificateNvIndex = 0x01c00002;
inline constexpr uint32_t kEccEkCertificateNvIndex = 0x01c0000a;      // ECC NIST P-256
inline constexpr uint32_t kEccP384EkCertificateNvIndex = 0x01c00016;  // ECC P-384 (swtpm)
inline constexpr uint32_t kRsaEkPersistentHandle = 0x81010001;

// AkInfo describes an attestation key created by Tpm::CreateAk.
struct AkInfo {
  // tpm2b_public is the marshaled TPM2B_PUBLIC, what a verifier passes to ParseAkPublic.
  std::vector<uint8_t> tpm2b_public;
  // name is the AK's Name (0x000B || SHA-256(TPMT_PUBLIC)), the object name of MakeCredential.
  TpmName name{};
};

// Quote is a TPM2_Quote result in the form VerifyQuote takes.
struct Quote {
  // attest is the marshaled TPMS_ATTEST (the contents of the TPM2B_ATTEST).
  std::vector<uint8_t> attest;
  // signature is the marshaled TPMT_SIGNATURE.
  std::vector<uint8_t> signature;
};

class Tpm {
 public:
  // Open connects to a TPM through a tpm2-tss TCTI configuration string as
  // Tss2_TctiLdr_Initialize takes it: "swtpm:port=2321" (swtpm's TCP socket; the control
  // channel is port+1), "swtpm:path=/run/swtpm.sock", "device:/dev/tpmrm0", "mssim:...".
  // The string must not be empty (no implicit default TPM). UNAVAILABLE when the TCTI cannot
  // be loaded or the TPM does not answer; INVALID_ARGUMENT for a malformed string.
  // Sends no command that changes TPM state.
  static absl::StatusOr<std::unique_ptr<Tpm>> Open(std::string_view tcti);

  // ~Tpm flushes nothing (nothing is left loaded) and closes the connection.
  ~Tpm();
  Tpm(const Tpm&) = delete;
  Tpm& operator=(const Tpm&) = delete;

  // ReadPcrs returns SHA-256 PCRs 0-23 as one consistent snapshot (TPM2_PCR_Read returns at
  // most 8 digests per command, so this sends several, and starts over if the TPM's PCR update
  // counter moved in between).
  // FAILED_PRECONDITION if the TPM has no active SHA-256 bank.
  absl::StatusOr<PcrBank> ReadPcrs();

  // ExtendPcr15WithEvent runs TPM2_PCR_Event(PCR 15, data) (Part 3): for the SHA-256 bank
  // PCR15 = SHA256(PCR15 || SHA256(data)). `data` must be 1 to kMaxPcrEventSize bytes
  // (INVALID_ARGUMENT otherwise). On a fresh TPM, extending the clusterID gives
  // keys::ExpectedPcr15(clusterID). Irreversible until the TPM resets.
  absl::Status ExtendPcr15WithEvent(std::span<const uint8_t> data);

  // EkPublic returns the marshaled TPM2B_PUBLIC of the RSA-2048 EK (default template), creating
  // the EK as a primary key if the TPM has no matching persistent EK at 0x81010001. The first
  // call costs a TPM2_CreatePrimary (an RSA key generation) when the EK is not persistent.
  absl::StatusOr<std::vector<uint8_t>> EkPublic();

  // ReadEkCertificate returns the RSA EK certificate (DER) from NV index 0x01c00002, without
  // the zero padding some TPMs leave after it. For ECC EKs the index is kEccEkCertificateNvIndex
  // (ReadNvCertificate). NOT_FOUND when the index is not defined.
  absl::StatusOr<std::vector<uint8_t>> ReadEkCertificate();
  // ReadNvCertificate reads one DER certificate from NV index `nv_index` (owner or index auth,
  // both empty), trimmed to its DER length. INVALID_ARGUMENT when the contents do not start with
  // a DER SEQUENCE that fits.
  absl::StatusOr<std::vector<uint8_t>> ReadNvCertificate(uint32_t nv_index);

  // CreateAk creates a new attestation key under the EK (replacing the one this object held)
  // and returns its public area and Name. The AK is not persistent: it lives as long as this
  // object (as a saved context).
  absl::StatusOr<AkInfo> CreateAk();

  // Quote signs a TPM2_Quote over SHA-256 PCRs 0-15 with the AK, carrying `qualifying_data`
  // (1 to kMaxQualifyingDataSize bytes) as its extraData. FAILED_PRECONDITION before CreateAk.
  absl::StatusOr<attest::Quote> Quote(std::span<const uint8_t> qualifying_data);

  // ActivateCredential opens a credential made by MakeCredential for this TPM's EK and the
  // AK's Name (`credential_blob` = TPM2B_ID_OBJECT contents, `encrypted_secret` =
  // TPM2B_ENCRYPTED_SECRET contents) and returns the secret. PERMISSION_DENIED when the TPM
  // refuses it (made for another EK or another object Name, or tampered); the TPM does not
  // say which. FAILED_PRECONDITION before CreateAk.
  absl::StatusOr<SecretBytes> ActivateCredential(std::span<const uint8_t> credential_blob,
                                                 std::span<const uint8_t> encrypted_secret);

 private:
  struct State;
  explicit Tpm(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace keywarden::attest
