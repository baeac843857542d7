// The PKCS#11 KEK provider (docs/byok.md): CKM_AES_KEY_WRAP_PAD (RFC 5649) at an HSM through a
// module loaded at run time (PKCS#11 v2.40 §5.14 C_WrapKey / C_UnwrapKey).
#include "keywarden/byok/pkcs11.h"

#include <dlfcn.h>
#include <p11-kit/pkcs11.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <mutex>
#include <vector>

#include "keywarden/status.h"

namespace keywarden::byok {
namespace {

// Idle sessions kept per provider; more concurrent calls open more and close the excess.
constexpr size_t kMaxIdleSessions = 16;

const char* RvName(CK_RV rv) {
  switch (rv) {
#define KW_CKR(name) \
  case name:         \
    return #name;
    KW_CKR(CKR_OK)
    KW_CKR(CKR_CANCEL)
    KW_CKR(CKR_HOST_MEMORY)
    KW_CKR(CKR_SLOT_ID_INVALID)
    KW_CKR(CKR_GENERAL_ERROR)
    KW_CKR(CKR_FUNCTION_FAILED)
    KW_CKR(CKR_ARGUMENTS_BAD)
    KW_CKR(CKR_ATTRIBUTE_READ_ONLY)
    KW_CKR(CKR_ATTRIBUTE_SENSITIVE)
    KW_CKR(CKR_ATTRIBUTE_TYPE_INVALID)
    KW_CKR(CKR_ATTRIBUTE_VALUE_INVALID)
    KW_CKR(CKR_DATA_INVALID)
    KW_CKR(CKR_DATA_LEN_RANGE)
    KW_CKR(CKR_DEVICE_ERROR)
    KW_CKR(CKR_DEVICE_MEMORY)
    KW_CKR(CKR_DEVICE_REMOVED)
    KW_CKR(CKR_ENCRYPTED_DATA_INVALID)
    KW_CKR(CKR_ENCRYPTED_DATA_LEN_RANGE)
    KW_CKR(CKR_FUNCTION_NOT_SUPPORTED)
    KW_CKR(CKR_KEY_HANDLE_INVALID)
    KW_CKR(CKR_KEY_SIZE_RANGE)
    KW_CKR(CKR_KEY_TYPE_INCONSISTENT)
    KW_CKR(CKR_KEY_FUNCTION_NOT_PERMITTED)
    KW_CKR(CKR_KEY_NOT_WRAPPABLE)
    KW_CKR(CKR_KEY_UNEXTRACTABLE)
    KW_CKR(CKR_MECHANISM_INVALID)
    KW_CKR(CKR_MECHANISM_PARAM_INVALID)
    KW_CKR(CKR_OBJECT_HANDLE_INVALID)
    KW_CKR(CKR_OPERATION_ACTIVE)
    KW_CKR(CKR_PIN_INCORRECT)
    KW_CKR(CKR_PIN_INVALID)
    KW_CKR(CKR_PIN_LEN_RANGE)
    KW_CKR(CKR_PIN_EXPIRED)
    KW_CKR(CKR_PIN_LOCKED)
    KW_CKR(CKR_SESSION_CLOSED)
    KW_CKR(CKR_SESSION_COUNT)
    KW_CKR(CKR_SESSION_HANDLE_INVALID)
    KW_CKR(CKR_SESSION_READ_ONLY)
    KW_CKR(CKR_TEMPLATE_INCOMPLETE)
    KW_CKR(CKR_TEMPLATE_INCONSISTENT)
    KW_CKR(CKR_TOKEN_NOT_PRESENT)
    KW_CKR(CKR_TOKEN_NOT_RECOGNIZED)
    KW_CKR(CKR_TOKEN_WRITE_PROTECTED)
    KW_CKR(CKR_UNWRAPPING_KEY_HANDLE_INVALID)
    KW_CKR(CKR_UNWRAPPING_KEY_SIZE_RANGE)
    KW_CKR(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT)
    KW_CKR(CKR_USER_ALREADY_LOGGED_IN)
    KW_CKR(CKR_USER_NOT_LOGGED_IN)
    KW_CKR(CKR_USER_PIN_NOT_INITIALIZED)
    KW_CKR(CKR_USER_TYPE_INVALID)
    KW_CKR(CKR_USER_ANOTHER_ALREADY_LOGGED_IN)
    KW_CKR(CKR_WRAPPED_KEY_INVALID)
    KW_CKR(CKR_WRAPPED_KEY_LEN_RANGE)
    KW_CKR(CKR_WRAPPING_KEY_HANDLE_INVALID)
    KW_CKR(CKR_WRAPPING_KEY_SIZE_RANGE)
    KW_CKR(CKR_WRAPPING_KEY_TYPE_INCONSISTENT)
    KW_CKR(CKR_BUFFER_TOO_SMALL)
    KW_CKR(CKR_CRYPTOKI_NOT_INITIALIZED)
    KW_CKR(CKR_CRYPTOKI_ALREADY_INITIALIZED)
    KW_CKR(CKR_FUNCTION_REJECTED)
#undef KW_CKR
    default:
      return "CKR_(vendor or unknown)";
  }
}

// Unreachable: the HSM or its session is gone, not the request's fault.
bool IsUnavailable(CK_RV rv) {
  switch (rv) {
    case CKR_HOST_MEMORY:
    case CKR_DEVICE_ERROR:
    case CKR_DEVICE_MEMORY:
    case CKR_DEVICE_REMOVED:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SESSION_CLOSED:
    case CKR_SESSION_COUNT:
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SLOT_ID_INVALID:
    case CKR_CRYPTOKI_NOT_INITIALIZED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_KEY_HANDLE_INVALID:
    case CKR_OBJECT_HANDLE_INVALID:
    case CKR_WRAPPING_KEY_HANDLE_INVALID:
    case CKR_UNWRAPPING_KEY_HANDLE_INVALID:
      return true;
    default:
      return false;
  }
}

// A session that no longer works: drop it rather than return it to the pool.
bool SessionBroken(CK_RV rv) { return rv != CKR_OK && IsUnavailable(rv); }

std::string Trimmed(const unsigned char* text, size_t size) {
  std::string out(reinterpret_cast<const char*>(text), size);
  while (!out.empty() && (out.back() == ' ' || out.back() == '\0')) out.pop_back();
  return out;
}

// Module is one loaded PKCS#11 library. C_Initialize happens once per process and path, and
// C_Finalize when the last provider using it is gone: two providers of one module (the old and
// new KEK of a rotation) must not finalize each other's sessions.
class Module {
 public:
  static absl::StatusOr<std::shared_ptr<Module>> Acquire(const std::string& path) {
    std::error_code ec;
    std::filesystem::path canonical = std::filesystem::canonical(path, ec);
    if (ec) {
      return FailedPreconditionError("cannot load PKCS#11 module {}: {}", path, ec.message());
    }
    std::lock_guard<std::mutex> lock(Mutex());
    auto& modules = Modules();
    if (auto it = modules.find(canonical.string()); it != modules.end()) {
      if (auto existing = it->second.module.lock()) return existing;
    }
    void* handle = dlopen(canonical.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      return FailedPreconditionError("cannot load PKCS#11 module {}: {}", path, dlerror());
    }
    auto get_list = reinterpret_cast<CK_C_GetFunctionList>(dlsym(handle, "C_GetFunctionList"));
    CK_FUNCTION_LIST_PTR functions = nullptr;
    if (get_list == nullptr || get_list(&functions) != CKR_OK || functions == nullptr) {
      dlclose(handle);
      return FailedPreconditionError("{} is not a PKCS#11 module (no C_GetFunctionList)", path);
    }
    // Security: CKF_OS_LOCKING_OK lets the module lock for itself; calls come from many threads.
    CK_C_INITIALIZE_ARGS args{};
    args.flags = CKF_OS_LOCKING_OK;
    const CK_RV rv = functions->C_Initialize(&args);
    if (rv != CKR_OK && rv != CKR_CRYPTOKI_ALREADY_INITIALIZED) {
      dlclose(handle);
      return MakeStatus(absl::StatusCode::kUnavailable, "PKCS#11 module {}: C_Initialize: {}", path,
                        RvName(rv));
    }
    // Someone else in the process initialized it: they finalize it too.
    const bool finalize = rv == CKR_OK;
    std::shared_ptr<Module> module(new Module(handle, functions, canonical.string(), finalize),
                                   [](Module* m) {
                                     std::lock_guard<std::mutex> guard(Mutex());
                                     delete m;
                                   });
    modules[canonical.string()] = Entry{module, module.get()};
    return module;
  }

