#include "keywarden/attest/tpm.h"

#include <tss2/tss2_esys.h>
#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_tctildr.h>

#include <algorithm>
#include <bitset>
#include <cstring>
#include <optional>
#include <string>
#include <utility>

#include "keywarden/status.h"
#include "src/attest/tpm_types.h"

namespace keywarden::attest {
namespace {

// EsysPtr owns memory that ESAPI allocated for an output parameter.
struct EsysFree {
  void operator()(void* p) const { Esys_Free(p); }
};
template <typename T>
using EsysPtr = std::unique_ptr<T, EsysFree>;

// kFallbackNvBufferMax is the NV chunk size used if the TPM does not report
// TPM_PT_NV_BUFFER_MAX; every PC Client TPM supports at least this much.
constexpr uint16_t kFallbackNvBufferMax = 512;

// IsTpmError reports whether `rc` is an error the TPM itself returned (as opposed to one of the
// software layers).
bool IsTpmError(TSS2_RC rc) { return (rc & TSS2_RC_LAYER_MASK) == TSS2_TPM_RC_LAYER; }

// IsTpmWarning reports a TPM warning (Part 2 §6.6: format 0 with the S bit, e.g.
// TPM_RC_OBJECT_MEMORY 0x902, TPM_RC_RETRY 0x922): a resource or timing condition, not a
// verdict on the command's parameters.
bool IsTpmWarning(TSS2_RC rc) {
  return (rc & TPM2_RC_FMT1) == 0 && (rc & TPM2_RC_WARN) == TPM2_RC_WARN;
}

// TssError turns a tpm2-tss response code into a status naming the operation. Transport (TCTI)
// failures and TPM warnings are UNAVAILABLE; the rest INTERNAL unless the caller maps them.
absl::Status TssError(std::string_view what, TSS2_RC rc) {
  const char* text = Tss2_RC_Decode(rc);
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER) {
    return UnavailableError("{}: TPM unreachable: {}", what, text);
  }
  if (IsTpmError(rc) && IsTpmWarning(rc)) {
    return UnavailableError("{}: TPM busy or out of resources: {} (0x{:x})", what, text, rc);
  }
  return InternalError("{}: {} (0x{:x})", what, text, rc);
}

// ScopedHandle flushes a transient object or session when it goes out of scope (the TPM has no
// resource manager to do it for us). A persistent object's handle is only closed in ESAPI.
class ScopedHandle {
 public:
  enum class Kind { kFlush, kCloseOnly };
  ScopedHandle() = default;
  ScopedHandle(ESYS_CONTEXT* esys, ESYS_TR handle, Kind kind)
      : esys_(esys), handle_(handle), kind_(kind) {}
  ScopedHandle(ScopedHandle&& other) noexcept
      : esys_(other.esys_),
        handle_(std::exchange(other.handle_, ESYS_TR_NONE)),
        kind_(other.kind_) {}
  ScopedHandle& operator=(ScopedHandle&& other) noexcept {
    if (this != &other) {
      Reset();
      esys_ = other.esys_;
      handle_ = std::exchange(other.handle_, ESYS_TR_NONE);
      kind_ = other.kind_;
    }
    return *this;
  }
  ScopedHandle(const ScopedHandle&) = delete;
  ScopedHandle& operator=(const ScopedHandle&) = delete;
  ~ScopedHandle() { Reset(); }

  ESYS_TR get() const { return handle_; }
  // Release gives up ownership: the handle is neither flushed nor closed by this object.
  ESYS_TR Release() { return std::exchange(handle_, ESYS_TR_NONE); }

 private:
  void Reset() {
    if (handle_ == ESYS_TR_NONE) return;
    if (kind_ == Kind::kFlush) {
      Esys_FlushContext(esys_, handle_);  // best effort: nothing to do about a failure here
    } else {
      Esys_TR_Close(esys_, &handle_);
    }
    handle_ = ESYS_TR_NONE;
  }

