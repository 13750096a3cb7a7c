#ifndef SN_SHIM_H
#define SN_SHIM_H
#include <stdint.h>
#include <stddef.h>

#define SN_EXPORT __attribute__((visibility("default")))

#define SN_FEATURE_URING 0x1u
#define SN_FEATURE_VERBS 0x2u

/* One completion as the managed side reads it. Layout shared with C# (SnCompletion). */
struct sn_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};
_Static_assert(sizeof(struct sn_cqe) == 16, "sn_cqe size");
_Static_assert(offsetof(struct sn_cqe, user_data) == 0, "sn_cqe.user_data");
_Static_assert(offsetof(struct sn_cqe, res) == 8, "sn_cqe.res");
_Static_assert(offsetof(struct sn_cqe, flags) == 12, "sn_cqe.flags");

/* Buffer description for fixed-buffer registration. Layout of struct iovec on LP64. */
struct sn_iovec {
    void *base;
    size_t len;
};
_Static_assert(sizeof(struct sn_iovec) == 16, "sn_iovec size");

#endif
