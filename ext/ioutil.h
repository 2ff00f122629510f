/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Small zero-copy I/O helpers for ovirt-imageio, reached from Python
 * through cffi (module ovirt_imageio._ioutil, wrapped by
 * ovirt_imageio/ioutil.py).
 *
 * Conventions shared by every function:
 *
 * - Errors are returned as -errno; nothing here touches the global errno
 *   of the caller's thread in a way the caller must inspect.
 * - Buffers are owned by the caller (Python memory exposed with
 *   ffi.from_buffer); nothing is allocated here.
 * - Interrupted system calls (EINTR) are retried. cffi releases the GIL
 *   around every call, so Python signal handlers run once the call
 *   returns, never in the middle of it.
 * - Timeouts are in milliseconds; a negative timeout waits forever.
 *
 * Functions:
 *
 * - pread_full / pwrite_full: loop until len bytes are transferred;
 *   pread_full returns the bytes read, short only at end of file.
 * - aio_open / aio_close / aio_pwrite_full (ext/aio.c): pwrite_full
 *   through a Linux AIO context of one request, submitted and waited for
 *   in the call (why: see aio.c). aio_open returns NULL and sets *err to
 *   -errno when the kernel gives no context; a context serves one thread
 *   at a time.
 * - aioq_open / aioq_submit / aioq_kick / aioq_reap / aioq_close
 *   (ext/aio.c): a Linux AIO queue of up to depth reads and writes in
 *   flight, each completion signalling the eventfd efd. submit queues a
 *   request, or returns -EAGAIN when depth are queued or in flight; kick
 *   gives the queued ones to the kernel together, so the caller kicks
 *   before it waits on efd. A request the kernel refuses fails in its
 *   result. reap collects up to max (tag, result) pairs without waiting
 *   and returns their count; reset waits for the requests in flight and
 *   drops the queued and refused ones, leaving the queue empty for reuse
 *   (-errno if waiting failed; the queue must then be closed); close
 *   resets and releases the queue. A queue serves one thread at a time.
 * - recv_full / send_full: the same on a socket, within timeout_ms for the
 *   whole call (-ETIMEDOUT when it expires). recv_full is short only when
 *   the peer closed. While it waits, recv_full raises the socket's
 *   SO_RCVLOWAT to what is still missing (at most 256 KiB) so TCP wakes
 *   it less often, and sets it back to 1 before returning. send_full uses
 *   MSG_NOSIGNAL.
 * - recv_some: what the socket has, up to len bytes, waiting within
 *   timeout_ms for at least one (-ETIMEDOUT); 0 at end of stream. It
 *   tries recv first and polls only when nothing is there.
 * - send_some: one send without waiting (MSG_DONTWAIT | MSG_NOSIGNAL);
 *   returns the bytes the socket took, 0 when it took none.
 * - fallocate, blkzeroout, blksszget, blkgetsize64: thin
 *   wrappers over fallocate(2) and the BLK* ioctls.
 * - dio_offset_align: statx(STATX_DIOALIGN) offset alignment, or 0 if
 *   unknown.
 * - is_zero: 1 if all len bytes are zero.
 * - scan_extents: fill up to max_extents (start, length, is_data) entries
 *   describing [start, end) with SEEK_DATA/SEEK_HOLE; returns the count.
 *
 * - tls_recv_full (ext/tls.c): recv_full over a TLS connection, given
 *   the OpenSSL SSL object of a Python SSLSocket (as void *) and its fd.
 *   The timeout applies to each wait for the socket, as with a Python
 *   socket timeout. Like recv_full it raises SO_RCVLOWAT while waiting
 *   (to what is missing less 64 KiB, at most 192 KiB) and resets it. A clean or unclean end of stream gives a short count;
 *   TLS errors return -EPROTO with OpenSSL's description in err.
 * - tls_send_full (ext/tls.c): send all of buf as TLS records, encrypted
 *   in batches of 320 KiB and sent with one send(2) each. The timeout
 *   applies to each batch. 0; -EINPROGRESS when it cannot start (before
 *   the handshake is done, or out of memory; nothing sent, use the ssl
 *   module); -EPROTO with OpenSSL's description in err; or another
 *   -errno.
 * - tls_encrypt (ext/tls.c): the records of up to 320 KiB of buf,
 *   encrypted into out (cap at least len + 16 KiB) for the caller to
 *   send; their length, or the errors of tls_send_full.
 *   tls_buffer_reads (before the handshake: the SSL object reads the
 *   socket through a buffer of that size and keeps its record buffer
 *   between records; 0 or -errno, reads then stay unbuffered),
 *   tls_get_fd and tls_openssl_version support the checks and tuning
 *   in ovirt_imageio/native/tlsio.py; tls_has_pending says whether
 *   OpenSSL holds received bytes, decrypted or not, that a poll(2) on
 *   the socket would not report.
 * - chunked_recv (ext/chunked.c): payload of a chunked body into buf
 *   until it is full, parsing the common framing between chunks; the
 *   position lives in the caller's struct ioutil_chunked, and status
 *   says why the call returned: IOUTIL_CHUNKED_FULL (buf full),
 *   _FRAMING (framing only the Python decoder parses: in data[0:pending]),
 *   _EOF (the peer closed) or _ERROR (error holds the errno, e.g.
 *   ETIMEDOUT). Returns the payload bytes stored, also when it failed.
 * - blake2b_* (ext/blake2b.c): unkeyed BLAKE2b through libsodium, on a
 *   state of IOUTIL_BLAKE2B_STATE_SIZE bytes aligned to
 *   IOUTIL_BLAKE2B_ALIGN that the caller owns; blake2b_final finishes a
 *   copy (in scratch, same size and alignment), so the state can go on.
 *   -EINVAL for a digest length outside 16..64.
 *
 * The block between the cdef markers is also fed to cffi's cdef() by
 * ext/build_ioutil.py, so it must stay plain declarations: no macros, no
 * includes, no comments inside it.
 */