  ESYS_CONTEXT* esys_ = nullptr;
  ESYS_TR handle_ = ESYS_TR_NONE;
  Kind kind_ = Kind::kFlush;
};

TPML_PCR_SELECTION Sha256Selection(uint32_t mask) {
  TPML_PCR_SELECTION sel{};
  sel.count = 1;
  sel.pcrSelections[0].hash = TPM2_ALG_SHA256;
  sel.pcrSelections[0].sizeofSelect = 3;
  sel.pcrSelections[0].pcrSelect[0] = static_cast<BYTE>(mask);
  sel.pcrSelections[0].pcrSelect[1] = static_cast<BYTE>(mask >> 8);
  sel.pcrSelections[0].pcrSelect[2] = static_cast<BYTE>(mask >> 16);
  return sel;
}

// DerLength returns the length of the DER SEQUENCE at the start of `data` (header included),
// or 0 when `data` does not start with one that fits.
size_t DerLength(std::span<const uint8_t> data) {
  if (data.size() < 2 || data[0] != 0x30) return 0;
  size_t header = 2;
  size_t length = data[1];
  if (length >= 0x80) {
    const size_t octets = length & 0x7f;
    if (octets == 0 || octets > 3 || data.size() < 2 + octets) return 0;
    length = 0;
    for (size_t i = 0; i < octets; ++i) length = (length << 8) | data[2 + i];
    header += octets;
  }
  return header + length <= data.size() ? header + length : 0;
}

}  // namespace

struct Tpm::State {
  TSS2_TCTI_CONTEXT* tcti = nullptr;
  ESYS_CONTEXT* esys = nullptr;
  uint16_t nv_buffer_max = kFallbackNvBufferMax;

  // The EK: either the persistent object (ek_persistent) or a saved transient (ek_context).
  bool ek_known = false;
  ESYS_TR ek_persistent = ESYS_TR_NONE;
  std::optional<TPMS_CONTEXT> ek_context;
  std::vector<uint8_t> ek_public;

  // The AK, as a saved context.
  std::optional<TPMS_CONTEXT> ak_context;

  ~State() {
    if (esys != nullptr) {
      if (ek_persistent != ESYS_TR_NONE) Esys_TR_Close(esys, &ek_persistent);
      Esys_Finalize(&esys);
    }
    if (tcti != nullptr) Tss2_TctiLdr_Finalize(&tcti);
  }

  absl::StatusOr<bool> HandleExists(TPM2_HANDLE handle) {
    TPMI_YES_NO more = TPM2_NO;
    TPMS_CAPABILITY_DATA* raw = nullptr;
    const TSS2_RC rc = Esys_GetCapability(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                          TPM2_CAP_HANDLES, handle, 1, &more, &raw);
    EsysPtr<TPMS_CAPABILITY_DATA> data(raw);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_GetCapability(handles)", rc);
    return data->data.handles.count > 0 && data->data.handles.handle[0] == handle;
  }

  // ContextLoad re-loads a saved object; the result is flushed when it goes out of scope.
  absl::StatusOr<ScopedHandle> ContextLoad(const TPMS_CONTEXT& context, std::string_view what) {
    ESYS_TR handle = ESYS_TR_NONE;
    const TSS2_RC rc = Esys_ContextLoad(esys, &context, &handle);
    if (rc != TSS2_RC_SUCCESS) {
      if (IsTpmError(rc) && !IsTpmWarning(rc)) {
        return FailedPreconditionError(
            "the saved {} no longer loads (was the TPM reset?): {}; open the TPM again", what,
            Tss2_RC_Decode(rc));
      }
      return TssError("TPM2_ContextLoad", rc);
    }
    return ScopedHandle(esys, handle, ScopedHandle::Kind::kFlush);
  }

  // Save saves a loaded transient object's context (the caller's ScopedHandle flushes
  // the object itself afterwards).
  absl::StatusOr<TPMS_CONTEXT> Save(ESYS_TR handle) {
    TPMS_CONTEXT* raw = nullptr;
    const TSS2_RC rc = Esys_ContextSave(esys, handle, &raw);
    EsysPtr<TPMS_CONTEXT> context(raw);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_ContextSave", rc);
    return *context;
  }

