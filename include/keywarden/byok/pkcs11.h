// The PKCS#11 KEK provider (kms://pkcs11?module=PATH&token=LABEL&pin=PIN&key=LABEL): an AES key
// on an HSM token wraps Keywarden's DEKs with CKM_AES_KEY_WRAP_PAD (RFC 5649). The key never
// leaves the HSM and may be non-extractable (HYOK). docs/byok.md.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keywarden/byok/byok.h"
#include "keywarden/secret_bytes.h"

namespace keywarden::byok {

struct Pkcs11Config {
  std::string module;  // path of the PKCS#11 module (.so), loaded at run time
  std::string token;   // token label (CK_TOKEN_INFO.label, without the blank padding)
  SecretBytes pin;     // user PIN
  std::string key;     // CKA_LABEL of the AES secret key (CKA_WRAP and CKA_UNWRAP)
};

// NewPkcs11Provider loads the module (once per process, shared by providers of the same path;
// C_Finalize when the last one is destroyed), finds the token, logs in as the user and finds the
// key. Errors name the step and the CKR_* code: FAILED_PRECONDITION for a module that does not
// load, a token or key that is not there (or not unique), a key that is not AES with
// CKA_WRAP/CKA_UNWRAP; PERMISSION_DENIED for a refused PIN; UNAVAILABLE for device errors.
//
// Wrap: the binding plaintext becomes a session object (CKO_SECRET_KEY, CKK_GENERIC_SECRET,
// extractable, destroyed at once) that C_WrapKey wraps with CKM_AES_KEY_WRAP_PAD; Unwrap is
// C_UnwrapKey into such an object and C_GetAttributeValue(CKA_VALUE). (SoftHSM2, like many
// HSMs, offers CKM_AES_KEY_WRAP_PAD for C_WrapKey/C_UnwrapKey only, not for C_Encrypt.)
// Sessions are pooled, one per concurrent call. kek_id() is "pkcs11:<token>/<key>".
absl::StatusOr<std::unique_ptr<KekProvider>> NewPkcs11Provider(const Pkcs11Config& config);

// CreatePkcs11AesKey generates a token AES key of `key_bytes` (16, 24 or 32) labelled
// config.key with CKA_WRAP/CKA_UNWRAP/CKA_ENCRYPT/CKA_DECRYPT, sensitive and non-extractable
// (C_GenerateKey, CKM_AES_KEY_GEN). ALREADY_EXISTS when a key with that label exists. For setup
// and tests.
absl::Status CreatePkcs11AesKey(const Pkcs11Config& config, size_t key_bytes = 32);

// RegisterPkcs11 registers kms://pkcs11.
void RegisterPkcs11();

}  // namespace keywarden::byok
