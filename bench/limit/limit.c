/* limit: the machine's limit for NVMe/TCP-shaped 4 KiB reads over loopback TCP, measured by a minimal
 * busy-polled server and client that move bytes in bulk (one large recv and one writev/send per poll for
 * everything pending). A request is a 72-byte "command capsule"; a response is a 24-byte "C2HData header"
 * plus 4096 bytes of data (the shape StorageNode sends for a read with the SUCCESS flag).
 *
 *   limit server PORT                     serve one connection at a time on 127.0.0.1:PORT (until killed)
 *   limit client PORT QD SECONDS          keep QD requests outstanding for SECONDS; print JSON figures
 *
 * Write-shaped, and the floor of a mirrored write (bench/mirror-cost.ps1): a request of 72 + 4096 bytes (a write's
 * capsule with its data in-capsule), a 24-byte response (a completion):
 *   limit wserver PORT                    serve write-shaped requests
 *   limit wclient PORT QD SECONDS         the client of write-shaped requests
 *   limit relay PORT NEXTPORT             pass each connection's bytes on to 127.0.0.1:NEXTPORT and the answers back
 *                                         (the owner of a mirrored write: a request is answered once the next
 *                                         process answered its copy): wclient -> relay -> wserver is a mirrored
 *                                         write's three processes and four hops with no work of their own.
 * With LIMIT_YIELD=1 every process yields the core (sched_yield) after a poll that found nothing, as the node's
 * adaptive reactors do: the way three pollers share two cores.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>

#define REQ 72
#define RESP_HDR 24
#define DATA 4096
#define RESP (RESP_HDR + DATA)
#define MAXQD 1024
#define WREQ (REQ + DATA)
#define WRESP RESP_HDR

static int req_size = REQ, resp_size = RESP, yield_idle;

static void idle(void)
{
    if (yield_idle) sched_yield();
}

static int listen_on(int port)
{
    int l = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 4)) { perror("bind/listen"); return -1; }
    return l;
}

static int connect_to(int port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    for (int i = 0; i <= 100; i++) {
        int c = socket(AF_INET, SOCK_STREAM, 0);
        if (!connect(c, (struct sockaddr *)&a, sizeof a)) return c;
        close(c);
        usleep(20000);
    }
    perror("connect");
    return -1;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static int serve(int port)
{
    int l = listen_on(port);
    if (l < 0) return 1;
    static char in[1 << 20];
    static char hdr[RESP_HDR];
    static char data[DATA];
    memset(data, 0x5a, sizeof data);
    /* A response is the header, then resp_size - RESP_HDR bytes of data (none for a write's completion). */
    const size_t body = (size_t)resp_size - RESP_HDR;
    struct iovec iov[1024];
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        nodelay(c);
        size_t have = 0;
        int pending = 0;        /* responses owed */
        size_t partial = 0;     /* bytes of the first owed response already sent */
        for (;;) {
            ssize_t n = recv(c, in + have, sizeof in - have, MSG_DONTWAIT);
            if (n == 0) break;
            if (n > 0) {
                have += (size_t)n;
                pending += (int)(have / (size_t)req_size);
                have %= (size_t)req_size;
            } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
                break;
            }
            if (pending == 0) {
                idle();
                continue;
            }
            /* One writev for everything owed (bounded by the iovec array). */
            int k = 0, r = 0;
            for (; r < pending && k + 2 <= 1024; r++) {
                if (r == 0 && partial) {
                    if (partial < RESP_HDR) { iov[k].iov_base = hdr + partial; iov[k++].iov_len = RESP_HDR - partial; iov[k].iov_base = data; iov[k++].iov_len = body; }
                    else { iov[k].iov_base = data + (partial - RESP_HDR); iov[k++].iov_len = body - (partial - RESP_HDR); }
                } else {
                    iov[k].iov_base = hdr; iov[k++].iov_len = RESP_HDR;
                    iov[k].iov_base = data; iov[k++].iov_len = body;
                }
            }
            ssize_t s = writev(c, iov, k);
            if (s < 0) { if (errno == EAGAIN) continue; break; }
            size_t sent = (size_t)s + partial;
            pending -= (int)(sent / (size_t)resp_size);
            partial = sent % (size_t)resp_size;
        }
        close(c);
    }
}