  // EnsureEk finds or creates the RSA EK once per Tpm.
  absl::Status EnsureEk() {
    if (ek_known) return absl::OkStatus();
    ASSIGN_OR_RETURN(bool persistent, HandleExists(kRsaEkPersistentHandle));
    if (persistent) {
      ESYS_TR handle = ESYS_TR_NONE;
      TSS2_RC rc = Esys_TR_FromTPMPublic(esys, kRsaEkPersistentHandle, ESYS_TR_NONE, ESYS_TR_NONE,
                                         ESYS_TR_NONE, &handle);
      if (rc != TSS2_RC_SUCCESS) return TssError("ESYS_TR for the persistent EK", rc);
      ScopedHandle closer(esys, handle, ScopedHandle::Kind::kCloseOnly);
      TPM2B_PUBLIC* raw_public = nullptr;
      TPM2B_NAME* raw_name = nullptr;
      TPM2B_NAME* raw_qualified = nullptr;
      rc = Esys_ReadPublic(esys, handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &raw_public,
                           &raw_name, &raw_qualified);
      EsysPtr<TPM2B_PUBLIC> pub(raw_public);
      EsysPtr<TPM2B_NAME> name(raw_name);
      EsysPtr<TPM2B_NAME> qualified(raw_qualified);
      if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_ReadPublic(persistent EK)", rc);
      std::vector<uint8_t> bytes = MarshalPublic(*pub);
      // Use the persistent key only if it is the default-template EK; anything else at that
      // handle (a provisioning mistake) would not match the EK certificate.
      if (ParseEkPublic(bytes).ok()) {
        ek_public = std::move(bytes);
        ek_persistent = closer.Release();  // kept open for this Tpm's lifetime; see ~State
        ek_known = true;
        return absl::OkStatus();
      }
    }
    TPM2B_SENSITIVE_CREATE sensitive{};
    const TPM2B_PUBLIC tmpl = EkTemplate();
    const TPM2B_DATA outside{};
    const TPML_PCR_SELECTION creation_pcrs{};
    ESYS_TR handle = ESYS_TR_NONE;
    TPM2B_PUBLIC* raw_public = nullptr;
    TPM2B_CREATION_DATA* raw_creation = nullptr;
    TPM2B_DIGEST* raw_hash = nullptr;
    TPMT_TK_CREATION* raw_ticket = nullptr;
    const TSS2_RC rc =
        Esys_CreatePrimary(esys, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                           ESYS_TR_NONE, &sensitive, &tmpl, &outside, &creation_pcrs, &handle,
                           &raw_public, &raw_creation, &raw_hash, &raw_ticket);
    EsysPtr<TPM2B_PUBLIC> pub(raw_public);
    EsysPtr<TPM2B_CREATION_DATA> creation(raw_creation);
    EsysPtr<TPM2B_DIGEST> hash(raw_hash);
    EsysPtr<TPMT_TK_CREATION> ticket(raw_ticket);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_CreatePrimary(EK)", rc);
    ScopedHandle ek(esys, handle, ScopedHandle::Kind::kFlush);
    std::vector<uint8_t> bytes = MarshalPublic(*pub);
    if (absl::Status shape = ParseEkPublic(bytes).status(); !shape.ok()) {
      return InternalError("the TPM made an EK that is not the default template: {}",
                           StatusMessage(shape));
    }
    ASSIGN_OR_RETURN(TPMS_CONTEXT saved, Save(ek.get()));
    ek_context = saved;
    ek_public = std::move(bytes);
    ek_known = true;
    return absl::OkStatus();
  }

