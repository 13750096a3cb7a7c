#include "sn_shim.h"

#define SN_SHIM_VERSION 1

SN_EXPORT uint32_t sn_version(void) { return SN_SHIM_VERSION; }

SN_EXPORT uint32_t sn_features(void)
{
    uint32_t f = 0;
#ifdef SN_HAVE_URING
    f |= SN_FEATURE_URING;
#endif
#ifdef SN_HAVE_VERBS
    f |= SN_FEATURE_VERBS;
#endif
    return f;
}
