/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The relayed-read loop of the NBD door (see nbdrelay.h for the call).
 *
 * Why in C: relaying nbdcopy's 256 KiB reads to qemu-nbd, the door's
 * connection thread ran about 210 Python calls per request (parsing,
 * the ticket, the queue, libnbd's notify calls, metrics), a third of
 * its CPU, and on two cores the door and qemu-nbd and nbdcopy compete
 * for them. Here a request costs a few system calls, without the GIL.
 *
 * Rules:
 *
 * 1. Only READs inside the export, aligned, no larger than a slot, with
 *    no flags but FUA and DF (both harmless for reads) are served; the
 *    first other request stops the run, its bytes left at in[0].
 * 2. A run stops taking requests at its deadline or when something ends
 *    it, then collects every read still in flight (libnbd writes into
 *    the slots until then) and sends their replies, so nothing is in
 *    flight when it returns. A client that takes no reply for stall_ms
 *    is given up (ETIMEDOUT); the replies not sent are dropped.
 * 3. A read libnbd fails (the server answered an error, the handle
 *    died) is not answered here: its header goes back to the caller,
 *    which runs it through the backend's own calls for the answer the
 *    rest of the door would give.
 * 4. The completion callbacks only move a slot to the done list; they
 *    run inside libnbd calls made by this thread (notify or submit), so
 *    no lock is needed.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#include <libnbd.h>

#include "nbdrelay.h"

const int NBDRELAY_DEADLINE = NBDRELAY_DEADLINE_;
const int NBDRELAY_OTHER = NBDRELAY_OTHER_;
const int NBDRELAY_EOF = NBDRELAY_EOF_;
const int NBDRELAY_WAKE = NBDRELAY_WAKE_;
const int NBDRELAY_FULL = NBDRELAY_FULL_;
const int NBDRELAY_FAILED = NBDRELAY_FAILED_;
const int NBDRELAY_ERROR = NBDRELAY_ERROR_;
const int NBDRELAY_NO_HANDLE = NBDRELAY_NO_HANDLE_;
const int NBDRELAY_IDLE = NBDRELAY_IDLE_;

#define REQUEST_SIZE 28
#define REQUEST_MAGIC 0x25609513u
#define SIMPLE_MAGIC 0x67446698u
#define STRUCTURED_MAGIC 0x668e33efu
#define CMD_READ 0
#define CMD_FLAG_FUA 1u
#define CMD_FLAG_DF 4u
#define REPLY_FLAG_DONE 1u
#define REPLY_TYPE_OFFSET_DATA 1u
#define SIMPLE_HEADER 16
#define STRUCTURED_HEADER 28

#define MAX_HANDLES 16
#define MAX_IOV 32

struct relay;

struct slot {
    struct relay *r;
    uint8_t *data;
    uint8_t *reply;
    size_t reply_len;
    size_t sent;
    uint64_t handle;
    uint64_t offset;
    uint32_t length;
    uint16_t flags;
    int error;
    double start;
    struct slot *next;
};

struct relay {
    struct nbdrelay_args *a;
    struct nbd_handle *h[MAX_HANDLES];
    int live[MAX_HANDLES];
    int n;
    int turn;
    struct slot *free;
    struct slot *done;
    struct slot **done_tail;
    struct slot *send;
    struct slot **send_tail;
    /* Requests taken and not yet answered or handed back. */
    size_t owed;
    int inflight;
    int stopped;
    int blocked;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) << 32 | get32(p + 4);
}

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = v >> 8;
    p[1] = v;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = v >> 24;
    p[1] = v >> 16;
    p[2] = v >> 8;
    p[3] = v;
}

static void put64(uint8_t *p, uint64_t v)
{
    put32(p, v >> 32);
    put32(p + 4, v);
}

static void stop(struct relay *r, int reason)
{
    if (!r->stopped) {
        r->stopped = 1;
        r->a->reason = reason;
    }
}

static void give_slot(struct relay *r, struct slot *s)
{
    s->next = r->free;
    r->free = s;
    r->owed--;
}