  // LoadEk returns the EK's handle for one operation.
  absl::StatusOr<ScopedHandle> LoadEk() {
    RETURN_IF_ERROR(EnsureEk());
    if (ek_persistent != ESYS_TR_NONE) return ScopedHandle();  // see EkHandle
    return ContextLoad(*ek_context, "EK");
  }
  ESYS_TR EkHandle(const ScopedHandle& loaded) const {
    return ek_persistent != ESYS_TR_NONE ? ek_persistent : loaded.get();
  }

  // StartEkPolicySession returns a policy session that satisfies the EK's authPolicy:
  // TPM2_PolicySecret(TPM_RH_ENDORSEMENT) with the (empty) endorsement authorization
  // (EK Credential Profile 2.0 Annex B; Part 3 TPM2_PolicySecret).
  absl::StatusOr<ScopedHandle> StartEkPolicySession() {
    const TPMT_SYM_DEF symmetric{.algorithm = TPM2_ALG_NULL, .keyBits = {}, .mode = {}};
    ESYS_TR session_handle = ESYS_TR_NONE;
    TSS2_RC rc = Esys_StartAuthSession(esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                       ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &symmetric,
                                       TPM2_ALG_SHA256, &session_handle);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_StartAuthSession(policy)", rc);
    ScopedHandle session(esys, session_handle, ScopedHandle::Kind::kFlush);
    // Keep the session alive after the command it authorizes, so that flushing it is always
    // ours to do (and always happens).
    rc = Esys_TRSess_SetAttributes(esys, session.get(), TPMA_SESSION_CONTINUESESSION,
                                   TPMA_SESSION_CONTINUESESSION);
    if (rc != TSS2_RC_SUCCESS) return TssError("session attributes", rc);
    TPM2B_TIMEOUT* raw_timeout = nullptr;
    TPMT_TK_AUTH* raw_ticket = nullptr;
    rc = Esys_PolicySecret(esys, ESYS_TR_RH_ENDORSEMENT, session.get(), ESYS_TR_PASSWORD,
                           ESYS_TR_NONE, ESYS_TR_NONE, nullptr, nullptr, nullptr, 0, &raw_timeout,
                           &raw_ticket);
    EsysPtr<TPM2B_TIMEOUT> timeout(raw_timeout);
    EsysPtr<TPMT_TK_AUTH> ticket(raw_ticket);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PolicySecret(TPM_RH_ENDORSEMENT)", rc);
    return session;
  }
};

Tpm::Tpm(std::unique_ptr<State> state) : state_(std::move(state)) {}
Tpm::~Tpm() = default;

absl::StatusOr<std::unique_ptr<Tpm>> Tpm::Open(std::string_view tcti) {
  if (tcti.empty() || tcti.size() > 1024 || tcti.find('\0') != std::string_view::npos) {
    return InvalidArgumentError("TPM TCTI configuration '{}' is empty, too long or has a NUL",
                                Printable(tcti));
  }
  auto state = std::make_unique<State>();
  const std::string conf(tcti);
  TSS2_RC rc = Tss2_TctiLdr_Initialize(conf.c_str(), &state->tcti);
  if (rc != TSS2_RC_SUCCESS) {
    state->tcti = nullptr;
    return UnavailableError("cannot open TPM '{}': {}", Printable(conf), Tss2_RC_Decode(rc));
  }
  rc = Esys_Initialize(&state->esys, state->tcti, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    state->esys = nullptr;
    return UnavailableError("cannot open TPM '{}': {}", Printable(conf), Tss2_RC_Decode(rc));
  }
  // A first command proves the TPM answers, and tells the NV read chunk size.
  TPMI_YES_NO more = TPM2_NO;
  TPMS_CAPABILITY_DATA* raw = nullptr;
  rc = Esys_GetCapability(state->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                          TPM2_CAP_TPM_PROPERTIES, TPM2_PT_NV_BUFFER_MAX, 1, &more, &raw);
  EsysPtr<TPMS_CAPABILITY_DATA> caps(raw);
  if (rc != TSS2_RC_SUCCESS) {
    return UnavailableError("TPM '{}' does not answer: {}", Printable(conf), Tss2_RC_Decode(rc));
  }
  const TPML_TAGGED_TPM_PROPERTY& props = caps->data.tpmProperties;
  if (props.count > 0 && props.tpmProperty[0].property == TPM2_PT_NV_BUFFER_MAX &&
      props.tpmProperty[0].value >= 64) {
    state->nv_buffer_max = static_cast<uint16_t>(
        std::min<uint32_t>(props.tpmProperty[0].value, sizeof(TPM2B_MAX_NV_BUFFER::buffer)));
  }
  return std::unique_ptr<Tpm>(new Tpm(std::move(state)));
}

