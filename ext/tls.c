/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Bulk reads and writes on a TLS connection that Python's ssl module set
 * up.
 *
 * Python's SSLSocket.recv_into returns at most one TLS record (16 KiB) per
 * call, and OpenSSL without read-ahead issues two read(2) calls per record
 * (header, then body). For an 8 MiB request body that is ~500 trips
 * through the interpreter and ~1000 system calls, each dropping and
 * retaking the GIL; with several connections the GIL hand-offs cost more
 * than the decryption. Here one call fills the whole buffer with the GIL
 * released, and read-ahead lets OpenSSL pull many records per read(2).
 *
 * Writes have the mirror problem: SSL_write hands each 16 KiB record to
 * the socket with its own write(2), and on TCP every small write costs
 * both ends (segments, wake-ups, ACKs). tls_send_full has OpenSSL encrypt
 * a batch of records into memory and sends the batch with one send(2).
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
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bio.h>
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

/* Describe code in err, clear the error queue and return -EPROTO. */
static int protocol_error(char *err, size_t errlen, unsigned long code)
{
    if (errlen > 0) {
        if (code == 0)
            snprintf(err, errlen, "TLS protocol error");
        else
            ERR_error_string_n(code, err, errlen);
    }
    ERR_clear_error();
    return -EPROTO;
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

    /* SSL_get_error looks at this thread's error queue; stale entries
     * from another use of the thread would be misread. Successful reads
     * and retries add nothing to the queue and every failure below ends
     * the call, so clearing once is enough (clearing before each record
     * cost 2% of the daemon's CPU). */
    ERR_clear_error();

    while (done < len) {
        size_t n = 0;
        int rc;
        int error;
        unsigned long code;

        rc = SSL_read_ex(ssl, p + done, len - done, &n);
        if (rc == 1) {
            done += n;
            continue;
        }

        switch (error = SSL_get_error(ssl, rc)) {
        case SSL_ERROR_WANT_READ:
        case SSL_ERROR_WANT_WRITE: {
            /* Writing first happens for a key update or renegotiation. */
            short events = POLLOUT;

            if (error == SSL_ERROR_WANT_READ) {
                size_t left = len - done;
                size_t mark = left > LOWAT_SLACK ? left - LOWAT_SLACK : 1;

                sock_set_lowat(fd, &lowat,
                               mark < LOWAT_MAX ? (int)mark : LOWAT_MAX);
                events = POLLIN;
            }
            rc = sock_wait_ready(fd, events, sock_deadline_from(timeout_ms));
            if (rc < 0) {
                result = rc;
                goto out;
            }
            continue;
        }
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
            result = protocol_error(err, errlen, code);
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
            result = protocol_error(err, errlen, code);
            goto out;
        }
    }
    result = done;

out:
    /* Later reads (the next request head) want any byte at all. */
    sock_set_lowat(fd, &lowat, 1);
    return result;
}

/*
 * Writes.
 *
 * For the length of a tls_send_full call the SSL object writes to a BIO
 * of ours that appends records to a buffer; the socket's own BIO is put
 * back before returning, so the ssl module finds the object as it left
 * it. OpenSSL only ever adds bytes to the write BIO, so swapping it
 * between SSL_write calls is safe once the handshake is done.
 *
 * Measured on loopback TCP (2 cores, 1 GiB): 16 KiB writes cost the
 * sender 0.35 s and the receiver 0.18 s; 256 KiB writes 0.11-0.25 s and
 * 0.06-0.09 s.
 */
#define SEND_BATCH (256 * 1024)

/* Room for the record overhead of a batch (TLS 1.2 CBC needs the most,
 * under 100 bytes per record); the buffer grows if it ever falls short. */
#define SEND_SLACK (16 * 1024)

/* Nothing sent: use the ssl module. */
#define DECLINED (-EINPROGRESS)

struct batch {
    char *data;
    size_t len;
    size_t cap;
};

static BIO_METHOD *batch_method;
static pthread_once_t batch_once = PTHREAD_ONCE_INIT;

static int batch_write_ex(BIO *bio, const char *data, size_t len,
                          size_t *written)
{
    struct batch *b = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (len > b->cap - b->len) {
        size_t cap = (b->len + len) * 2;
        char *p = realloc(b->data, cap);

        if (p == NULL)
            return 0;
        b->data = p;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    *written = len;
    return 1;
}

static long batch_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    (void)bio;
    (void)num;
    (void)ptr;
    /* Flushing is ours to do; everything else is unsupported. */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static void make_batch_method(void)
{
    int index = BIO_get_new_index();
    BIO_METHOD *m;

    if (index == -1)
        return;
    m = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK, "ovirt-imageio batch");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write_ex(m, batch_write_ex) ||
        !BIO_meth_set_ctrl(m, batch_ctrl)) {
        BIO_meth_free(m);
        return;
    }
    batch_method = m;
}

int ioutil_tls_send_full(void *ssl, int fd, const void *buf, size_t len,
                         int timeout_ms, char *err, size_t errlen)
{
    const char *p = buf;
    struct batch b = { 0 };
    BIO *sock_bio;
    BIO *ours;
    size_t done = 0;
    int result = 0;

    if (errlen > 0)
        err[0] = '\0';

    /* Whatever stops us before the first record (no handshake yet, no
     * memory) is DECLINED: nothing was sent, and the caller uses the ssl
     * module instead. */
    if (!SSL_is_init_finished(ssl))
        return DECLINED;
    if (pthread_once(&batch_once, make_batch_method) != 0 ||
        batch_method == NULL)
        return DECLINED;

    b.cap = SEND_BATCH + SEND_SLACK;
    b.data = malloc(b.cap);
    if (b.data == NULL)
        return DECLINED;
    ours = BIO_new(batch_method);
    if (ours == NULL) {
        free(b.data);
        return DECLINED;
    }
    BIO_set_data(ours, &b);
    BIO_set_init(ours, 1);

    /* SSL_set0_wbio drops the SSL object's reference to the socket BIO;
     * ours keeps it alive until it goes back. */
    sock_bio = SSL_get_wbio(ssl);
    if (sock_bio == NULL || !BIO_up_ref(sock_bio)) {
        BIO_free(ours);
        free(b.data);
        return DECLINED;
    }
    SSL_set0_wbio(ssl, ours);

    while (done < len) {
        size_t n = len - done < SEND_BATCH ? len - done : SEND_BATCH;
        size_t written = 0;
        int rc;

        ERR_clear_error();
        if (SSL_write_ex(ssl, p + done, n, &written) != 1) {
            unsigned long code = ERR_get_error();

            result = protocol_error(err, errlen, code);
            if (code == 0 && errlen > 0)
                snprintf(err, errlen, "TLS write failed (SSL error %d)",
                         SSL_get_error(ssl, 0));
            break;
        }
        done += written;

        rc = sock_send_deadline(fd, b.data, b.len, timeout_ms,
                                sock_deadline_from(timeout_ms));
        b.len = 0;
        if (rc < 0) {
            result = rc;
            break;
        }
    }

    /* Frees ours and hands our reference back to the SSL object. */
    SSL_set0_wbio(ssl, sock_bio);
    free(b.data);
    return result;
}
