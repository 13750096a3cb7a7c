/* libsnverbs: libibverbs / librdmacm for the managed side, with flat parameters. Wraps what verbs
 * only offers as static inline functions (post send/recv, poll CQ, notify) and the calls whose
 * arguments are awkward structs (rdma_cm connection parameters, events, QP attributes). Built only
 * where the rdma-core headers exist, as its own library so libsnshim loads without rdma-core. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include "sn_shim.h"

/* One work completion as the managed side reads it (SnWorkCompletion). */
struct sn_wc {
    uint64_t wr_id;
    uint32_t status;
    uint32_t opcode;
    uint32_t byte_len;
    uint32_t imm_data;
    uint32_t wc_flags;
    uint32_t qp_num;
    uint32_t vendor_err;
    uint32_t reserved;
};
_Static_assert(sizeof(struct sn_wc) == 40, "sn_wc size");
_Static_assert(offsetof(struct sn_wc, status) == 8, "sn_wc.status");
_Static_assert(offsetof(struct sn_wc, byte_len) == 16, "sn_wc.byte_len");
_Static_assert(offsetof(struct sn_wc, qp_num) == 28, "sn_wc.qp_num");

/* One send work request (one SGE) as the managed side queues it (SnSendWr), for sn_post_send_batch. */
struct sn_send_wr {
    uint64_t wr_id;
    uint64_t addr;
    uint64_t remote_addr;
    uint32_t length;
    uint32_t lkey;
    uint32_t rkey;
    uint32_t imm_or_invalidate;
    int32_t opcode;
    int32_t flags;
};
_Static_assert(sizeof(struct sn_send_wr) == 48, "sn_send_wr size");
_Static_assert(offsetof(struct sn_send_wr, remote_addr) == 16, "sn_send_wr.remote_addr");
_Static_assert(offsetof(struct sn_send_wr, length) == 24, "sn_send_wr.length");
_Static_assert(offsetof(struct sn_send_wr, imm_or_invalidate) == 36, "sn_send_wr.imm_or_invalidate");
_Static_assert(offsetof(struct sn_send_wr, opcode) == 40, "sn_send_wr.opcode");

/* One connection manager event (SnCmEvent). The private data is copied (at most 64 bytes). */
struct sn_cm_event {
    void *event;           /* to pass back to sn_cm_ack_event */
    void *id;
    void *listen_id;
    int32_t type;
    int32_t status;
    uint8_t private_data_len;
    uint8_t responder_resources; /* connect request / response: the peer's offer, as rdma_cm reports it */
    uint8_t initiator_depth;
    uint8_t reserved[5];
    uint8_t private_data[64];
};
_Static_assert(sizeof(struct sn_cm_event) == 104, "sn_cm_event size");
_Static_assert(offsetof(struct sn_cm_event, type) == 24, "sn_cm_event.type");
_Static_assert(offsetof(struct sn_cm_event, private_data_len) == 32, "sn_cm_event.private_data_len");
_Static_assert(offsetof(struct sn_cm_event, responder_resources) == 33, "sn_cm_event.responder_resources");
_Static_assert(offsetof(struct sn_cm_event, initiator_depth) == 34, "sn_cm_event.initiator_depth");
_Static_assert(offsetof(struct sn_cm_event, private_data) == 40, "sn_cm_event.private_data");

SN_EXPORT uint32_t sn_verbs_version(void) { return 3; }

/* Device names separated by '\n' into buf; returns the number of devices or -errno. */
SN_EXPORT int sn_list_devices(char *buf, int len)
{
    int n = 0, used = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    if (!list)
        return -errno;
    if (len > 0)
        buf[0] = 0;
    for (int i = 0; i < n; i++) {
        const char *name = ibv_get_device_name(list[i]);
        int l = (int)strlen(name);
        if (used + l + 2 <= len) {
            memcpy(buf + used, name, l);
            used += l;
            buf[used++] = '\n';
            buf[used] = 0;
        }
    }
    ibv_free_device_list(list);
    return n;
}

static int fill_addr(struct sockaddr_storage *ss, const char *ip, int port)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1) {
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        return 0;
    }
    return -EINVAL;
}

/* ---- connection manager ---- */