absl::StatusOr<PcrBank> Tpm::ReadPcrs() {
  PcrBank out{};
  std::bitset<kPcrCount> have;
  std::optional<UINT32> first_counter;
  // Each TPM2_PCR_Read returns at most 8 digests (TPML_DIGEST); ask again for what is missing.
  // If any PCR changes between those commands (pcrUpdateCounter moves), start over, so that the
  // result is one consistent snapshot.
  for (int round = 0; round < 16 && !have.all(); ++round) {
    uint32_t missing = 0;
    for (size_t i = 0; i < kPcrCount; ++i) {
      if (!have[i]) missing |= 1u << i;
    }
    const TPML_PCR_SELECTION request = Sha256Selection(missing);
    UINT32 update_counter = 0;
    TPML_PCR_SELECTION* raw_selection = nullptr;
    TPML_DIGEST* raw_values = nullptr;
    const TSS2_RC rc = Esys_PCR_Read(state_->esys, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                     &request, &update_counter, &raw_selection, &raw_values);
    EsysPtr<TPML_PCR_SELECTION> selection(raw_selection);
    EsysPtr<TPML_DIGEST> values(raw_values);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PCR_Read", rc);
    if (first_counter.has_value() && *first_counter != update_counter) {
      have.reset();
      first_counter.reset();
      continue;
    }
    first_counter = update_counter;
    size_t next = 0;
    bool progress = false;
    for (uint32_t s = 0; s < selection->count; ++s) {
      const TPMS_PCR_SELECTION& sel = selection->pcrSelections[s];
      if (sel.hash != TPM2_ALG_SHA256) continue;
      for (size_t i = 0; i < kPcrCount && i / 8 < sel.sizeofSelect; ++i) {
        if ((sel.pcrSelect[i / 8] & (1u << (i % 8))) == 0) continue;
        if (next >= values->count) return InternalError("TPM2_PCR_Read: fewer digests than PCRs");
        const TPM2B_DIGEST& d = values->digests[next++];
        if (d.size != kPcrSize) {
          return InternalError("TPM2_PCR_Read: SHA-256 PCR {} has {} bytes", i, d.size);
        }
        std::copy(d.buffer, d.buffer + kPcrSize, out[i].begin());
        have.set(i);
        progress = true;
      }
    }
    if (!progress) {
      return FailedPreconditionError("the TPM has no active SHA-256 PCR bank (PCRs {:#x} missing)",
                                     missing);
    }
  }
  if (!have.all()) return InternalError("TPM2_PCR_Read did not return every PCR");
  return out;
}

absl::Status Tpm::ExtendPcr15WithEvent(std::span<const uint8_t> data) {
  if (data.empty() || data.size() > kMaxPcrEventSize) {
    return InvalidArgumentError("PCR event data of {} bytes; want 1 to {}", data.size(),
                                kMaxPcrEventSize);
  }
  TPM2B_EVENT event{};
  event.size = static_cast<UINT16>(data.size());
  std::memcpy(event.buffer, data.data(), data.size());
  TPML_DIGEST_VALUES* raw = nullptr;
  const TSS2_RC rc = Esys_PCR_Event(state_->esys, ESYS_TR_PCR15, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                    ESYS_TR_NONE, &event, &raw);
  EsysPtr<TPML_DIGEST_VALUES> digests(raw);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_PCR_Event(PCR 15)", rc);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> Tpm::EkPublic() {
  RETURN_IF_ERROR(state_->EnsureEk());
  return state_->ek_public;
}

