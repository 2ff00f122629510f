/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Bulk reads from a TLS connection that Python's ssl module set up.
 *
 * Python's SSLSocket.recv_into returns at most one TLS record (16 KiB) per
 * call, and OpenSSL without read-ahead issues two read(2) calls per record
 * (header, then body). For an 8 MiB request body that is ~500 trips
 * through the interpreter and ~1000 system calls, each dropping and
 * retaking the GIL; with several connections the GIL hand-offs cost more
 * than the decryption. Here one call fills the whole buffer with the GIL
 * released, and read-ahead lets OpenSSL pull many records per read(2).
 *
 * The SSL pointer comes from ovirt_imageio/util/tlsio.py, which checks it
 * (see there) before passing it in. The connection is used by one thread
 * at a time, as with the ssl module itself.
 */

#define _GNU_SOURCE

#include "ioutil.h"
#include "sock.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/opensslv.h>
#include <openssl/ssl.h>

unsigned long ioutil_tls_openssl_version(void)
{
    return OpenSSL_version_num();
}

int ioutil_tls_get_fd(void *ssl)
{
    return SSL_get_fd(ssl);
}

void ioutil_tls_set_read_ahead(void *ssl, size_t buffer_size)
{
    /* The read buffer is allocated on first use, so this must run before
     * the handshake for the size to apply; read-ahead itself works either
     * way. */
    SSL_set_read_ahead(ssl, 1);
    SSL_set_default_read_buffer_len(ssl, buffer_size);
}

/*
 * While waiting for records, SO_RCVLOWAT keeps TCP from waking us for
 * every segment (see recv_deadline in ioutil.c). It must never exceed
 * the ciphertext still to come: when SSL_read wants more, OpenSSL holds
 * at most part of one record (under 17 KiB), so everything but SLACK of
 * what is missing is surely on its way.
 */
#define LOWAT_MAX (192 * 1024)
#define LOWAT_SLACK (64 * 1024)

static void describe(char *err, size_t errlen, unsigned long code)
{
    if (errlen == 0)
        return;
    if (code == 0)
        snprintf(err, errlen, "TLS protocol error");
    else
        ERR_error_string_n(code, err, errlen);
}

int64_t ioutil_tls_recv_full(void *ssl, int fd, void *buf, size_t len,
                             int timeout_ms, char *err, size_t errlen)
{
    char *p = buf;
    size_t done = 0;
    int lowat = 1;  /* The socket's value between calls (the default). */
    int64_t result;

    if (errlen > 0)
        err[0] = '\0';

    while (done < len) {
        size_t n = 0;
        int rc;
        unsigned long code;

        /* SSL_get_error looks at this thread's error queue; stale
         * entries from another use of the thread would be misread. */
        ERR_clear_error();
        rc = SSL_read_ex(ssl, p + done, len - done, &n);
        if (rc == 1) {
            done += n;
            continue;
        }

        switch (SSL_get_error(ssl, rc)) {
        case SSL_ERROR_WANT_READ: {
            size_t left = len - done;
            size_t mark = left > LOWAT_SLACK ? left - LOWAT_SLACK : 1;

            sock_set_lowat(fd, &lowat,
                           mark < LOWAT_MAX ? (int)mark : LOWAT_MAX);
            rc = sock_wait_ready(fd, POLLIN,
                                 sock_deadline_from(timeout_ms));
            if (rc < 0) {
                result = rc;
                goto out;
            }
            continue;
        }
        case SSL_ERROR_WANT_WRITE:
            /* A key update or renegotiation may need to write first. */
            rc = sock_wait_ready(fd, POLLOUT,
                                 sock_deadline_from(timeout_ms));
            if (rc < 0) {
                result = rc;
                goto out;
            }
            continue;
        case SSL_ERROR_ZERO_RETURN:
            /* close_notify: a clean end of stream. */
            result = done;
            goto out;
        case SSL_ERROR_SYSCALL:
            code = ERR_get_error();
            if (code == 0) {
                /* The socket hit end of stream or an error such as a
                 * reset. Python's ssl reports both as end of stream on
                 * reads (a suppressed ragged EOF); so do we, and the
                 * caller sees a short read either way. */
                result = done;
                goto out;
            }
            describe(err, errlen, code);
            ERR_clear_error();
            result = -EPROTO;
            goto out;
        default:
            code = ERR_get_error();
            /* The peer closing TCP without close_notify: Python's ssl
             * (suppress_ragged_eofs) reads that as end of stream, and so
             * do we; the caller sees a short read. */
            if (ERR_GET_LIB(code) == ERR_LIB_SSL &&
                ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
                ERR_clear_error();
                result = done;
                goto out;
            }
            describe(err, errlen, code);
            ERR_clear_error();
            result = -EPROTO;
            goto out;
        }
    }
    result = done;

out:
    /* Later reads (the next request head) want any byte at all. */
    sock_set_lowat(fd, &lowat, 1);
    return result;
}