static int cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static int client(int port, int qd, double seconds)
{
    if (qd < 1 || qd > MAXQD) { fprintf(stderr, "qd 1..%d\n", MAXQD); return 2; }
    int c = connect_to(port);
    if (c < 0) return 1;
    nodelay(c);
    static char req[WREQ * MAXQD];
    static char in[1 << 20];
    memset(req, 1, sizeof req);
    uint64_t sent_at[MAXQD];       /* FIFO of send times: responses come back in order */
    size_t max_samples = 20000000;
    uint64_t *lat = malloc(max_samples * sizeof *lat);
    size_t nlat = 0;
    int head = 0, outstanding = 0;
    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9), done = 0;
    size_t got = 0;
    int to_send = qd;
    size_t sent_partial = 0; /* bytes of the next request already sent (a write-shaped send may go in part) */
    for (;;) {
        uint64_t t = now_ns();
        if (to_send > 0 && t < end) {
            ssize_t s = send(c, req + sent_partial, (size_t)to_send * (size_t)req_size - sent_partial, MSG_DONTWAIT);
            if (s > 0) {
                s += (ssize_t)sent_partial;
                int n = (int)(s / req_size);
                sent_partial = (size_t)s % (size_t)req_size;
                for (int i = 0; i < n; i++) sent_at[(head + outstanding + i) % MAXQD] = t;
                outstanding += n;
                to_send -= n;
            }
        }
        if (outstanding == 0 && t >= end) break;
        ssize_t n = recv(c, in, sizeof in, MSG_DONTWAIT);
        if (n > 0) {
            got += (size_t)n;
            uint64_t r = now_ns();
            while (got >= (size_t)resp_size) {
                got -= (size_t)resp_size;
                if (nlat < max_samples) lat[nlat++] = r - sent_at[head];
                head = (head + 1) % MAXQD;
                outstanding--;
                done++;
                if (r < end) to_send++;
            }
        } else if (n == 0) {
            break;
        } else {
            idle();
        }
    }
    double secs = (now_ns() - start) / 1e9;
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double mean = 0;
    for (size_t i = 0; i < nlat; i++) mean += lat[i];
    mean = nlat ? mean / nlat / 1000.0 : 0;
#define PCT(p) (nlat ? lat[(size_t)((p) / 100.0 * (nlat - 1))] / 1000.0 : 0)
    printf("{\"qd\": %d, \"seconds\": %.3f, \"ops\": %llu, \"iops\": %.0f, \"mean_us\": %.2f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"p999_us\": %.2f}\n",
           qd, secs, (unsigned long long)done, done / secs, mean, PCT(50), PCT(99), PCT(99.9));
    close(c);
    return 0;
}

/* Moves what src has for dst into buf and on to dst (what dst does not take now waits in buf); -1 when a side closed. */
static int pump(int src, int dst, char *buf, size_t cap, size_t *held, int *moved)
{
    if (*held < cap) {
        ssize_t n = recv(src, buf + *held, cap - *held, MSG_DONTWAIT);
        if (n == 0) return -1;
        if (n > 0) { *held += (size_t)n; *moved = 1; }
        else if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
    if (*held > 0) {
        ssize_t s = send(dst, buf, *held, MSG_DONTWAIT);
        if (s > 0) {
            memmove(buf, buf + s, *held - (size_t)s);
            *held -= (size_t)s;
            *moved = 1;
        } else if (s < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -1;
    }
    return 0;
}

static int relay(int port, int next)
{
    int l = listen_on(port);
    if (l < 0) return 1;
    static char up[1 << 20], down[1 << 20];
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) continue;
        int u = connect_to(next);
        if (u < 0) { close(c); continue; }
        nodelay(c);
        nodelay(u);
        size_t nup = 0, ndown = 0;
        for (;;) {
            int moved = 0;
            if (pump(c, u, up, sizeof up, &nup, &moved) || pump(u, c, down, sizeof down, &ndown, &moved)) break;
            if (!moved) idle();
        }
        close(u);
        close(c);
    }
}

int main(int argc, char **argv)
{
    yield_idle = getenv("LIMIT_YIELD") && !strcmp(getenv("LIMIT_YIELD"), "1");
    if (argc >= 3 && !strcmp(argv[1], "server")) return serve(atoi(argv[2]));
    if (argc >= 5 && !strcmp(argv[1], "client")) return client(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    req_size = WREQ;
    resp_size = WRESP;
    if (argc >= 3 && !strcmp(argv[1], "wserver")) return serve(atoi(argv[2]));
    if (argc >= 5 && !strcmp(argv[1], "wclient")) return client(atoi(argv[2]), atoi(argv[3]), atof(argv[4]));
    if (argc >= 4 && !strcmp(argv[1], "relay")) return relay(atoi(argv[2]), atoi(argv[3]));
    fprintf(stderr, "usage: limit server PORT | limit client PORT QD SECONDS | limit wserver PORT | limit wclient PORT QD SECONDS | limit relay PORT NEXTPORT\n");
    return 2;
}