  CK_FUNCTION_LIST_PTR f() const { return functions_; }
  const std::string& path() const { return path_; }

 private:
  Module(void* handle, CK_FUNCTION_LIST_PTR functions, std::string path, bool finalize)
      : handle_(handle), functions_(functions), path_(std::move(path)), finalize_(finalize) {}
  // Runs under Mutex() (the shared_ptr's deleter), so no Acquire of the same path interleaves.
  ~Module() {
    auto& modules = Modules();
    bool finalize = finalize_;
    if (auto it = modules.find(path_); it != modules.end()) {
      if (it->second.raw == this) {
        modules.erase(it);
      } else if (!it->second.module.expired()) {
        // A newer Module of this path was acquired while this one was being released; its
        // C_Initialize found the library initialized. It finalizes instead.
        it->second.raw->finalize_ = it->second.raw->finalize_ || finalize;
        finalize = false;
      }
    }
    if (finalize) functions_->C_Finalize(nullptr);
    dlclose(handle_);
  }

  struct Entry {
    std::weak_ptr<Module> module;
    Module* raw;  // for the destructor above; never dereferenced once `module` expired
  };

  static std::mutex& Mutex() {
    static std::mutex* mu = new std::mutex();
    return *mu;
  }
  static std::map<std::string, Entry>& Modules() {
    static auto* modules = new std::map<std::string, Entry>();
    return *modules;
  }