absl::StatusOr<std::vector<uint8_t>> Tpm::ReadEkCertificate() {
  return ReadNvCertificate(kRsaEkCertificateNvIndex);
}

absl::StatusOr<std::vector<uint8_t>> Tpm::ReadNvCertificate(uint32_t nv_index) {
  if ((nv_index >> 24) != TPM2_HT_NV_INDEX) {
    return InvalidArgumentError("0x{:08x} is not an NV index handle", nv_index);
  }
  ESYS_CONTEXT* esys = state_->esys;
  ASSIGN_OR_RETURN(bool exists, state_->HandleExists(nv_index));
  if (!exists) return NotFoundError("the TPM has no NV index 0x{:08x}", nv_index);
  ESYS_TR nv = ESYS_TR_NONE;
  TSS2_RC rc = Esys_TR_FromTPMPublic(esys, nv_index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &nv);
  if (rc != TSS2_RC_SUCCESS) return TssError("ESYS_TR for the NV index", rc);
  ScopedHandle nv_handle(esys, nv, ScopedHandle::Kind::kCloseOnly);
  TPM2B_NV_PUBLIC* raw_public = nullptr;
  TPM2B_NAME* raw_name = nullptr;
  rc = Esys_NV_ReadPublic(esys, nv, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &raw_public,
                          &raw_name);
  EsysPtr<TPM2B_NV_PUBLIC> nv_public(raw_public);
  EsysPtr<TPM2B_NAME> nv_name(raw_name);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_NV_ReadPublic", rc);
  const TPMA_NV attributes = nv_public->nvPublic.attributes;
  const uint16_t size = nv_public->nvPublic.dataSize;
  ESYS_TR auth = ESYS_TR_NONE;
  if ((attributes & TPMA_NV_AUTHREAD) != 0) {
    auth = nv;  // the index's own (empty) authValue
  } else if ((attributes & TPMA_NV_OWNERREAD) != 0) {
    auth = ESYS_TR_RH_OWNER;  // the (empty) owner authorization
  } else {
    return FailedPreconditionError(
        "NV index 0x{:08x} is readable neither with its own nor with "
        "owner authorization",
        nv_index);
  }
  std::vector<uint8_t> contents;
  contents.reserve(size);
  while (contents.size() < size) {
    const uint16_t chunk =
        static_cast<uint16_t>(std::min<size_t>(state_->nv_buffer_max, size - contents.size()));
    TPM2B_MAX_NV_BUFFER* raw_data = nullptr;
    rc = Esys_NV_Read(esys, auth, nv, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, chunk,
                      static_cast<uint16_t>(contents.size()), &raw_data);
    EsysPtr<TPM2B_MAX_NV_BUFFER> data(raw_data);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_NV_Read", rc);
    if (data->size != chunk) return InternalError("TPM2_NV_Read returned a short chunk");
    contents.insert(contents.end(), data->buffer, data->buffer + data->size);
  }
  // Some TPMs store the certificate in a larger index, padded (with 0x00 or 0xff).
  const size_t der_size = DerLength(contents);
  if (der_size == 0) {
    return InvalidArgumentError("NV index 0x{:08x} does not hold a DER certificate", nv_index);
  }
  contents.resize(der_size);
  return contents;
}