SN_EXPORT struct rdma_event_channel *sn_cm_create_channel(int *err)
{
    struct rdma_event_channel *ch = rdma_create_event_channel();
    if (!ch) {
        *err = -errno;
        return NULL;
    }
    int flags = fcntl(ch->fd, F_GETFL);
    fcntl(ch->fd, F_SETFL, flags | O_NONBLOCK);
    *err = 0;
    return ch;
}

SN_EXPORT int sn_cm_channel_fd(struct rdma_event_channel *ch) { return ch->fd; }
SN_EXPORT void sn_cm_destroy_channel(struct rdma_event_channel *ch) { rdma_destroy_event_channel(ch); }

SN_EXPORT struct rdma_cm_id *sn_cm_create_id(struct rdma_event_channel *ch, void *context, int *err)
{
    struct rdma_cm_id *id = NULL;
    if (rdma_create_id(ch, &id, context, RDMA_PS_TCP)) {
        *err = -errno;
        return NULL;
    }
    *err = 0;
    return id;
}

SN_EXPORT int sn_cm_destroy_id(struct rdma_cm_id *id) { return rdma_destroy_id(id) ? -errno : 0; }

SN_EXPORT int sn_cm_bind(struct rdma_cm_id *id, const char *ip, int port)
{
    struct sockaddr_storage ss;
    int rc = fill_addr(&ss, ip, port);
    if (rc)
        return rc;
    return rdma_bind_addr(id, (struct sockaddr *)&ss) ? -errno : 0;
}

SN_EXPORT int sn_cm_listen(struct rdma_cm_id *id, int backlog) { return rdma_listen(id, backlog) ? -errno : 0; }

SN_EXPORT int sn_cm_local_port(struct rdma_cm_id *id) { return ntohs(rdma_get_src_port(id)); }

/* The peer's address as "ip:port" (IPv6: "[ip]:port") into buf; returns its length or -errno. */
SN_EXPORT int sn_cm_peer_addr(struct rdma_cm_id *id, char *buf, int len)
{
    struct sockaddr *sa = rdma_get_peer_addr(id);
    char ip[INET6_ADDRSTRLEN];
    int n;
    if (!sa || len <= 0)
        return -EINVAL;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)sa;
        if (!inet_ntop(AF_INET, &in4->sin_addr, ip, sizeof(ip)))
            return -errno;
        n = snprintf(buf, (size_t)len, "%s:%u", ip, ntohs(in4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        if (!inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof(ip)))
            return -errno;
        n = snprintf(buf, (size_t)len, "[%s]:%u", ip, ntohs(in6->sin6_port));
    } else {
        return -EAFNOSUPPORT;
    }
    return n < len ? n : len - 1;
}

SN_EXPORT int sn_cm_resolve_addr(struct rdma_cm_id *id, const char *ip, int port, int timeout_ms)
{
    struct sockaddr_storage ss;
    int rc = fill_addr(&ss, ip, port);
    if (rc)
        return rc;
    return rdma_resolve_addr(id, NULL, (struct sockaddr *)&ss, timeout_ms) ? -errno : 0;
}

SN_EXPORT int sn_cm_resolve_route(struct rdma_cm_id *id, int timeout_ms) { return rdma_resolve_route(id, timeout_ms) ? -errno : 0; }

/* Next event without blocking: 1 with *out filled, 0 when none is pending, -errno on failure. */
SN_EXPORT int sn_cm_get_event(struct rdma_event_channel *ch, struct sn_cm_event *out)
{
    struct rdma_cm_event *ev = NULL;
    if (rdma_get_cm_event(ch, &ev)) {
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -errno;
    }
    memset(out, 0, sizeof(*out));
    out->event = ev;
    out->id = ev->id;
    out->listen_id = ev->listen_id;
    out->type = ev->event;
    out->status = ev->status;
    const void *pd = NULL;
    uint8_t pdl = 0;
    if (ev->id && ev->id->ps == RDMA_PS_TCP) {
        pd = ev->param.conn.private_data;
        pdl = ev->param.conn.private_data_len;
        out->responder_resources = ev->param.conn.responder_resources;
        out->initiator_depth = ev->param.conn.initiator_depth;
    }
    if (pd && pdl) {
        if (pdl > sizeof(out->private_data))
            pdl = sizeof(out->private_data);
        memcpy(out->private_data, pd, pdl);
        out->private_data_len = pdl;
    }
    return 1;
}

