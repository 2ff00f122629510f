/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The receive loop of chunked request bodies for plain sockets: payload
 * straight into the caller's buffer, the common framing between chunks
 * parsed here, so a 64 KiB chunk (what curl sends) costs two recv(2)
 * calls and no trip through Python.
 *
 * Only the framing every client sends in the middle of a body is parsed
 * here: the CRLF ending a chunk's payload and a size line of 1 to 16 hex
 * digits and CRLF, size above 0 and below 2^63 (the rules of the fast
 * path of ovirt_imageio/http/chunked.py). Anything else (extensions, a
 * bare LF, the last chunk and the trailers, malformed bytes) stops the
 * loop with the received bytes kept in the state, and the Python decoder
 * takes over with its full rules and error messages. Nothing is parsed
 * twice and nothing is judged here.
 *
 * The state (struct ioutil_chunked, owned by the caller) carries the
 * position between calls: chunk_left payload bytes of the current chunk
 * to come, after_data when the framing to come starts with the CRLF of a
 * chunk that ended, and up to sizeof(data) received bytes not used yet.
 */

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include "ioutil.h"
#include "sock.h"

#define MAX_DIGITS 16
#define MAX_CHUNK INT64_MAX

static int hex_value(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * Parse the simple framing at the start of st->data. Returns the bytes
 * it takes (and sets chunk_left), 0 if more bytes could still make it
 * simple, -1 if it is not the simple form.
 */
static int parse_framing(struct ioutil_chunked *st)
{
    const uint8_t *p = st->data;
    size_t n = st->pending;
    size_t i = 0;
    size_t digits = 0;
    uint64_t size = 0;

    if (st->after_data) {
        if (n < 1)
            return 0;
        if (p[0] != '\r')
            return -1;
        if (n < 2)
            return 0;
        if (p[1] != '\n')
            return -1;
        i = 2;
    }
    for (;;) {
        int v;

        if (i >= n)
            return 0;
        v = hex_value(p[i]);
        if (v < 0)
            break;
        if (++digits > MAX_DIGITS)
            return -1;
        size = size * 16 + (uint64_t)v;
        i++;
    }
    if (digits == 0 || p[i] != '\r')
        return -1;
    if (i + 1 >= n)
        return 0;
    if (p[i + 1] != '\n')
        return -1;
    if (size == 0 || size > (uint64_t)MAX_CHUNK)
        return -1;
    st->chunk_left = (int64_t)size;
    return (int)(i + 2);
}

static void drop_pending(struct ioutil_chunked *st, size_t n)
{
    memmove(st->data, st->data + n, st->pending - n);
    st->pending -= n;
}

int64_t ioutil_chunked_recv(int sockfd, void *buf, size_t len,
                            int timeout_ms, struct ioutil_chunked *st)
{
    char *out = buf;
    size_t pos = 0;
    int64_t deadline = sock_deadline_from(timeout_ms);
    int64_t n = 0;

    st->status = IOUTIL_CHUNKED_FULL;
    st->error = 0;

    while (pos < len) {
        if (st->chunk_left > 0) {
            size_t want = len - pos;

            if ((uint64_t)st->chunk_left < want)
                want = (size_t)st->chunk_left;
            if (st->pending) {
                n = want < st->pending ? want : st->pending;
                memcpy(out + pos, st->data, n);
                drop_pending(st, n);
            } else {
                n = sock_recv_some(sockfd, out + pos, want, timeout_ms,
                                   deadline);
                if (n <= 0)
                    goto failed;
            }
            pos += n;
            st->chunk_left -= n;
            st->total += n;
            if (st->chunk_left == 0)
                st->after_data = 1;
            continue;
        }

        n = parse_framing(st);
        if (n > 0) {
            drop_pending(st, n);
            st->after_data = 0;
            continue;
        }
        if (n < 0 || st->pending == sizeof(st->data)) {
            st->status = IOUTIL_CHUNKED_FRAMING;
            break;
        }
        /* Framing to come: a little more than it, the rest is payload
         * copied out above (at most sizeof(data) bytes a chunk). */
        n = sock_recv_some(sockfd, (char *)st->data + st->pending,
                           sizeof(st->data) - st->pending, timeout_ms,
                           deadline);
        if (n <= 0)
            goto failed;
        st->pending += n;
    }
    return pos;

failed:
    if (n == 0) {
        st->status = IOUTIL_CHUNKED_EOF;
    } else {
        st->status = IOUTIL_CHUNKED_ERROR;
        st->error = (int)-n;
    }
    return pos;
}

const int IOUTIL_CHUNKED_FULL = 0;
const int IOUTIL_CHUNKED_FRAMING = 1;
const int IOUTIL_CHUNKED_EOF = 2;
const int IOUTIL_CHUNKED_ERROR = 3;