  void* const handle_;
  const CK_FUNCTION_LIST_PTR functions_;
  const std::string path_;
  bool finalize_;  // guarded by Mutex()
};

// FindSlot returns the slot whose token is labelled `label` (exactly one).
absl::StatusOr<CK_SLOT_ID> FindSlot(CK_FUNCTION_LIST_PTR f, const std::string& module,
                                    const std::string& label) {
  CK_ULONG count = 0;
  CK_RV rv = f->C_GetSlotList(CK_TRUE, nullptr, &count);
  std::vector<CK_SLOT_ID> slots(count);
  if (rv == CKR_OK && count > 0) rv = f->C_GetSlotList(CK_TRUE, slots.data(), &count);
  if (rv != CKR_OK) {
    return MakeStatus(absl::StatusCode::kUnavailable, "PKCS#11 module {}: C_GetSlotList: {}",
                      module, RvName(rv));
  }
  slots.resize(count);
  std::vector<CK_SLOT_ID> matches;
  for (CK_SLOT_ID slot : slots) {
    CK_TOKEN_INFO info{};
    if (f->C_GetTokenInfo(slot, &info) != CKR_OK) continue;
    if (Trimmed(info.label, sizeof(info.label)) == label) matches.push_back(slot);
  }
  if (matches.empty()) {
    return FailedPreconditionError("PKCS#11 module {} has no token labelled \"{}\"", module,
                                   Printable(label));
  }
  if (matches.size() > 1) {
    return FailedPreconditionError(
        "PKCS#11 module {} has {} tokens labelled \"{}\"; labels must be unique", module,
        matches.size(), Printable(label));
  }
  return matches[0];
}

// Token is a logged-in view of one token: session pool, login, and object lookup.
class Token {
 public:
  static absl::StatusOr<std::unique_ptr<Token>> Open(const Pkcs11Config& config, bool rw) {
    ASSIGN_OR_RETURN(std::shared_ptr<Module> module, Module::Acquire(config.module));
    CK_FUNCTION_LIST_PTR f = module->f();
    ASSIGN_OR_RETURN(CK_SLOT_ID slot, FindSlot(f, config.module, config.token));
    std::unique_ptr<Token> token(
        new Token(std::move(module), slot, config.token, config.pin.Clone(), rw));
    // Log in now, so that a wrong PIN is an error at start.
    ASSIGN_OR_RETURN(CK_SESSION_HANDLE session, token->OpenSession());
    token->Release(session, CKR_OK);
    return token;
  }

  ~Token() {
    std::lock_guard<std::mutex> lock(mu_);
    for (CK_SESSION_HANDLE session : idle_) f()->C_CloseSession(session);
  }

