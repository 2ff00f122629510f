/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Implementation of ioutil.h. See that file for the conventions; the
 * comments here explain kernel behaviour the code relies on.
 */

#define _GNU_SOURCE

#include "ioutil.h"
#include "sock.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const int IOUTIL_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int IOUTIL_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
const int IOUTIL_FALLOC_FL_ZERO_RANGE = FALLOC_FL_ZERO_RANGE;

/*
 * Reads and writes are issued in pieces of at most 1 GiB: Linux never
 * transfers more than about 2 GiB per call anyway, and a bounded size
 * keeps every count well inside ssize_t.
 */
#define MAX_IO (1UL << 30)

int64_t ioutil_pread_full(int fd, void *buf, size_t len, int64_t offset)
{
    char *p = buf;
    size_t done = 0;

    while (done < len) {
        size_t want = len - done < MAX_IO ? len - done : MAX_IO;
        ssize_t n = pread(fd, p + done, want, offset + done);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            break;
        done += n;
    }

    return done;
}

int ioutil_pwrite_full(int fd, const void *buf, size_t len, int64_t offset)
{
    const char *p = buf;
    size_t done = 0;

    while (done < len) {
        size_t want = len - done < MAX_IO ? len - done : MAX_IO;
        ssize_t n = pwrite(fd, p + done, want, offset + done);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        /* A zero-length write of a non-empty buffer would loop forever;
         * block devices do this at their end. */
        if (n == 0)
            return -ENOSPC;
        done += n;
    }

    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Wait until sockfd is ready for events or the deadline (absolute,
 * CLOCK_MONOTONIC milliseconds; negative means none) passes.
 *
 * Readiness includes errors and hang-up: the caller retries the
 * operation, which then reports the real error or end of stream.
 */
int sock_wait_ready(int sockfd, short events, int64_t deadline)
{
    struct pollfd pfd = { .fd = sockfd, .events = events };

    for (;;) {
        int wait = -1;
        int n;

        if (deadline >= 0) {
            int64_t left = deadline - now_ms();

            if (left <= 0)
                return -ETIMEDOUT;
            wait = left > INT_MAX ? INT_MAX : (int)left;
        }

        n = poll(&pfd, 1, wait);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            continue;  /* Timed out: loop to check the deadline. */
        if (pfd.revents & POLLNVAL)
            return -EBADF;
        return 0;
    }
}

int64_t sock_deadline_from(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/*
 * Sockets created by Python with a timeout are non-blocking, and a caller
 * may also pass a blocking socket with a timeout. MSG_DONTWAIT makes both
 * cases behave the same: try the call, and on EAGAIN poll with whatever is
 * left of the timeout. Without a timeout the call blocks normally, and a
 * non-blocking socket still works by polling forever.
 */
/*
 * The most a waiting reader asks the kernel to gather before waking it
 * (SO_RCVLOWAT). Without it a reader faster than its peer wakes for every
 * segment that arrives, paying a poll, a recv and two context switches
 * per 64 KiB on loopback.
 */
#define MAX_LOWAT (256 * 1024)

void sock_set_lowat(int sockfd, int *current, int want)
{
    if (*current == want)
        return;
    /* Best effort: a socket type without the option just wakes more. */
    if (setsockopt(sockfd, SOL_SOCKET, SO_RCVLOWAT, &want,
                   sizeof(want)) == 0)
        *current = want;
}

static int64_t recv_deadline(int sockfd, char *buf, size_t len,
                             int timeout_ms, int64_t deadline)
{
    int flags = timeout_ms >= 0 ? MSG_DONTWAIT : 0;
    size_t done = 0;
    int lowat = 1;  /* The socket's value between calls (the default). */
    int64_t result;

    while (done < len) {
        ssize_t n = recv(sockfd, buf + done, len - done, flags);

        if (n > 0) {
            done += n;
            continue;
        }
        if (n == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            /* Never more than is still to come: the peer may send
             * exactly that much and then wait for our answer. TCP honours
             * the mark in poll and in wake-ups; unix sockets ignore it. */
            size_t left = len - done;
            int rc;

            sock_set_lowat(sockfd, &lowat,
                      left < MAX_LOWAT ? (int)left : MAX_LOWAT);
            rc = sock_wait_ready(sockfd, POLLIN, deadline);
            if (rc < 0) {
                result = rc;
                goto out;
            }
            continue;
        }
        result = -errno;
        goto out;
    }
    result = done;

out:
    /* Later reads (the next request head) want any byte at all. */
    sock_set_lowat(sockfd, &lowat, 1);
    return result;
}

int64_t sock_recv_some(int sockfd, char *buf, size_t len, int timeout_ms,
                       int64_t deadline)
{
    int flags = timeout_ms >= 0 ? MSG_DONTWAIT : 0;

    for (;;) {
        ssize_t n = recv(sockfd, buf, len, flags);

        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = sock_wait_ready(sockfd, POLLIN, deadline);
            if (rc < 0)
                return rc;
            continue;
        }
        return -errno;
    }
}

int sock_send_deadline(int sockfd, const char *buf, size_t len,
                       int timeout_ms, int64_t deadline)
{
    /* MSG_NOSIGNAL: a peer that went away must become EPIPE, not a
     * SIGPIPE killing the daemon. */
    int flags = MSG_NOSIGNAL | (timeout_ms >= 0 ? MSG_DONTWAIT : 0);
    size_t done = 0;

    while (done < len) {
        ssize_t n = send(sockfd, buf + done, len - done, flags);

        if (n >= 0) {
            done += n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int rc = sock_wait_ready(sockfd, POLLOUT, deadline);
            if (rc < 0)
                return rc;
            continue;
        }
        return -errno;
    }

    return 0;
}

int64_t ioutil_recv_full(int sockfd, void *buf, size_t len, int timeout_ms)
{
    return recv_deadline(sockfd, buf, len, timeout_ms,
                         sock_deadline_from(timeout_ms));
}

int ioutil_send_full(int sockfd, const void *buf, size_t len, int timeout_ms)
{
    return sock_send_deadline(sockfd, buf, len, timeout_ms,
                         sock_deadline_from(timeout_ms));
}

int64_t ioutil_recv_some(int sockfd, void *buf, size_t len, int timeout_ms)
{
    return sock_recv_some(sockfd, buf, len, timeout_ms,
                          sock_deadline_from(timeout_ms));
}

int64_t ioutil_send_some(int sockfd, const void *buf, size_t len)
{
    for (;;) {
        ssize_t n = send(sockfd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);

        if (n >= 0)
            return n;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

int ioutil_fallocate(int fd, int mode, int64_t offset, int64_t length)
{
    for (;;) {
        if (fallocate(fd, mode, offset, length) == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

static int blk_range_ioctl(int fd, unsigned long request, uint64_t offset,
                           uint64_t length)
{
    uint64_t range[2] = { offset, length };

    for (;;) {
        if (ioctl(fd, request, range) == 0)
            return 0;
        if (errno != EINTR)
            return -errno;
    }
}

int ioutil_blkzeroout(int fd, uint64_t offset, uint64_t length)
{
    return blk_range_ioctl(fd, BLKZEROOUT, offset, length);
}

int ioutil_blksszget(int fd)
{
    int size;

    if (ioctl(fd, BLKSSZGET, &size) < 0)
        return -errno;
    return size;
}

int ioutil_blkgetsize64(int fd, uint64_t *size)
{
    if (ioctl(fd, BLKGETSIZE64, size) < 0)
        return -errno;
    return 0;
}

/*
 * Linux 6.1 reports the direct I/O offset alignment in statx(). It is the
 * only way to learn the alignment of an empty file: O_DIRECT reads at or
 * past end of file succeed without any alignment check, so probing them
 * proves nothing. Returns 0 when the kernel, the headers we were built
 * with, or the file system do not report it.
 */
int ioutil_dio_offset_align(int fd)
{
#ifdef STATX_DIOALIGN
    struct statx st;

    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) < 0) {
        if (errno == ENOSYS || errno == EINVAL)
            return 0;
        return -errno;
    }
    if (!(st.stx_mask & STATX_DIOALIGN))
        return 0;
    return st.stx_dio_offset_align;
#else
    (void)fd;
    return 0;
#endif
}

/*
 * Check a short prefix byte by byte, so typical data fails fast, then
 * compare the buffer with itself shifted by the prefix length: if the
 * prefix is zero and every byte equals the one 16 bytes earlier, all are
 * zero. memcmp is vectorized, so this runs at memory speed.
 */
int ioutil_is_zero(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    size_t i;

    for (i = 0; i < 16 && i < len; i++) {
        if (p[i])
            return 0;
    }
    if (len <= 16)
        return 1;
    return memcmp(p, p + 16, len - 16) == 0;
}

static int add_extent(int64_t *starts, int64_t *lengths, uint8_t *is_data,
                      int i, int64_t start, int64_t end, int data)
{
    starts[i] = start;
    lengths[i] = end - start;
    is_data[i] = data;
    return i + 1;
}

/*
 * Describe [start, end) as alternating data and hole extents, filling at
 * most max_extents entries; the caller continues from the end of the last
 * one. SEEK_DATA fails with ENXIO when no data follows the offset, which
 * also covers offsets at or beyond end of file: the rest is a hole.
 *
 * lseek moves the descriptor's file position; callers use positional I/O
 * only, so that is harmless.
 */
int ioutil_scan_extents(int fd, int64_t start, int64_t end, int64_t *starts,
                        int64_t *lengths, uint8_t *is_data, int max_extents)
{
    int64_t pos = start;
    int n = 0;

    while (pos < end && n < max_extents) {
        off_t data = lseek(fd, pos, SEEK_DATA);
        off_t hole;

        if (data < 0) {
            if (errno != ENXIO)
                return -errno;
            n = add_extent(starts, lengths, is_data, n, pos, end, 0);
            break;
        }

        if (data > pos) {
            int64_t stop = data < end ? data : end;
            n = add_extent(starts, lengths, is_data, n, pos, stop, 0);
            pos = stop;
            continue;
        }

        hole = lseek(fd, pos, SEEK_HOLE);
        if (hole < 0) {
            /* The file shrank under us: what was there is gone. */
            if (errno != ENXIO)
                return -errno;
            n = add_extent(starts, lengths, is_data, n, pos, end, 0);
            break;
        }

        {
            int64_t stop = hole < end ? hole : end;
            n = add_extent(starts, lengths, is_data, n, pos, stop, 1);
            pos = stop;
        }
    }

    return n;
}
