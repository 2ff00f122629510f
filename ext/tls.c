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
 * released, and a buffering read BIO lets OpenSSL pull many records per
 * read(2).
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
#include <sys/socket.h>

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

int ioutil_tls_has_pending(void *ssl)
{
    /* Unlike SSL_pending, also counts bytes received but not decrypted:
     * in OpenSSL's record buffer, or in our read BIO (see below), where a
     * whole request may wait. */
    BIO *rbio = SSL_get_rbio(ssl);

    return SSL_has_pending(ssl) || (rbio != NULL && BIO_pending(rbio) > 0);
}

/*
 * Buffered reads.
 *
 * OpenSSL's read-ahead fills its record buffer with one read(2), but
 * before each record it moves everything still unread to the start of
 * the buffer, so the record's payload lands aligned (ssl3_read_n): with
 * 256 KiB read ahead each byte received was copied about eight times,
 * and memmove took 15% of the daemon's CPU on TLS uploads. So read-ahead
 * stays off and the SSL object reads through a BIO of ours instead: it
 * keeps one recv(2) of up to buffer_size bytes and hands OpenSSL each
 * record's header and body from there, one copy of each byte.
 *
 * The BIO takes the place of the socket BIO for reading only (the
 * socket BIO still writes) and is freed with the SSL object. It is
 * non-blocking exactly when the socket is (the ssl module sets the
 * socket's mode; the BIO only passes recv's EAGAIN on as a retry), and
 * reports the socket's descriptor (SSL_get_fd) and end of stream
 * (BIO_eof) as the socket BIO does, which OpenSSL and the ssl module ask.
 */
struct readbuf {
    int fd;
    int eof;
    size_t start;
    size_t end;
    size_t cap;
    char data[];
};

static BIO_METHOD *readbuf_method;
static pthread_once_t readbuf_once = PTHREAD_ONCE_INIT;

static int readbuf_read_ex(BIO *bio, char *out, size_t len, size_t *done)
{
    struct readbuf *r = BIO_get_data(bio);
    size_t n;

    BIO_clear_retry_flags(bio);
    if (r->start == r->end) {
        ssize_t got;

        do {
            got = recv(r->fd, r->data, r->cap, 0);
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                BIO_set_retry_read(bio);
            return 0;
        }
        if (got == 0) {
            r->eof = 1;
            return 0;
        }
        r->start = 0;
        r->end = (size_t)got;
    }
    n = r->end - r->start < len ? r->end - r->start : len;
    memcpy(out, r->data + r->start, n);
    r->start += n;
    *done = n;
    return 1;
}