  CK_FUNCTION_LIST_PTR f() const { return module_->f(); }
  const std::string& label() const { return label_; }
  const std::string& module_path() const { return module_->path(); }

  // Acquire returns an idle session or opens (and logs in) a new one. When the token's slot
  // does not answer, the slots are scanned for the label again (a token that was removed and
  // inserted may come back in another slot).
  absl::StatusOr<CK_SESSION_HANDLE> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        const CK_SESSION_HANDLE session = idle_.back();
        idle_.pop_back();
        return session;
      }
    }
    absl::StatusOr<CK_SESSION_HANDLE> session = OpenSession();
    if (session.ok() || session.status().code() != absl::StatusCode::kUnavailable) return session;
    absl::StatusOr<CK_SLOT_ID> slot = FindSlot(f(), module_path(), label_);
    if (!slot.ok()) return session.status();
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot_ = *slot;
    }
    return OpenSession();
  }

  // Release returns a session to the pool after a call that ended with `rv`.
  void Release(CK_SESSION_HANDLE session, CK_RV rv) {
    if (!SessionBroken(rv)) {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_.size() < kMaxIdleSessions) {
        idle_.push_back(session);
        return;
      }
    }
    f()->C_CloseSession(session);
  }

  // DropIdle closes every pooled session (after an error that may have broken them all, such
  // as a token removed and reinserted).
  void DropIdle() {
    std::vector<CK_SESSION_HANDLE> idle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      idle.swap(idle_);
    }
    for (CK_SESSION_HANDLE session : idle) f()->C_CloseSession(session);
  }

  absl::Status Error(std::string_view what, CK_RV rv) const {
    return MakeStatus(
        IsUnavailable(rv) ? absl::StatusCode::kUnavailable : absl::StatusCode::kFailedPrecondition,
        "PKCS#11 token \"{}\" ({}): {}: {}", Printable(label_), module_path(), what, RvName(rv));
  }

 private:
  Token(std::shared_ptr<Module> module, CK_SLOT_ID slot, std::string label, SecretBytes pin,
        bool rw)
      : module_(std::move(module)),
        slot_(slot),
        label_(std::move(label)),
        pin_(std::move(pin)),
        rw_(rw) {}

  absl::StatusOr<CK_SESSION_HANDLE> OpenSession() {
    CK_SESSION_HANDLE session = CK_INVALID_HANDLE;
    const CK_FLAGS flags = CKF_SERIAL_SESSION | (rw_ ? CKF_RW_SESSION : 0);
    CK_SLOT_ID slot;
    {
      std::lock_guard<std::mutex> lock(mu_);
      slot = slot_;
    }
    CK_RV rv = f()->C_OpenSession(slot, flags, nullptr, nullptr, &session);
    if (rv != CKR_OK) {
      return MakeStatus(absl::StatusCode::kUnavailable,
                        "PKCS#11 token \"{}\" ({}): C_OpenSession: {}", Printable(label_),
                        module_path(), RvName(rv));
    }
    // The login state belongs to the application, not the session; logging in on every new
    // session also re-logs in after the token lost it (all sessions closed, token reset).
    const auto pin = pin_.Reveal(InsecureSecretAccess::Get());
    rv = f()->C_Login(session, CKU_USER, const_cast<CK_UTF8CHAR_PTR>(pin.data()), pin.size());
    if (rv != CKR_OK && rv != CKR_USER_ALREADY_LOGGED_IN) {
      f()->C_CloseSession(session);
      if (rv == CKR_PIN_INCORRECT || rv == CKR_PIN_LOCKED || rv == CKR_PIN_EXPIRED ||
          rv == CKR_PIN_LEN_RANGE || rv == CKR_PIN_INVALID) {
        return MakeStatus(absl::StatusCode::kPermissionDenied,
                          "PKCS#11 token \"{}\" ({}): the token refused the user PIN: {}",
                          Printable(label_), module_path(), RvName(rv));
      }
      // Anything else at login (CKR_GENERAL_ERROR from a token pulled at run time, device
      // errors) is the HSM being unusable, not the request's fault.
      return MakeStatus(absl::StatusCode::kUnavailable, "PKCS#11 token \"{}\" ({}): C_Login: {}",
                        Printable(label_), module_path(), RvName(rv));
    }
    return session;
  }

  const std::shared_ptr<Module> module_;
  CK_SLOT_ID slot_;  // guarded by mu_
  const std::string label_;
  const SecretBytes pin_;
  const bool rw_;
  std::mutex mu_;
  std::vector<CK_SESSION_HANDLE> idle_;  // guarded by mu_
};

