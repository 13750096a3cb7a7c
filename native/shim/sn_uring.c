/* io_uring through liburing: the prep/peek helpers liburing only offers as static inline functions. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <liburing.h>
#include "sn_shim.h"

_Static_assert(sizeof(struct sn_iovec) == sizeof(struct iovec), "iovec layout");
_Static_assert(offsetof(struct sn_iovec, len) == offsetof(struct iovec, iov_len), "iovec.len");

SN_EXPORT struct io_uring *sn_uring_create(uint32_t entries, uint32_t flags, int *err)
{
    struct io_uring *ring = calloc(1, sizeof(*ring));
    if (!ring) {
        *err = -ENOMEM;
        return NULL;
    }
    int rc = io_uring_queue_init(entries, ring, flags);
    if (rc < 0) {
        free(ring);
        *err = rc;
        return NULL;
    }
    *err = 0;
    return ring;
}

SN_EXPORT void sn_uring_destroy(struct io_uring *ring)
{
    if (!ring)
        return;
    io_uring_queue_exit(ring);
    free(ring);
}

SN_EXPORT int sn_uring_register_buffers(struct io_uring *ring, const struct sn_iovec *iov, uint32_t count)
{
    return io_uring_register_buffers(ring, (const struct iovec *)iov, count);
}

SN_EXPORT int sn_uring_register_eventfd(struct io_uring *ring, int fd)
{
    return io_uring_register_eventfd(ring, fd);
}

SN_EXPORT uint32_t sn_uring_sq_space_left(struct io_uring *ring)
{
    return io_uring_sq_space_left(ring);
}

/* buf_index < 0: plain read; otherwise a read into registered buffer buf_index. */
SN_EXPORT int sn_uring_prep_read(struct io_uring *ring, int fd, void *buf, uint32_t len, uint64_t offset,
                                 int buf_index, uint64_t user_data)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe)
        return -EBUSY;
    if (buf_index >= 0)
        io_uring_prep_read_fixed(sqe, fd, buf, len, offset, buf_index);
    else
        io_uring_prep_read(sqe, fd, buf, len, offset);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

SN_EXPORT int sn_uring_prep_write(struct io_uring *ring, int fd, const void *buf, uint32_t len, uint64_t offset,
                                  int buf_index, int rw_flags, uint64_t user_data)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe)
        return -EBUSY;
    if (buf_index >= 0)
        io_uring_prep_write_fixed(sqe, fd, buf, len, offset, buf_index);
    else
        io_uring_prep_write(sqe, fd, buf, len, offset);
    sqe->rw_flags = rw_flags;
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

SN_EXPORT int sn_uring_prep_fsync(struct io_uring *ring, int fd, uint32_t fsync_flags, uint64_t user_data)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_fsync(sqe, fd, fsync_flags);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

SN_EXPORT int sn_uring_prep_fallocate(struct io_uring *ring, int fd, int mode, uint64_t offset, uint64_t len,
                                      uint64_t user_data)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe)
        return -EBUSY;
    io_uring_prep_fallocate(sqe, fd, mode, offset, len);
    io_uring_sqe_set_data64(sqe, user_data);
    return 0;
}

SN_EXPORT int sn_uring_submit(struct io_uring *ring)
{
    return io_uring_submit(ring);
}

/* Copies up to max completions into out and marks them seen; returns how many. Never blocks. */
SN_EXPORT int sn_uring_reap(struct io_uring *ring, struct sn_cqe *out, uint32_t max)
{
    struct io_uring_cqe *cqes[64];
    if (max > 64)
        max = 64;
    unsigned n = io_uring_peek_batch_cqe(ring, cqes, max);
    for (unsigned i = 0; i < n; i++) {
        out[i].user_data = io_uring_cqe_get_data64(cqes[i]);
        out[i].res = cqes[i]->res;
        out[i].flags = cqes[i]->flags;
    }
    if (n)
        io_uring_cq_advance(ring, n);
    return (int)n;
}