/* Rule 4. */
static int read_done(void *user_data, int *error)
{
    struct slot *s = user_data;
    struct relay *r = s->r;

    s->error = *error;
    s->next = NULL;
    *r->done_tail = s;
    r->done_tail = &s->next;
    r->inflight--;
    return 1;
}

/* Rule 3: the request's header, as the client sent it. */
static void hand_back(struct relay *r, struct slot *s)
{
    struct nbdrelay_args *a = r->a;
    uint8_t *p = a->failed + a->nfailed * REQUEST_SIZE;

    put32(p, REQUEST_MAGIC);
    put16(p + 4, s->flags);
    put16(p + 6, CMD_READ);
    put64(p + 8, s->handle);
    put64(p + 16, s->offset);
    put32(p + 24, s->length);
    a->nfailed++;
    stop(r, NBDRELAY_FAILED_);
    give_slot(r, s);
}

static void queue_reply(struct relay *r, struct slot *s)
{
    uint8_t *p;

    if (r->a->structured) {
        p = s->data - STRUCTURED_HEADER;
        put32(p, STRUCTURED_MAGIC);
        put16(p + 4, REPLY_FLAG_DONE);
        put16(p + 6, REPLY_TYPE_OFFSET_DATA);
        put64(p + 8, s->handle);
        put32(p + 16, 8 + s->length);
        put64(p + 20, s->offset);
    } else {
        p = s->data - SIMPLE_HEADER;
        put32(p, SIMPLE_MAGIC);
        put32(p + 4, 0);
        put64(p + 8, s->handle);
    }
    s->reply = p;
    s->reply_len = (size_t)(s->data - p) + s->length;
    s->sent = 0;
    s->next = NULL;
    *r->send_tail = s;
    r->send_tail = &s->next;
}

static void collect(struct relay *r)
{
    struct slot *s;

    while ((s = r->done) != NULL) {
        r->done = s->next;
        if (r->done == NULL)
            r->done_tail = &r->done;
        if (s->error)
            hand_back(r, s);
        else
            queue_reply(r, s);
    }
}

/* The client is gone: the replies waiting are dropped (rule 2). */
static void client_failed(struct relay *r, int error)
{
    struct slot *s;

    if (!r->a->error)
        r->a->error = error;
    /* Whatever stopped the run before, this is what the caller must
     * know. */
    r->stopped = 1;
    r->a->reason = NBDRELAY_ERROR_;
    while ((s = r->send) != NULL) {
        r->send = s->next;
        give_slot(r, s);
    }
    r->send_tail = &r->send;
    r->blocked = 0;
}

static void answered(struct relay *r, struct slot *s, double t)
{
    struct nbdrelay_args *a = r->a;

    a->offsets[a->ndone] = s->offset;
    a->lengths[a->ndone] = s->length;
    a->seconds[a->ndone] = t - s->start;
    a->ndone++;
    give_slot(r, s);
}

/* Send what the socket takes of the waiting replies, without waiting. */
static void send_replies(struct relay *r)
{
    struct iovec iov[MAX_IOV];
    struct msghdr msg;
    struct slot *s;
    ssize_t n;
    double t;
    int count;

    while (r->send != NULL) {
        count = 0;
        for (s = r->send; s != NULL && count < MAX_IOV; s = s->next) {
            iov[count].iov_base = s->reply + s->sent;
            iov[count].iov_len = s->reply_len - s->sent;
            count++;
        }
        memset(&msg, 0, sizeof(msg));
        msg.msg_iov = iov;
        msg.msg_iovlen = count;
        n = sendmsg(r->a->client_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                r->blocked = 1;
                return;
            }
            client_failed(r, errno);
            return;
        }
        t = now();
        while ((s = r->send) != NULL && n > 0) {
            size_t left = s->reply_len - s->sent;
            if ((size_t)n < left) {
                s->sent += n;
                break;
            }
            n -= left;
            r->send = s->next;
            answered(r, s, t);
        }
        if (r->send == NULL)
            r->send_tail = &r->send;
        else if (count < MAX_IOV || r->send->sent) {
            /* Taken in part: the socket is full. */
            r->blocked = 1;
            return;
        }
    }
    r->blocked = 0;
}