// SessionLease returns its session to the pool (or closes it) when it goes out of scope.
class SessionLease {
 public:
  SessionLease(Token& token, CK_SESSION_HANDLE session) : token_(token), session_(session) {}
  ~SessionLease() { token_.Release(session_, rv_); }
  CK_SESSION_HANDLE get() const { return session_; }
  // Note records the outcome of a call on the session.
  CK_RV Note(CK_RV rv) {
    if (rv != CKR_OK) rv_ = rv;
    return rv;
  }

 private:
  Token& token_;
  const CK_SESSION_HANDLE session_;
  CK_RV rv_ = CKR_OK;
};

CK_BBOOL kTrue = CK_TRUE;
CK_BBOOL kFalse = CK_FALSE;

// FindKey returns the handles of the secret keys labelled `label`.
absl::StatusOr<std::vector<CK_OBJECT_HANDLE>> FindKeys(Token& token, CK_SESSION_HANDLE session,
                                                       const std::string& label) {
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_ATTRIBUTE search[] = {
      {CKA_CLASS, &cls, sizeof(cls)},
      {CKA_LABEL, const_cast<char*>(label.data()), label.size()},
  };
  CK_FUNCTION_LIST_PTR f = token.f();
  CK_RV rv = f->C_FindObjectsInit(session, search, 2);
  if (rv != CKR_OK) return token.Error("C_FindObjectsInit", rv);
  std::vector<CK_OBJECT_HANDLE> found(4);
  CK_ULONG count = 0;
  rv = f->C_FindObjects(session, found.data(), found.size(), &count);
  f->C_FindObjectsFinal(session);
  if (rv != CKR_OK) return token.Error("C_FindObjects", rv);
  found.resize(count);
  return found;
}

// FindWrappingKey returns the handle of the one AES wrap/unwrap key labelled `label`.
absl::StatusOr<CK_OBJECT_HANDLE> FindWrappingKey(Token& token, CK_SESSION_HANDLE session,
                                                 const std::string& label) {
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> keys, FindKeys(token, session, label));
  if (keys.empty()) {
    return FailedPreconditionError("PKCS#11 token \"{}\" has no secret key labelled \"{}\"",
                                   Printable(token.label()), Printable(label));
  }
  if (keys.size() > 1) {
    return FailedPreconditionError(
        "PKCS#11 token \"{}\" has {} secret keys labelled \"{}\"; the label must be unique",
        Printable(token.label()), keys.size(), Printable(label));
  }
  CK_KEY_TYPE type = 0;
  CK_BBOOL wrap = CK_FALSE, unwrap = CK_FALSE;
  CK_ATTRIBUTE attrs[] = {
      {CKA_KEY_TYPE, &type, sizeof(type)},
      {CKA_WRAP, &wrap, sizeof(wrap)},
      {CKA_UNWRAP, &unwrap, sizeof(unwrap)},
  };
  const CK_RV rv = token.f()->C_GetAttributeValue(session, keys[0], attrs, 3);
  if (rv != CKR_OK) return token.Error("C_GetAttributeValue of the key", rv);
  if (type != CKK_AES || wrap != CK_TRUE || unwrap != CK_TRUE) {
    return FailedPreconditionError(
        "PKCS#11 key \"{}\" on token \"{}\" is not an AES key with CKA_WRAP and CKA_UNWRAP",
        Printable(label), Printable(token.label()));
  }
  return keys[0];
}

class Pkcs11Provider : public KekProvider {
 public:
  Pkcs11Provider(std::unique_ptr<Token> token, std::string key_label, CK_OBJECT_HANDLE key)
      : token_(std::move(token)), key_label_(std::move(key_label)), key_(key) {}