SN_EXPORT int sn_cm_ack_event(void *event) { return rdma_ack_cm_event((struct rdma_cm_event *)event) ? -errno : 0; }

SN_EXPORT struct ibv_context *sn_cm_verbs(struct rdma_cm_id *id) { return id->verbs; }
SN_EXPORT struct ibv_qp *sn_cm_qp(struct rdma_cm_id *id) { return id->qp; }
SN_EXPORT void *sn_cm_context(struct rdma_cm_id *id) { return id->context; }
SN_EXPORT void sn_cm_set_context(struct rdma_cm_id *id, void *context) { id->context = context; }

SN_EXPORT int sn_cm_create_qp(struct rdma_cm_id *id, struct ibv_pd *pd, struct ibv_cq *send_cq, struct ibv_cq *recv_cq,
                              int max_send_wr, int max_recv_wr, int max_send_sge, int max_recv_sge, int max_inline)
{
    struct ibv_qp_init_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.qp_type = IBV_QPT_RC;
    attr.send_cq = send_cq;
    attr.recv_cq = recv_cq;
    attr.cap.max_send_wr = max_send_wr;
    attr.cap.max_recv_wr = max_recv_wr;
    attr.cap.max_send_sge = max_send_sge;
    attr.cap.max_recv_sge = max_recv_sge;
    attr.cap.max_inline_data = max_inline;
    attr.sq_sig_all = 0;
    return rdma_create_qp(id, pd, &attr) ? -errno : 0;
}

SN_EXPORT void sn_cm_destroy_qp(struct rdma_cm_id *id) { rdma_destroy_qp(id); }

SN_EXPORT int sn_cm_connect(struct rdma_cm_id *id, const void *pdata, int len, int responder_resources, int initiator_depth,
                            int retry_count, int rnr_retry_count)
{
    struct rdma_conn_param p;
    memset(&p, 0, sizeof(p));
    p.private_data = pdata;
    p.private_data_len = (uint8_t)len;
    p.responder_resources = (uint8_t)responder_resources;
    p.initiator_depth = (uint8_t)initiator_depth;
    p.retry_count = (uint8_t)retry_count;
    p.rnr_retry_count = (uint8_t)rnr_retry_count;
    return rdma_connect(id, &p) ? -errno : 0;
}

SN_EXPORT int sn_cm_accept(struct rdma_cm_id *id, const void *pdata, int len, int responder_resources, int initiator_depth)
{
    struct rdma_conn_param p;
    memset(&p, 0, sizeof(p));
    p.private_data = pdata;
    p.private_data_len = (uint8_t)len;
    p.responder_resources = (uint8_t)responder_resources;
    p.initiator_depth = (uint8_t)initiator_depth;
    p.rnr_retry_count = 7;
    return rdma_accept(id, &p) ? -errno : 0;
}

SN_EXPORT int sn_cm_reject(struct rdma_cm_id *id, const void *pdata, int len)
{
    return rdma_reject(id, pdata, (uint8_t)len) ? -errno : 0;
}

/* The local ACK timeout (4.096 us * 2^timeout) the id's RC QP gets when rdma_cm moves it to RTS: set before
 * rdma_connect / rdma_accept (SPDK's transport_ack_timeout). */
SN_EXPORT int sn_cm_set_ack_timeout(struct rdma_cm_id *id, int timeout)
{
    uint8_t t = (uint8_t)timeout;
    return rdma_set_option(id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &t, sizeof(t)) ? -errno : 0;
}

SN_EXPORT int sn_cm_disconnect(struct rdma_cm_id *id) { return rdma_disconnect(id) ? -errno : 0; }

/* Moves an id (an accepted connection) to its own event channel. */
SN_EXPORT int sn_cm_migrate(struct rdma_cm_id *id, struct rdma_event_channel *ch) { return rdma_migrate_id(id, ch) ? -errno : 0; }

/* ---- verbs ---- */