static int servable(struct relay *r, const uint8_t *p, uint16_t flags,
                    uint16_t type, uint64_t offset, uint32_t length)
{
    struct nbdrelay_args *a = r->a;

    return get32(p) == REQUEST_MAGIC && type == CMD_READ &&
           !(flags & ~(CMD_FLAG_FUA | CMD_FLAG_DF)) &&
           length > 0 && length <= a->slot_data &&
           offset % a->align == 0 && length % a->align == 0 &&
           offset <= a->size && length <= a->size - offset;
}

static struct nbd_handle *next_handle(struct relay *r)
{
    for (int i = 0; i < r->n; i++) {
        int k = r->turn;
        r->turn = (r->turn + 1) % r->n;
        if (r->live[k])
            return r->h[k];
    }
    return NULL;
}

/* Start the requests in the buffer while slots and room are left. */
static void take_requests(struct relay *r)
{
    struct nbdrelay_args *a = r->a;
    size_t pos = 0;

    while (!r->stopped && a->input_len - pos >= REQUEST_SIZE) {
        const uint8_t *p = a->input + pos;
        uint16_t flags = get16(p + 4);
        uint16_t type = get16(p + 6);
        uint64_t offset = get64(p + 16);
        uint32_t length = get32(p + 24);
        struct nbd_handle *h;
        struct slot *s;
        nbd_completion_callback cb;

        if (!servable(r, p, flags, type, offset, length)) {
            stop(r, NBDRELAY_OTHER_);
            break;
        }
        if (r->free == NULL || a->ndone + r->owed >= a->max_done)
            break;
        h = next_handle(r);
        if (h == NULL) {
            stop(r, NBDRELAY_NO_HANDLE_);
            break;
        }
        s = r->free;
        r->free = s->next;
        r->owed++;
        s->handle = get64(p + 8);
        s->offset = offset;
        s->length = length;
        s->flags = flags;
        s->error = 0;
        s->start = now();
        pos += REQUEST_SIZE;
        cb.callback = read_done;
        cb.user_data = s;
        cb.free = NULL;
        r->inflight++;
        if (nbd_aio_pread(h, s->data, length, offset, cb, 0) == -1) {
            /* Not issued: libnbd never calls the callback. */
            r->inflight--;
            hand_back(r, s);
        }
    }
    if (pos) {
        memmove(a->input, a->input + pos, a->input_len - pos);
        a->input_len -= pos;
    }
    if (a->ndone + r->owed >= a->max_done)
        stop(r, NBDRELAY_FULL_);
    /* A read may complete inside nbd_aio_pread. */
    collect(r);
}