  absl::StatusOr<std::vector<uint8_t>> Wrap(const SecretBytes& plaintext) override {
    if (plaintext.empty() || plaintext.size() > 512) {
      return InvalidArgumentError("{}: can wrap 1 to 512 bytes, not {}", Describe(),
                                  plaintext.size());
    }
    ASSIGN_OR_RETURN(CK_SESSION_HANDLE handle, Session());
    SessionLease session(*token_, handle);
    CK_FUNCTION_LIST_PTR f = token_->f();
    // plaintext || 0x80 || 0x00... to a multiple of 8 (ISO/IEC 7816-4 padding): RFC 5649 then
    // adds no padding of its own. SoftHSM2 2.6 returns RFC 5649-unwrapped data with its zero
    // padding still attached, which would make the plaintext's length ambiguous.
    const auto in = plaintext.Reveal(InsecureSecretAccess::Get());
    SecretBytes padded((in.size() / 8 + 1) * 8);
    const auto bytes = padded.MutableReveal(InsecureSecretAccess::Get());
    std::copy(in.begin(), in.end(), bytes.begin());
    bytes[in.size()] = 0x80;
    // The padded plaintext enters the HSM as a short-lived session object, so that C_WrapKey can
    // wrap it; it is destroyed before returning.
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE templ[] = {
        {CKA_CLASS, &cls, sizeof(cls)},
        {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &kFalse, sizeof(kFalse)},
        {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
        {CKA_SENSITIVE, &kFalse, sizeof(kFalse)},
        {CKA_EXTRACTABLE, &kTrue, sizeof(kTrue)},
        {CKA_VALUE, const_cast<uint8_t*>(bytes.data()), bytes.size()},
    };
    CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
    CK_RV rv = session.Note(
        f->C_CreateObject(session.get(), templ, sizeof(templ) / sizeof(templ[0]), &object));
    if (rv != CKR_OK) return CallError("wrap", "C_CreateObject", rv);
    absl::StatusOr<CK_OBJECT_HANDLE> key = Key(session.get());
    if (!key.ok()) {
      f->C_DestroyObject(session.get(), object);
      return key.status();
    }
    CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    CK_ULONG size = 0;
    rv = session.Note(f->C_WrapKey(session.get(), &mechanism, *key, object, nullptr, &size));
    std::vector<uint8_t> wrapped(size);
    if (rv == CKR_OK) {
      rv = session.Note(
          f->C_WrapKey(session.get(), &mechanism, *key, object, wrapped.data(), &size));
    }
    f->C_DestroyObject(session.get(), object);
    if (rv != CKR_OK) return CallError("wrap", "C_WrapKey", rv);
    wrapped.resize(size);
    return wrapped;
  }

  absl::StatusOr<SecretBytes> Unwrap(std::span<const uint8_t> wrapped) override {
    if (wrapped.empty() || wrapped.size() > kMaxWrappedSize) {
      return Refused();
    }
    ASSIGN_OR_RETURN(CK_SESSION_HANDLE handle, Session());
    SessionLease session(*token_, handle);
    CK_FUNCTION_LIST_PTR f = token_->f();
    CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
    CK_KEY_TYPE type = CKK_GENERIC_SECRET;
    CK_ATTRIBUTE templ[] = {
        {CKA_CLASS, &cls, sizeof(cls)},           {CKA_KEY_TYPE, &type, sizeof(type)},
        {CKA_TOKEN, &kFalse, sizeof(kFalse)},     {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
        {CKA_SENSITIVE, &kFalse, sizeof(kFalse)}, {CKA_EXTRACTABLE, &kTrue, sizeof(kTrue)},
    };
    ASSIGN_OR_RETURN(CK_OBJECT_HANDLE key, Key(session.get()));
    CK_MECHANISM mechanism{CKM_AES_KEY_WRAP_PAD, nullptr, 0};
    CK_OBJECT_HANDLE object = CK_INVALID_HANDLE;
    CK_RV rv = session.Note(f->C_UnwrapKey(session.get(), &mechanism, key,
                                           const_cast<uint8_t*>(wrapped.data()), wrapped.size(),
                                           templ, sizeof(templ) / sizeof(templ[0]), &object));
    if (rv != CKR_OK) {
      if (IsUnavailable(rv)) return CallError("unwrap", "C_UnwrapKey", rv);
      // Security: one answer for every ciphertext the HSM does not accept (RFC 5649's integrity
      // check, a wrong length, another key): no oracle.
      return Refused();
    }
    CK_ATTRIBUTE value{CKA_VALUE, nullptr, 0};
    rv = session.Note(f->C_GetAttributeValue(session.get(), object, &value, 1));
    absl::StatusOr<SecretBytes> result = Refused();  // not a plaintext Wrap could have made
    if (rv != CKR_OK) {
      result = CallError("unwrap", "C_GetAttributeValue", rv);
    } else if (value.ulValueLen != CK_UNAVAILABLE_INFORMATION && value.ulValueLen <= 1024) {
      SecretBytes plaintext(value.ulValueLen);
      value.pValue = plaintext.MutableReveal(InsecureSecretAccess::Get()).data();
      rv = session.Note(f->C_GetAttributeValue(session.get(), object, &value, 1));
      if (rv == CKR_OK && value.ulValueLen == plaintext.size()) {
        result = Unpad(plaintext);
      } else {
        result = CallError("unwrap", "C_GetAttributeValue", rv);
      }
    }
    f->C_DestroyObject(session.get(), object);
    return result;
  }

  std::string kek_id() const override {
    return fmt::format("pkcs11:{}/{}", token_->label(), key_label_);
  }

  std::string Describe() const override {
    return fmt::format("PKCS#11 key \"{}\" on token \"{}\" ({})", Printable(key_label_),
                       Printable(token_->label()), token_->module_path());
  }

 private:
  absl::StatusOr<CK_SESSION_HANDLE> Session() {
    absl::StatusOr<CK_SESSION_HANDLE> session = token_->Acquire();
    if (!session.ok() && session.status().code() == absl::StatusCode::kUnavailable) {
      token_->DropIdle();
    }
    return session;
  }

  // Unpad removes Wrap's 0x80 0x00... padding (and any zero padding the HSM left after it).
  // The HSM authenticated the plaintext, so this is no padding oracle; it still answers with the
  // one generic refusal.
  absl::StatusOr<SecretBytes> Unpad(const SecretBytes& padded) const {
    const auto bytes = padded.Reveal(InsecureSecretAccess::Get());
    size_t end = bytes.size();
    while (end > 0 && bytes[end - 1] == 0) --end;
    if (end <= 1 || bytes[end - 1] != 0x80) return Refused();
    return SecretBytes(bytes.first(end - 1));
  }

  absl::Status Refused() const {
    return PermissionDeniedError(
        "{} refused to unwrap the DEK (tampered, or made under another key)", Describe());
  }

  // Key returns the wrapping key's handle, looking it up again after a handle error (a token
  // that was removed and inserted gives its objects new handles).
  absl::StatusOr<CK_OBJECT_HANDLE> Key(CK_SESSION_HANDLE session) {
    std::lock_guard<std::mutex> lock(key_mu_);
    if (key_ != CK_INVALID_HANDLE) return key_;
    absl::StatusOr<CK_OBJECT_HANDLE> key = FindWrappingKey(*token_, session, key_label_);
    if (!key.ok()) {
      return MakeStatus(absl::StatusCode::kUnavailable, "{}: the key is gone: {}", Describe(),
                        StatusMessage(key.status()));
    }
    key_ = *key;
    return key_;
  }

  absl::Status CallError(std::string_view op, std::string_view call, CK_RV rv) {
    if (IsUnavailable(rv)) {
      // A removed token or a lost login breaks every pooled session and may change the key's
      // handle; start afresh next time.
      token_->DropIdle();
      {
        std::lock_guard<std::mutex> lock(key_mu_);
        key_ = CK_INVALID_HANDLE;
      }
      return MakeStatus(absl::StatusCode::kUnavailable, "{}: {} failed: {}: {}", Describe(), op,
                        call, RvName(rv));
    }
    // CKR_GENERAL_ERROR / CKR_FUNCTION_FAILED and the like: the HSM failed, retry later.
    return MakeStatus(absl::StatusCode::kUnavailable, "{}: {} failed: {}: {}", Describe(), op, call,
                      RvName(rv));
  }

  const std::unique_ptr<Token> token_;
  const std::string key_label_;
  std::mutex key_mu_;
  CK_OBJECT_HANDLE key_;  // guarded by key_mu_; CK_INVALID_HANDLE: look it up again
};

absl::Status CheckConfig(const Pkcs11Config& config) {
  if (config.module.empty() || config.token.empty() || config.key.empty() || config.pin.empty()) {
    return InvalidArgumentError("kms://pkcs11 needs module=, token=, pin= and key=");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<KekProvider>> NewPkcs11Provider(const Pkcs11Config& config) {
  RETURN_IF_ERROR(CheckConfig(config));
  ASSIGN_OR_RETURN(std::unique_ptr<Token> token, Token::Open(config, /*rw=*/false));
  ASSIGN_OR_RETURN(CK_SESSION_HANDLE handle, token->Acquire());
  absl::StatusOr<CK_OBJECT_HANDLE> key = [&]() -> absl::StatusOr<CK_OBJECT_HANDLE> {
    SessionLease session(*token, handle);
    return FindWrappingKey(*token, session.get(), config.key);
  }();
  if (!key.ok()) return key.status();
  return std::unique_ptr<KekProvider>(new Pkcs11Provider(std::move(token), config.key, *key));
}

absl::Status CreatePkcs11AesKey(const Pkcs11Config& config, size_t key_bytes) {
  RETURN_IF_ERROR(CheckConfig(config));
  if (key_bytes != 16 && key_bytes != 24 && key_bytes != 32) {
    return InvalidArgumentError("an AES key is 16, 24 or 32 bytes, not {}", key_bytes);
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Token> token, Token::Open(config, /*rw=*/true));
  ASSIGN_OR_RETURN(CK_SESSION_HANDLE handle, token->Acquire());
  SessionLease session(*token, handle);
  ASSIGN_OR_RETURN(std::vector<CK_OBJECT_HANDLE> existing,
                   FindKeys(*token, session.get(), config.key));
  if (!existing.empty()) {
    return AlreadyExistsError("PKCS#11 token \"{}\" already has a key labelled \"{}\"",
                              Printable(config.token), Printable(config.key));
  }
  CK_OBJECT_CLASS cls = CKO_SECRET_KEY;
  CK_KEY_TYPE type = CKK_AES;
  CK_ULONG length = key_bytes;
  std::string label = config.key;
  CK_ATTRIBUTE templ[] = {
      {CKA_CLASS, &cls, sizeof(cls)},           {CKA_KEY_TYPE, &type, sizeof(type)},
      {CKA_VALUE_LEN, &length, sizeof(length)}, {CKA_LABEL, label.data(), label.size()},
      {CKA_TOKEN, &kTrue, sizeof(kTrue)},       {CKA_PRIVATE, &kTrue, sizeof(kTrue)},
      {CKA_SENSITIVE, &kTrue, sizeof(kTrue)},   {CKA_EXTRACTABLE, &kFalse, sizeof(kFalse)},
      {CKA_WRAP, &kTrue, sizeof(kTrue)},        {CKA_UNWRAP, &kTrue, sizeof(kTrue)},
      {CKA_ENCRYPT, &kTrue, sizeof(kTrue)},     {CKA_DECRYPT, &kTrue, sizeof(kTrue)},
  };
  CK_MECHANISM mechanism{CKM_AES_KEY_GEN, nullptr, 0};
  CK_OBJECT_HANDLE key = CK_INVALID_HANDLE;
  const CK_RV rv = session.Note(token->f()->C_GenerateKey(session.get(), &mechanism, templ,
                                                          sizeof(templ) / sizeof(templ[0]), &key));
  if (rv != CKR_OK) return token->Error("C_GenerateKey", rv);
  return absl::OkStatus();
}

void RegisterPkcs11() {
  RegisterKekProvider("pkcs11",
                      [](const UriParams& params,
                         const RemoteOptions&) -> absl::StatusOr<std::unique_ptr<KekProvider>> {
                        RETURN_IF_ERROR(CheckUriParams(params, {"module", "token", "pin", "key"},
                                                       {}, "kms://pkcs11"));
                        Pkcs11Config config;
                        config.module = params.find("module")->second;
                        config.token = params.find("token")->second;
                        const std::string& pin = params.find("pin")->second;
                        config.pin = SecretBytes(std::span<const uint8_t>(
                            reinterpret_cast<const uint8_t*>(pin.data()), pin.size()));
                        config.key = params.find("key")->second;
                        return NewPkcs11Provider(config);
                      });
}

}  // namespace keywarden::byok