SN_EXPORT struct ibv_pd *sn_alloc_pd(struct ibv_context *ctx) { return ibv_alloc_pd(ctx); }
SN_EXPORT int sn_dealloc_pd(struct ibv_pd *pd) { return ibv_dealloc_pd(pd) ? -errno : 0; }

SN_EXPORT struct ibv_mr *sn_reg_mr(struct ibv_pd *pd, void *addr, size_t len, int access, int *err)
{
    struct ibv_mr *mr = ibv_reg_mr(pd, addr, len, access);
    *err = mr ? 0 : -errno;
    return mr;
}

SN_EXPORT uint32_t sn_mr_lkey(struct ibv_mr *mr) { return mr->lkey; }
SN_EXPORT uint32_t sn_mr_rkey(struct ibv_mr *mr) { return mr->rkey; }
SN_EXPORT int sn_dereg_mr(struct ibv_mr *mr) { return ibv_dereg_mr(mr) ? -errno : 0; }

SN_EXPORT struct ibv_comp_channel *sn_create_comp_channel(struct ibv_context *ctx)
{
    struct ibv_comp_channel *ch = ibv_create_comp_channel(ctx);
    if (ch) {
        int flags = fcntl(ch->fd, F_GETFL);
        fcntl(ch->fd, F_SETFL, flags | O_NONBLOCK);
    }
    return ch;
}

SN_EXPORT int sn_comp_channel_fd(struct ibv_comp_channel *ch) { return ch->fd; }
SN_EXPORT int sn_destroy_comp_channel(struct ibv_comp_channel *ch) { return ibv_destroy_comp_channel(ch) ? -errno : 0; }

SN_EXPORT struct ibv_cq *sn_create_cq(struct ibv_context *ctx, int cqe, struct ibv_comp_channel *ch, int *err)
{
    struct ibv_cq *cq = ibv_create_cq(ctx, cqe, NULL, ch, 0);
    *err = cq ? 0 : -errno;
    return cq;
}

SN_EXPORT int sn_destroy_cq(struct ibv_cq *cq) { return ibv_destroy_cq(cq) ? -errno : 0; }
SN_EXPORT int sn_req_notify_cq(struct ibv_cq *cq, int solicited_only) { return ibv_req_notify_cq(cq, solicited_only); }

/* Consumes one pending notification of the channel (non-blocking): 1 when one was there, 0 if none. */
SN_EXPORT int sn_get_cq_event(struct ibv_comp_channel *ch)
{
    struct ibv_cq *cq;
    void *ctx;
    if (ibv_get_cq_event(ch, &cq, &ctx))
        return (errno == EAGAIN) ? 0 : -errno;
    ibv_ack_cq_events(cq, 1);
    return 1;
}

SN_EXPORT int sn_poll_cq(struct ibv_cq *cq, struct sn_wc *out, int max)
{
    struct ibv_wc wc[32];
    if (max > 32)
        max = 32;
    int n = ibv_poll_cq(cq, max, wc);
    for (int i = 0; i < n; i++) {
        out[i].wr_id = wc[i].wr_id;
        out[i].status = wc[i].status;
        out[i].opcode = wc[i].opcode;
        out[i].byte_len = wc[i].byte_len;
        out[i].imm_data = wc[i].imm_data;
        out[i].wc_flags = wc[i].wc_flags;
        out[i].qp_num = wc[i].qp_num;
        out[i].vendor_err = wc[i].vendor_err;
        out[i].reserved = 0;
    }
    return n;
}

SN_EXPORT uint32_t sn_qp_num(struct ibv_qp *qp) { return qp->qp_num; }

/* The QP's local ACK timeout exponent and transport retry count as the device reports them; -errno on failure. */
SN_EXPORT int sn_qp_timeouts(struct ibv_qp *qp, int *timeout, int *retry_cnt, int *rnr_retry)
{
    struct ibv_qp_attr attr;
    struct ibv_qp_init_attr init;
    memset(&attr, 0, sizeof(attr));
    int rc = ibv_query_qp(qp, &attr, IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY, &init);
    if (rc) return -rc;
    *timeout = attr.timeout;
    *retry_cnt = attr.retry_cnt;
    *rnr_retry = attr.rnr_retry;
    return 0;
}