static void receive(struct relay *r)
{
    struct nbdrelay_args *a = r->a;
    ssize_t n;

    do {
        n = recv(a->client_fd, a->input + a->input_len, a->input_cap - a->input_len,
                 MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0)
        a->input_len += n;
    else if (n == 0)
        stop(r, NBDRELAY_EOF_);
    else if (errno != EAGAIN && errno != EWOULDBLOCK)
        client_failed(r, errno);
}

static void drive(struct relay *r, int i, short revents)
{
    struct nbd_handle *h = r->h[i];
    int rc = 0;

    if (revents & (POLLIN | POLLHUP | POLLERR))
        rc = nbd_aio_notify_read(h);
    if (rc != -1 && (revents & POLLOUT))
        rc = nbd_aio_notify_write(h);
    if (rc == -1 || nbd_aio_is_dead(h) || nbd_aio_is_closed(h)) {
        /* Its reads in flight failed through their callbacks. */
        r->live[i] = 0;
    }
}

int nbdrelay_run(struct nbdrelay_args *a)
{
    struct relay r;
    struct slot *slots;
    struct pollfd fds[MAX_HANDLES + 2];
    double deadline;

    a->ndone = 0;
    a->nfailed = 0;
    a->reason = NBDRELAY_DEADLINE_;
    a->error = 0;
    if (a->nhandles < 1 || a->nhandles > MAX_HANDLES || a->nslots < 1 ||
        a->align == 0 || a->input_len > a->input_cap)
        return -EINVAL;
    slots = calloc(a->nslots, sizeof(*slots));
    if (slots == NULL)
        return -ENOMEM;

    memset(&r, 0, sizeof(r));
    r.a = a;
    r.done_tail = &r.done;
    r.send_tail = &r.send;
    r.n = a->nhandles;
    for (int i = 0; i < r.n; i++) {
        r.h[i] = a->handles[i];
        r.live[i] = nbd_aio_is_ready(r.h[i]) == 1;
    }
    for (int i = a->nslots - 1; i >= 0; i--) {
        slots[i].r = &r;
        slots[i].data = a->slots[i] + a->headroom;
        slots[i].next = r.free;
        r.free = &slots[i];
    }

    deadline = now() + a->run_ms / 1000.0;
    take_requests(&r);
    send_replies(&r);
    for (;;) {
        int nfds = 0, timeout, ready;
        int client = -1, wake = -1, first_handle;
        short want = 0;
        double t;

        if (r.stopped && r.owed == 0)
            break;
        if (r.owed == 0 && a->ndone > 0 && a->input_len == 0) {
            /* Nothing to do until the client asks again: the caller
             * waits then, and checks the ticket before the next run. */
            stop(&r, NBDRELAY_IDLE_);
            break;
        }
        t = now();
        if (!r.stopped && t >= deadline) {
            stop(&r, NBDRELAY_DEADLINE_);
            if (r.owed == 0)
                break;
        }

        if (!r.stopped && r.free != NULL && a->input_len < a->input_cap)
            want |= POLLIN;
        if (r.send != NULL && r.blocked)
            want |= POLLOUT;
        if (want) {
            client = nfds;
            fds[nfds].fd = a->client_fd;
            fds[nfds].events = want;
            fds[nfds].revents = 0;
            nfds++;
        }
        first_handle = nfds;
        for (int i = 0; i < r.n; i++) {
            unsigned dir = r.live[i] ? nbd_aio_get_direction(r.h[i]) : 0;
            fds[nfds].fd = dir ? nbd_aio_get_fd(r.h[i]) : -1;
            fds[nfds].events = ((dir & LIBNBD_AIO_DIRECTION_READ) ?
                                POLLIN : 0) |
                               ((dir & LIBNBD_AIO_DIRECTION_WRITE) ?
                                POLLOUT : 0);
            fds[nfds].revents = 0;
            nfds++;
        }
        if (!r.stopped && a->wake_fd >= 0) {
            wake = nfds;
            fds[nfds].fd = a->wake_fd;
            fds[nfds].events = POLLIN;
            fds[nfds].revents = 0;
            nfds++;
        }

        if (!r.stopped)
            timeout = (int)((deadline - t) * 1000.0) + 1;
        else if (r.send != NULL && r.blocked)
            timeout = a->stall_ms;
        else
            timeout = -1;  /* Rule 2: only reads in flight are left. */

        ready = poll(fds, nfds, timeout);
        if (ready < 0) {
            if (errno == EINTR)
                continue;
            client_failed(&r, errno);
            /* Still collect the reads in flight. */
            continue;
        }
        if (ready == 0) {
            if (r.stopped && r.send != NULL && r.blocked)
                client_failed(&r, ETIMEDOUT);
            continue;
        }

        for (int i = 0; i < r.n; i++) {
            short ev = fds[first_handle + i].revents;
            if (ev)
                drive(&r, i, ev);
        }
        collect(&r);
        if (wake >= 0 && fds[wake].revents)
            stop(&r, NBDRELAY_WAKE_);
        if (client >= 0 && fds[client].revents) {
            if (fds[client].revents & POLLOUT)
                r.blocked = 0;
            if (want & POLLIN)
                receive(&r);
            else if (fds[client].revents & (POLLERR | POLLHUP))
                r.blocked = 0;  /* Sending says what happened. */
        }
        if (r.send != NULL && !r.blocked)
            send_replies(&r);
        take_requests(&r);
        if (r.send != NULL && !r.blocked)
            send_replies(&r);
    }
    /* Nothing is left in flight (rule 2). */
    free(slots);
    return 0;
}
