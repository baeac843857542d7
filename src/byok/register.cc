// RegisterAllProviders: every KEK provider and DEK store this build has.
#include <mutex>

#include "keywarden/byok/byok.h"
#include "keywarden/byok/pkcs11.h"

// --- Providers built by other modules (issue 6). CMakeLists.txt defines KEYWARDEN_HAVE_KMIP /
// KEYWARDEN_HAVE_AWS (and links their libraries) when the targets keywarden_kmip /
// keywarden_aws exist. Add further providers (Azure, GCP, etcd, ...) the same way.
#if defined(KEYWARDEN_HAVE_KMIP)
#include "keywarden/byok/kmip.h"
#endif
#if defined(KEYWARDEN_HAVE_AWS)
#include "keywarden/byok/aws.h"
#endif
#if defined(KEYWARDEN_HAVE_ETCD)
#include "keywarden/byok/etcd.h"
#endif
#if defined(KEYWARDEN_HAVE_AZURE)
#include "keywarden/byok/azure.h"
#endif
#if defined(KEYWARDEN_HAVE_AZUREKV)
#include "keywarden/byok/azure_kv.h"
#endif
#if defined(KEYWARDEN_HAVE_GCP)
#include "keywarden/byok/gcp.h"
#endif

namespace keywarden::byok {

void RegisterAllProviders() {
  static std::once_flag once;
  std::call_once(once, [] {
    RegisterSqlite();
    RegisterPkcs11();
    // --- other modules' registrations go here (see the includes above).
#if defined(KEYWARDEN_HAVE_KMIP)
    RegisterKmip();
#endif
#if defined(KEYWARDEN_HAVE_AWS)
    RegisterAws();
#endif
#if defined(KEYWARDEN_HAVE_ETCD)
    RegisterEtcd();
#endif
#if defined(KEYWARDEN_HAVE_AZURE)
    RegisterAzure();
#endif
#if defined(KEYWARDEN_HAVE_AZUREKV)
    RegisterAzureKeyVault();
#endif
#if defined(KEYWARDEN_HAVE_GCP)
    RegisterGcp();
#endif
  });
}

}  // namespace keywarden::byok