absl::StatusOr<AkInfo> Tpm::CreateAk() {
  ESYS_CONTEXT* esys = state_->esys;
  ASSIGN_OR_RETURN(ScopedHandle loaded_ek, state_->LoadEk());
  const ESYS_TR ek = state_->EkHandle(loaded_ek);

  TPM2B_SENSITIVE_CREATE sensitive{};
  const TPM2B_PUBLIC tmpl = AkTemplate();
  const TPM2B_DATA outside{};
  const TPML_PCR_SELECTION creation_pcrs{};
  TPM2B_PRIVATE* raw_private = nullptr;
  TPM2B_PUBLIC* raw_public = nullptr;
  {
    ASSIGN_OR_RETURN(ScopedHandle session, state_->StartEkPolicySession());
    TPM2B_CREATION_DATA* raw_creation = nullptr;
    TPM2B_DIGEST* raw_hash = nullptr;
    TPMT_TK_CREATION* raw_ticket = nullptr;
    const TSS2_RC rc = Esys_Create(esys, ek, session.get(), ESYS_TR_NONE, ESYS_TR_NONE, &sensitive,
                                   &tmpl, &outside, &creation_pcrs, &raw_private, &raw_public,
                                   &raw_creation, &raw_hash, &raw_ticket);
    EsysPtr<TPM2B_CREATION_DATA> creation(raw_creation);
    EsysPtr<TPM2B_DIGEST> hash(raw_hash);
    EsysPtr<TPMT_TK_CREATION> ticket(raw_ticket);
    if (rc != TSS2_RC_SUCCESS) {
      Esys_Free(raw_private);
      Esys_Free(raw_public);
      return TssError("TPM2_Create(AK under the EK)", rc);
    }
  }
  EsysPtr<TPM2B_PRIVATE> priv(raw_private);
  EsysPtr<TPM2B_PUBLIC> pub(raw_public);

  ESYS_TR ak_handle = ESYS_TR_NONE;
  {
    // A policy session is consumed by the command it authorizes; TPM2_Load needs a fresh one.
    ASSIGN_OR_RETURN(ScopedHandle session, state_->StartEkPolicySession());
    const TSS2_RC rc = Esys_Load(esys, ek, session.get(), ESYS_TR_NONE, ESYS_TR_NONE, priv.get(),
                                 pub.get(), &ak_handle);
    if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_Load(AK)", rc);
  }
  ScopedHandle ak(esys, ak_handle, ScopedHandle::Kind::kFlush);

  AkInfo info;
  info.tpm2b_public = MarshalPublic(*pub);
  ASSIGN_OR_RETURN(info.name, ComputeName(info.tpm2b_public));
  TPM2B_NAME* raw_name = nullptr;
  const TSS2_RC rc = Esys_TR_GetName(esys, ak.get(), &raw_name);
  EsysPtr<TPM2B_NAME> tpm_name(raw_name);
  if (rc != TSS2_RC_SUCCESS) return TssError("AK name", rc);
  if (tpm_name->size != info.name.size() ||
      !std::equal(info.name.begin(), info.name.end(), tpm_name->name)) {
    return InternalError("the AK's Name from ESAPI differs from the Name of its public area");
  }
  ASSIGN_OR_RETURN(TPMS_CONTEXT saved, state_->Save(ak.get()));
  state_->ak_context = saved;
  return info;
}

absl::StatusOr<attest::Quote> Tpm::Quote(std::span<const uint8_t> qualifying_data) {
  if (qualifying_data.empty() || qualifying_data.size() > kMaxQualifyingDataSize) {
    return InvalidArgumentError("qualifying data of {} bytes; want 1 to {}", qualifying_data.size(),
                                kMaxQualifyingDataSize);
  }
  if (!state_->ak_context) return FailedPreconditionError("no AK: call CreateAk first");
  ESYS_CONTEXT* esys = state_->esys;
  ASSIGN_OR_RETURN(ScopedHandle ak, state_->ContextLoad(*state_->ak_context, "AK"));
  TPM2B_DATA data{};
  data.size = static_cast<UINT16>(qualifying_data.size());
  std::memcpy(data.buffer, qualifying_data.data(), qualifying_data.size());
  const TPMT_SIG_SCHEME scheme{.scheme = TPM2_ALG_NULL, .details = {}};  // the AK's own scheme
  const TPML_PCR_SELECTION selection = Sha256Selection(0xffff);          // PCRs 0-15
  TPM2B_ATTEST* raw_attest = nullptr;
  TPMT_SIGNATURE* raw_signature = nullptr;
  const TSS2_RC rc = Esys_Quote(esys, ak.get(), ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &data,
                                &scheme, &selection, &raw_attest, &raw_signature);
  EsysPtr<TPM2B_ATTEST> attest(raw_attest);
  EsysPtr<TPMT_SIGNATURE> signature(raw_signature);
  if (rc != TSS2_RC_SUCCESS) return TssError("TPM2_Quote", rc);
  attest::Quote out;
  out.attest.assign(attest->attestationData, attest->attestationData + attest->size);
  out.signature.resize(sizeof(TPMT_SIGNATURE));
  size_t offset = 0;
  if (Tss2_MU_TPMT_SIGNATURE_Marshal(signature.get(), out.signature.data(), out.signature.size(),
                                     &offset) != TSS2_RC_SUCCESS) {
    return InternalError("cannot marshal the quote's TPMT_SIGNATURE");
  }
  out.signature.resize(offset);
  return out;
}

