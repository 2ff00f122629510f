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
 */

#define _GNU_SOURCE

#include "ioutil.h"

#include <errno.h>
#include <linux/aio_abi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
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
