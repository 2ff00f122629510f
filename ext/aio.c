/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Direct writes through Linux AIO (io_submit), each waited for before the
 * call returns. See ioutil.h for the interface.
 *
 * Why not pwrite: a synchronous O_DIRECT write that allocates blocks
 * (a write into a hole of a sparse file: every upload to a new image)
 * holds ext4's inode lock exclusively until the data is on the device,
 * so writers on several threads take turns and only one write is ever
 * in flight. An AIO write holds that lock only while it is submitted and
 * completes without it, so each thread's write overlaps the others', as
 * qemu-nbd --aio=native keeps them. Overwrites of allocated blocks, block
 * devices and XFS take the lock shared either way; for them this costs
 * one more system call per write.
 *
 * One context per caller, holding one request: the caller waits for its
 * own completion, so contexts are never shared between threads and
 * nothing is left in flight when a call returns.
 *
 * The queue (aioq_*) is the other use: one thread keeps many reads and
 * writes in flight and collects their completions in batches, as
 * qemu-nbd's event loop does, instead of one thread per request waiting
 * for its own (the NBD door spent more on waking those threads than on
 * moving the data). Each completion signals an eventfd the caller polls
 * with its socket; a request is known by the caller's tag. The kernel
 * copies each iocb when it is submitted, so only the data buffers must
 * outlive their requests; aioq_close waits for those in flight.
 */

#define _GNU_SOURCE

#include "ioutil.h"

#include <errno.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The same bound per submission as pwrite_full (see ioutil.c). */
#define MAX_IO (1UL << 30)

struct ioutil_aio {
    aio_context_t ctx;
};

struct ioutil_aio *ioutil_aio_open(int *err)
{
    struct ioutil_aio *aio = calloc(1, sizeof(*aio));

    if (aio == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    /* EAGAIN when the host's fs.aio-max-nr events are taken; ENOSYS or
     * EPERM where AIO is not available. The caller falls back to pwrite. */
    if (syscall(SYS_io_setup, 1, &aio->ctx) < 0) {
        *err = -errno;
        free(aio);
        return NULL;
    }
    *err = 0;
    return aio;
}

void ioutil_aio_close(struct ioutil_aio *aio)
{
    if (aio == NULL)
        return;
    /* Never anything in flight here: every write was waited for. */
    syscall(SYS_io_destroy, aio->ctx);
    free(aio);
}

/* Write one piece; returns the bytes written or -errno. */
static int64_t write_piece(struct ioutil_aio *aio, int fd, const char *buf,
                           size_t len, int64_t offset)
{
    struct iocb cb;
    struct iocb *cbs[1] = { &cb };
    struct io_event event;

    memset(&cb, 0, sizeof(cb));
    cb.aio_fildes = fd;
    cb.aio_lio_opcode = IOCB_CMD_PWRITE;
    cb.aio_buf = (uintptr_t)buf;
    cb.aio_nbytes = len;
    cb.aio_offset = offset;

    for (;;) {
        long n = syscall(SYS_io_submit, aio->ctx, 1, cbs);

        if (n == 1)
            break;
        if (n < 0 && errno == EINTR)
            continue;
        return n < 0 ? -errno : -EIO;
    }

    /* The request is in the kernel: a signal must not make us return
     * before it completes, or the buffer could be written after the
     * caller reused it. */
    for (;;) {
        long n = syscall(SYS_io_getevents, aio->ctx, 1, 1, &event, NULL);

        if (n == 1)
            return event.res;
        if (n < 0 && errno != EINTR)
            return -errno;
    }
}

int ioutil_aio_pwrite_full(struct ioutil_aio *aio, int fd, const void *buf,
                           size_t len, int64_t offset)
{
    const char *p = buf;
    size_t done = 0;

    while (done < len) {
        size_t want = len - done < MAX_IO ? len - done : MAX_IO;
        int64_t n = write_piece(aio, fd, p + done, want, offset + done);

        if (n < 0)
            return n;
        /* As pwrite_full: a device's end gives zero-length writes. */
        if (n == 0)
            return -ENOSPC;
        done += n;
    }

    return 0;
}

/* Requests queued by aioq_submit go to the kernel together, in one
 * io_submit, when the caller kicks the queue. io_submit plugs the block
 * layer for a batch, so adjacent requests of one batch merge into larger
 * ones. How many to batch is the caller's choice: the NBD door kicks
 * after every request (nbdd/queued.py, SUBMIT_BATCH), since from its
 * huge-page buffers the bench VM's disk served 256 KiB requests faster
 * unmerged than merged into 1-4 MiB ones.
 */

struct ioutil_aioq {
    aio_context_t ctx;
    int efd;
    unsigned depth;
    unsigned inflight;
    /* Queued, not yet given to the kernel. */
    unsigned npending;
    struct iocb *pending;
    struct iocb **ptrs;
    /* Refused by the kernel at io_submit: reaped as results. */
    unsigned nfailed;
    uint64_t *failed_tags;
    int64_t *failed_results;
};

static void aioq_free(struct ioutil_aioq *q)
{
    free(q->pending);
    free(q->ptrs);
    free(q->failed_tags);
    free(q->failed_results);
    free(q);
}

struct ioutil_aioq *ioutil_aioq_open(unsigned depth, int efd, int *err)
{
    struct ioutil_aioq *q = calloc(1, sizeof(*q));

