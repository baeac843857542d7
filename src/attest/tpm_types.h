// Internal to src/attest: the key templates Keywarden uses and small tpm2-tss helpers shared by
// tpm.cc (the TPM side), verify.cc (the verifier side) and their tests. Not a public header.
#pragma once

#include <tss2/tss2_mu.h>
#include <tss2/tss2_tpm2_types.h>

#include <array>
#include <cstdint>
#include <vector>

namespace keywarden::attest {

// kEkAttributes are the objectAttributes of the TCG default EK templates (EK Credential Profile
// 2.0 Annex B): fixedTPM | fixedParent | sensitiveDataOrigin | adminWithPolicy | restricted |
// decrypt. userWithAuth is clear, so every USER-role use of the EK needs a policy session.
inline constexpr TPMA_OBJECT kEkAttributes =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
    TPMA_OBJECT_ADMINWITHPOLICY | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;

// kEkPolicy is the default EK authPolicy: the policy digest of TPM2_PolicySecret(
// TPM_RH_ENDORSEMENT) with nameAlg SHA-256 and an empty policyRef (EK Credential Profile 2.0
// Annex B): SHA256(SHA256(0^32 || TPM_CC_PolicySecret || 0x4000000B)).
inline constexpr std::array<uint8_t, 32> kEkPolicy = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};

// kAkAttributes: fixedTPM | fixedParent | sensitiveDataOrigin | userWithAuth | restricted | sign
// (the attestation-key shape of tpm2_createak and the TCG "TPM 2.0 Keys for Device Identity and
// Attestation" AK). userWithAuth with an empty authValue lets TPM2_Quote use a password session;
// adminWithPolicy clear lets TPM2_ActivateCredential's ADMIN role use it too.
inline constexpr TPMA_OBJECT kAkAttributes =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
    TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;

// EkTemplate returns the TCG default RSA-2048 EK template ("template L-1", EK Credential
// Profile 2.0 Annex B): the public key the TPM derives from it under the endorsement seed is the
// one the manufacturer certified.
inline TPM2B_PUBLIC EkTemplate() {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_RSA;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = kEkAttributes;
  p.authPolicy.size = kEkPolicy.size();
  for (size_t i = 0; i < kEkPolicy.size(); ++i) p.authPolicy.buffer[i] = kEkPolicy[i];
  p.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
  p.parameters.rsaDetail.symmetric.keyBits.aes = 128;
  p.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  p.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  p.parameters.rsaDetail.keyBits = 2048;
  p.parameters.rsaDetail.exponent = 0;
  p.unique.rsa.size = 256;  // 256 zero bytes
  return t;
}

// AkTemplate returns the template of Keywarden's attestation key: a restricted ECC P-256
// signing key with scheme ECDSA/SHA-256, no symmetric algorithm, no KDF, empty authPolicy.
inline TPM2B_PUBLIC AkTemplate() {
  TPM2B_PUBLIC t{};
  TPMT_PUBLIC& p = t.publicArea;
  p.type = TPM2_ALG_ECC;
  p.nameAlg = TPM2_ALG_SHA256;
  p.objectAttributes = kAkAttributes;
  p.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  p.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  p.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  p.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  p.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

// MarshalPublic returns the marshaled TPM2B_PUBLIC (its size field computed), or an empty
// vector if tpm2-tss refuses the structure.
inline std::vector<uint8_t> MarshalPublic(const TPM2B_PUBLIC& pub) {
  std::vector<uint8_t> out(sizeof(TPM2B_PUBLIC));
  size_t offset = 0;
  if (Tss2_MU_TPM2B_PUBLIC_Marshal(&pub, out.data(), out.size(), &offset) != TSS2_RC_SUCCESS) {
    return {};
  }
  out.resize(offset);
  return out;
}

}  // namespace keywarden::attest