/* One work request with one scatter/gather element. opcode: IBV_WR_*; flags: IBV_SEND_*. */
SN_EXPORT int sn_post_send(struct ibv_qp *qp, uint64_t wr_id, int opcode, int flags, void *addr, uint32_t len, uint32_t lkey,
                           uint64_t remote_addr, uint32_t rkey, uint32_t imm_or_invalidate)
{
    struct ibv_sge sge = { .addr = (uintptr_t)addr, .length = len, .lkey = lkey };
    struct ibv_send_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof(wr));
    wr.wr_id = wr_id;
    wr.sg_list = len ? &sge : NULL;
    wr.num_sge = len ? 1 : 0;
    wr.opcode = (enum ibv_wr_opcode)opcode;
    wr.send_flags = (unsigned)flags;
    if (opcode == IBV_WR_RDMA_WRITE || opcode == IBV_WR_RDMA_WRITE_WITH_IMM || opcode == IBV_WR_RDMA_READ) {
        wr.wr.rdma.remote_addr = remote_addr;
        wr.wr.rdma.rkey = rkey;
    }
    if (opcode == IBV_WR_SEND_WITH_INV)
        wr.invalidate_rkey = imm_or_invalidate;
    else if (opcode == IBV_WR_SEND_WITH_IMM || opcode == IBV_WR_RDMA_WRITE_WITH_IMM)
        wr.imm_data = htonl(imm_or_invalidate);
    int rc = ibv_post_send(qp, &wr, &bad);
    return rc ? -rc : 0;
}

static void fill_send_wr(struct ibv_send_wr *wr, struct ibv_sge *sge, const struct sn_send_wr *in)
{
    memset(wr, 0, sizeof(*wr));
    sge->addr = in->addr;
    sge->length = in->length;
    sge->lkey = in->lkey;
    wr->wr_id = in->wr_id;
    wr->sg_list = in->length ? sge : NULL;
    wr->num_sge = in->length ? 1 : 0;
    wr->opcode = (enum ibv_wr_opcode)in->opcode;
    wr->send_flags = (unsigned)in->flags;
    if (in->opcode == IBV_WR_RDMA_WRITE || in->opcode == IBV_WR_RDMA_WRITE_WITH_IMM || in->opcode == IBV_WR_RDMA_READ) {
        wr->wr.rdma.remote_addr = in->remote_addr;
        wr->wr.rdma.rkey = in->rkey;
    }
    if (in->opcode == IBV_WR_SEND_WITH_INV)
        wr->invalidate_rkey = in->imm_or_invalidate;
    else if (in->opcode == IBV_WR_SEND_WITH_IMM || in->opcode == IBV_WR_RDMA_WRITE_WITH_IMM)
        wr->imm_data = htonl(in->imm_or_invalidate);
}

/* Posts n work requests chained, up to 32 per ibv_post_send: one doorbell (on rxe, one system call) for
 * many. Returns 0, or -errno with *posted = how many were posted before the one that failed. */
SN_EXPORT int sn_post_send_batch(struct ibv_qp *qp, const struct sn_send_wr *in, int n, int *posted)
{
    struct ibv_send_wr wr[32];
    struct ibv_sge sge[32];
    int done = 0;
    while (done < n) {
        int k = n - done > 32 ? 32 : n - done;
        for (int i = 0; i < k; i++) {
            fill_send_wr(&wr[i], &sge[i], &in[done + i]);
            wr[i].next = i + 1 < k ? &wr[i + 1] : NULL;
        }
        struct ibv_send_wr *bad = NULL;
        int rc = ibv_post_send(qp, wr, &bad);
        if (rc) {
            *posted = done + (bad ? (int)(bad - wr) : 0);
            return -rc;
        }
        done += k;
    }
    *posted = done;
    return 0;
}

SN_EXPORT int sn_post_recv(struct ibv_qp *qp, uint64_t wr_id, void *addr, uint32_t len, uint32_t lkey)
{
    struct ibv_sge sge = { .addr = (uintptr_t)addr, .length = len, .lkey = lkey };
    struct ibv_recv_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof(wr));
    wr.wr_id = wr_id;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    int rc = ibv_post_recv(qp, &wr, &bad);
    return rc ? -rc : 0;
}