#ifndef OVIRT_IMAGEIO_IOUTIL_H
#define OVIRT_IMAGEIO_IOUTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* cdef-begin */
int64_t ioutil_pread_full(int fd, void *buf, size_t len, int64_t offset);
int ioutil_pwrite_full(int fd, const void *buf, size_t len, int64_t offset);
struct ioutil_aio;
struct ioutil_aio *ioutil_aio_open(int *err);
void ioutil_aio_close(struct ioutil_aio *aio);
int ioutil_aio_pwrite_full(struct ioutil_aio *aio, int fd, const void *buf, size_t len, int64_t offset);
struct ioutil_aioq;
struct ioutil_aioq *ioutil_aioq_open(unsigned depth, int efd, int *err);
int ioutil_aioq_submit(struct ioutil_aioq *q, int fd, int write, void *buf, size_t len, int64_t offset, uint64_t tag);
void ioutil_aioq_kick(struct ioutil_aioq *q);
int ioutil_aioq_reap(struct ioutil_aioq *q, uint64_t *tags, int64_t *results, int max);
int ioutil_aioq_reset(struct ioutil_aioq *q);
void ioutil_aioq_close(struct ioutil_aioq *q);
int64_t ioutil_recv_full(int sockfd, void *buf, size_t len, int timeout_ms);
int64_t ioutil_recv_some(int sockfd, void *buf, size_t len, int timeout_ms);
int ioutil_send_full(int sockfd, const void *buf, size_t len, int timeout_ms);
int64_t ioutil_send_some(int sockfd, const void *buf, size_t len);
int ioutil_fallocate(int fd, int mode, int64_t offset, int64_t length);
int ioutil_blkzeroout(int fd, uint64_t offset, uint64_t length);
int ioutil_blksszget(int fd);
int ioutil_blkgetsize64(int fd, uint64_t *size);
int ioutil_dio_offset_align(int fd);
int ioutil_is_zero(const void *buf, size_t len);
int ioutil_scan_extents(int fd, int64_t start, int64_t end, int64_t *starts, int64_t *lengths, uint8_t *is_data, int max_extents);
int64_t ioutil_tls_recv_full(void *ssl, int fd, void *buf, size_t len, int timeout_ms, char *err, size_t errlen);
int ioutil_tls_buffer_reads(void *ssl, size_t buffer_size);
int ioutil_tls_send_full(void *ssl, int fd, const void *buf, size_t len, int timeout_ms, char *err, size_t errlen);
int64_t ioutil_tls_encrypt(void *ssl, const void *buf, size_t len, void *out, size_t cap, char *err, size_t errlen);
extern const size_t IOUTIL_TLS_ENCRYPT_MAX;
extern const size_t IOUTIL_TLS_ENCRYPT_SLACK;
int ioutil_tls_get_fd(void *ssl);
int ioutil_tls_has_pending(void *ssl);
unsigned long ioutil_tls_openssl_version(void);
struct ioutil_chunked {
    int64_t chunk_left;
    int64_t total;
    int after_data;
    int status;
    int error;
    uint32_t pending;
    uint8_t data[64];
};
int64_t ioutil_chunked_recv(int sockfd, void *buf, size_t len, int timeout_ms, struct ioutil_chunked *st);
extern const int IOUTIL_CHUNKED_FULL;
extern const int IOUTIL_CHUNKED_FRAMING;
extern const int IOUTIL_CHUNKED_EOF;
extern const int IOUTIL_CHUNKED_ERROR;
int ioutil_blake2b_setup(void);
int ioutil_blake2b_init(void *state, size_t outlen);
int ioutil_blake2b_update(void *state, const void *buf, size_t len);
int ioutil_blake2b_final(const void *state, void *scratch, void *out, size_t outlen);
extern const size_t IOUTIL_BLAKE2B_STATE_SIZE;
extern const size_t IOUTIL_BLAKE2B_ALIGN;
extern const int IOUTIL_FALLOC_FL_KEEP_SIZE;
extern const int IOUTIL_FALLOC_FL_PUNCH_HOLE;
extern const int IOUTIL_FALLOC_FL_ZERO_RANGE;
/* cdef-end */

#endif