    if (q == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    q->pending = calloc(depth, sizeof(*q->pending));
    q->ptrs = calloc(depth, sizeof(*q->ptrs));
    q->failed_tags = calloc(depth, sizeof(*q->failed_tags));
    q->failed_results = calloc(depth, sizeof(*q->failed_results));
    if (!q->pending || !q->ptrs || !q->failed_tags || !q->failed_results) {
        aioq_free(q);
        *err = -ENOMEM;
        return NULL;
    }
    if (syscall(SYS_io_setup, depth, &q->ctx) < 0) {
        *err = -errno;
        aioq_free(q);
        return NULL;
    }
    for (unsigned i = 0; i < depth; i++)
        q->ptrs[i] = &q->pending[i];
    q->efd = efd;
    q->depth = depth;
    *err = 0;
    return q;
}

void ioutil_aioq_kick(struct ioutil_aioq *q)
{
    unsigned done = 0;
    unsigned failed = q->nfailed;

    while (done < q->npending) {
        long n = syscall(SYS_io_submit, q->ctx, (long)(q->npending - done),
                         q->ptrs + done);

        if (n > 0) {
            done += n;
            q->inflight += n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        /* The first request left was refused: it fails in its result,
         * and the rest are submitted on. */
        q->failed_tags[q->nfailed] = q->pending[done].aio_data;
        q->failed_results[q->nfailed] = n < 0 ? -errno : -EAGAIN;
        q->nfailed++;
        done++;
    }
    q->npending = 0;
    if (q->nfailed > failed) {
        /* Make the eventfd readable, as a completion would. */
        uint64_t one = 1;

        while (write(q->efd, &one, sizeof(one)) < 0 && errno == EINTR)
            ;
    }
}

int ioutil_aioq_submit(struct ioutil_aioq *q, int fd, int write, void *buf,
                       size_t len, int64_t offset, uint64_t tag)
{
    struct iocb *cb;

    if (q->inflight + q->npending + q->nfailed == q->depth)
        return -EAGAIN;
    if (len > MAX_IO)
        return -EINVAL;

    cb = &q->pending[q->npending++];
    memset(cb, 0, sizeof(*cb));
    cb->aio_data = tag;
    cb->aio_fildes = fd;
    cb->aio_lio_opcode = write ? IOCB_CMD_PWRITE : IOCB_CMD_PREAD;
    cb->aio_buf = (uintptr_t)buf;
    cb->aio_nbytes = len;
    cb->aio_offset = offset;
    cb->aio_flags = IOCB_FLAG_RESFD;
    cb->aio_resfd = q->efd;

    return 0;
}

/* Collect up to max completions without waiting (min_nr 0 and a zero
 * timeout); results are the bytes moved or -errno. */
int ioutil_aioq_reap(struct ioutil_aioq *q, uint64_t *tags, int64_t *results,
                     int max)
{
    struct io_event events[64];
    struct timespec zero = { 0, 0 };
    int count = 0;

    while (count < max && q->nfailed > 0) {
        q->nfailed--;
        tags[count] = q->failed_tags[q->nfailed];
        results[count] = q->failed_results[q->nfailed];
        count++;
    }
    while (count < max && q->inflight > 0) {
        int want = max - count < 64 ? max - count : 64;
        long n = syscall(SYS_io_getevents, q->ctx, 0, want, events, &zero);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return count ? count : -errno;
        }
        for (long i = 0; i < n; i++) {
            tags[count] = events[i].data;
            results[count] = events[i].res;
            count++;
        }
        q->inflight -= n;
        if (n < want)
            break;
    }
    return count;
}

int ioutil_aioq_reset(struct ioutil_aioq *q)
{
    struct io_event event;

    /* Queued requests were never started: nothing holds their buffers. */
    q->npending = 0;
    q->nfailed = 0;
    /* The buffers of requests in flight belong to the caller, who may
     * free them once we return: wait for every one. */
    while (q->inflight > 0) {
        long n = syscall(SYS_io_getevents, q->ctx, 1, 1, &event, NULL);

        if (n > 0)
            q->inflight -= n;
        else if (n < 0 && errno != EINTR)
            return -errno;
    }
    return 0;
}

void ioutil_aioq_close(struct ioutil_aioq *q)
{
    if (q == NULL)
        return;
    ioutil_aioq_reset(q);
    /* io_destroy waits for an RCU grace period, tens of milliseconds
     * (28 ms on the bench VM): the caller keeps a queue it will open
     * again instead (see AioQueue in native/ioutil.py). */
    syscall(SYS_io_destroy, q->ctx);
    aioq_free(q);
}