static long readbuf_ctrl(BIO *bio, int cmd, long num, void *ptr)
{
    struct readbuf *r = BIO_get_data(bio);

    (void)num;
    switch (cmd) {
    case BIO_C_GET_FD:
        if (ptr != NULL)
            *(int *)ptr = r->fd;
        return r->fd;
    case BIO_CTRL_PENDING:
        return (long)(r->end - r->start);
    case BIO_CTRL_EOF:
        return r->eof && r->start == r->end;
    case BIO_C_SET_NBIO:
        /* The socket's mode, set by the ssl module on the write BIO,
         * which is the socket BIO on the same descriptor. */
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int readbuf_destroy(BIO *bio)
{
    free(BIO_get_data(bio));
    BIO_set_data(bio, NULL);
    return 1;
}

static void make_readbuf_method(void)
{
    int index = BIO_get_new_index();
    BIO_METHOD *m;

    if (index == -1)
        return;
    m = BIO_meth_new(index | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                     "ovirt-imageio buffered socket read");
    if (m == NULL)
        return;
    if (!BIO_meth_set_read_ex(m, readbuf_read_ex) ||
        !BIO_meth_set_ctrl(m, readbuf_ctrl) ||
        !BIO_meth_set_destroy(m, readbuf_destroy)) {
        BIO_meth_free(m);
        return;
    }
    readbuf_method = m;
}

int ioutil_tls_buffer_reads(void *ssl, size_t buffer_size)
{
    struct readbuf *r;
    BIO *bio;
    int fd = SSL_get_rfd(ssl);

    /* Before the handshake only: no record may sit in the socket BIO's
     * hands (it keeps none without read-ahead, but the rule is simple). */
    if (fd < 0 || SSL_is_init_finished(ssl) || buffer_size == 0)
        return -EINVAL;
    if (pthread_once(&readbuf_once, make_readbuf_method) != 0 ||
        readbuf_method == NULL)
        return -ENOMEM;
    r = malloc(sizeof(*r) + buffer_size);
    if (r == NULL)
        return -ENOMEM;
    *r = (struct readbuf){ .fd = fd, .cap = buffer_size };
    bio = BIO_new(readbuf_method);
    if (bio == NULL) {
        free(r);
        return -ENOMEM;
    }
    BIO_set_data(bio, r);
    BIO_set_init(bio, 1);
    /* Drops the SSL object's read reference to the socket BIO; its write
     * reference keeps it. */
    SSL_set0_rbio(ssl, bio);
    /* The ssl module asks OpenSSL to free its record buffer whenever it
     * is empty, to save idle connections memory: for us after every
     * record read, and a malloc and a free per 16 KiB. On TLS uploads
     * through the NBD door _int_free alone took 2.3% of the daemon's
     * perf samples, none with the buffer kept (34 KiB a connection). */
    SSL_clear_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    return 0;
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
 * 0.06-0.09 s. A batch is a quarter more than that so an NBD reply of
 * 256 KiB (nbdcopy's requests) and its header go in one: batches of
 * exactly 256 KiB sent the header's last 16-32 bytes as a batch, a
 * send(2) and a record of their own for every reply.
 */
#define SEND_BATCH (320 * 1024)

/* Room for the record overhead of a batch (TLS 1.2 CBC needs the most,
 * under 100 bytes per record); the buffer grows if it ever falls short. */
#define SEND_SLACK (16 * 1024)

const size_t IOUTIL_TLS_ENCRYPT_MAX = SEND_BATCH;
const size_t IOUTIL_TLS_ENCRYPT_SLACK = SEND_SLACK;

/* Nothing sent: use the ssl module. */
#define DECLINED (-EINPROGRESS)

struct batch {
    char *data;
    size_t len;
    size_t cap;
    /* The caller's buffer (tls_encrypt): full is an error, not a
     * realloc. */
    int fixed;
};

static BIO_METHOD *batch_method;
static pthread_once_t batch_once = PTHREAD_ONCE_INIT;

static int batch_write_ex(BIO *bio, const char *data, size_t len,
                          size_t *written)
{
    struct batch *b = BIO_get_data(bio);

    BIO_clear_retry_flags(bio);
    if (len > b->cap - b->len) {
        size_t cap;
        char *p;

        if (b->fixed)
            return 0;
        cap = (b->len + len) * 2;
        p = realloc(b->data, cap);

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

/* Point ssl's write BIO at b until the matching unswap(); NULL if it
 * cannot (nothing changed then). */
static BIO *swap_in_batch(void *ssl, struct batch *b, BIO **ours)
{
    BIO *sock_bio;

    if (pthread_once(&batch_once, make_batch_method) != 0 ||
        batch_method == NULL)
        return NULL;
    *ours = BIO_new(batch_method);
    if (*ours == NULL)
        return NULL;
    BIO_set_data(*ours, b);
    BIO_set_init(*ours, 1);

    /* SSL_set0_wbio drops the SSL object's reference to the socket BIO;
     * ours keeps it alive until it goes back. */
    sock_bio = SSL_get_wbio(ssl);
    if (sock_bio == NULL || !BIO_up_ref(sock_bio)) {
        BIO_free(*ours);
        return NULL;
    }
    SSL_set0_wbio(ssl, *ours);
    return sock_bio;
}

static void unswap(void *ssl, BIO *sock_bio)
{
    /* Frees ours and hands our reference back to the SSL object. */
    SSL_set0_wbio(ssl, sock_bio);
}

/* Encrypt n bytes of p into b; 0 or a negative error. */
static int encrypt_records(void *ssl, const char *p, size_t n, char *err,
                   size_t errlen)
{
    size_t written = 0;

    ERR_clear_error();
    if (SSL_write_ex(ssl, p, n, &written) != 1 || written != n) {
        unsigned long code = ERR_get_error();
        int result = protocol_error(err, errlen, code);

        if (code == 0 && errlen > 0)
            snprintf(err, errlen, "TLS write failed (SSL error %d)",
                     SSL_get_error(ssl, 0));
        return result;
    }
    return 0;
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
    b.cap = SEND_BATCH + SEND_SLACK;
    b.data = malloc(b.cap);
    if (b.data == NULL)
        return DECLINED;
    sock_bio = swap_in_batch(ssl, &b, &ours);
    if (sock_bio == NULL) {
        free(b.data);
        return DECLINED;
    }

    while (done < len) {
        size_t n = len - done < SEND_BATCH ? len - done : SEND_BATCH;
        int rc;

        result = encrypt_records(ssl, p + done, n, err, errlen);
        if (result < 0)
            break;
        done += n;

        rc = sock_send_deadline(fd, b.data, b.len, timeout_ms,
                                sock_deadline_from(timeout_ms));
        b.len = 0;
        if (rc < 0) {
            result = rc;
            break;
        }
    }

    unswap(ssl, sock_bio);
    free(b.data);
    return result;
}

int64_t ioutil_tls_encrypt(void *ssl, const void *buf, size_t len, void *out,
                           size_t cap, char *err, size_t errlen)
{
    struct batch b = { 0 };
    BIO *sock_bio;
    BIO *ours;
    int result;

    if (errlen > 0)
        err[0] = '\0';
    if (!SSL_is_init_finished(ssl))
        return DECLINED;
    if (len > SEND_BATCH || cap < len + SEND_SLACK)
        return -EINVAL;
    /* The caller's memory, never grown: the slack is many times the
     * overhead of a batch's records. */
    b.data = out;
    b.cap = cap;
    b.fixed = 1;
    sock_bio = swap_in_batch(ssl, &b, &ours);
    if (sock_bio == NULL)
        return DECLINED;
    result = encrypt_records(ssl, buf, len, err, errlen);
    unswap(ssl, sock_bio);
    return result < 0 ? result : (int64_t)b.len;
}