absl::StatusOr<SecretBytes> Tpm::ActivateCredential(std::span<const uint8_t> credential_blob,
                                                    std::span<const uint8_t> encrypted_secret) {
  TPM2B_ID_OBJECT blob{};
  TPM2B_ENCRYPTED_SECRET secret{};
  if (credential_blob.empty() || credential_blob.size() > sizeof(blob.credential)) {
    return InvalidArgumentError("credential blob of {} bytes (at most {})", credential_blob.size(),
                                sizeof(blob.credential));
  }
  if (encrypted_secret.empty() || encrypted_secret.size() > sizeof(secret.secret)) {
    return InvalidArgumentError("encrypted secret of {} bytes (at most {})",
                                encrypted_secret.size(), sizeof(secret.secret));
  }
  if (!state_->ak_context) return FailedPreconditionError("no AK: call CreateAk first");
  blob.size = static_cast<UINT16>(credential_blob.size());
  std::memcpy(blob.credential, credential_blob.data(), credential_blob.size());
  secret.size = static_cast<UINT16>(encrypted_secret.size());
  std::memcpy(secret.secret, encrypted_secret.data(), encrypted_secret.size());

  ESYS_CONTEXT* esys = state_->esys;
  ASSIGN_OR_RETURN(ScopedHandle loaded_ek, state_->LoadEk());
  const ESYS_TR ek = state_->EkHandle(loaded_ek);
  ASSIGN_OR_RETURN(ScopedHandle ak, state_->ContextLoad(*state_->ak_context, "AK"));
  ASSIGN_OR_RETURN(ScopedHandle session, state_->StartEkPolicySession());
  // Part 3 §12.5: activateHandle (the AK) needs ADMIN role -> its empty authValue by password,
  // since adminWithPolicy is clear; keyHandle (the EK) needs USER role -> the policy session.
  TPM2B_DIGEST* raw_cert_info = nullptr;
  const TSS2_RC rc = Esys_ActivateCredential(esys, ak.get(), ek, ESYS_TR_PASSWORD, session.get(),
                                             ESYS_TR_NONE, &blob, &secret, &raw_cert_info);
  EsysPtr<TPM2B_DIGEST> cert_info(raw_cert_info);
  if (rc != TSS2_RC_SUCCESS) {
    if (IsTpmError(rc) && !IsTpmWarning(rc)) {
      // TPM_RC_INTEGRITY (wrong Name or tampered blob), TPM_RC_VALUE or TPM_RC_FAILURE (libtpms,
      // when the seed does not decrypt with this EK), ...: the credential is not for this TPM.
      return PermissionDeniedError("the TPM refused the credential: {}", Tss2_RC_Decode(rc));
    }
    return TssError("TPM2_ActivateCredential", rc);
  }
  SecretBytes out(std::span<const uint8_t>(cert_info->buffer, cert_info->size));
  SecureWipe(std::span<uint8_t>(cert_info->buffer, sizeof(cert_info->buffer)));
  return out;
}

}  // namespace keywarden::attest
