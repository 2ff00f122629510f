/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The NBD door's loop for relayed reads (nbdrelay.c), built as the cffi
 * module ovirt_imageio.native._nbdrelay, apart from _ioutil because it
 * links libnbd, which client-only installs need not have.
 *
 * One call serves a run of READ requests of one client connection: it
 * takes them from the client's socket, reads each through libnbd on one
 * of the handles given (round robin), and sends the replies, until the
 * run's time is up, a request it does not serve arrives, or something
 * ends it (nbdrelay_args.reason). Nothing is in flight when it returns:
 * every read it started was collected, and answered or handed back.
 *
 * The fields marked "in" are set by the caller; "in/out" hold the
 * client's unparsed bytes (input[0:input_len], the same on return, moved to
 * the front); "out" are results.
 */

#ifndef OVIRT_IMAGEIO_NBDRELAY_H
#define OVIRT_IMAGEIO_NBDRELAY_H

#include <stddef.h>
#include <stdint.h>

/* Why nbdrelay_run returned (nbdrelay_args.reason); see nbdrelay.c. */
enum {
    NBDRELAY_DEADLINE_ = 0,  /* run_ms passed */
    NBDRELAY_OTHER_,         /* input[0:28] is a request it does not serve */
    NBDRELAY_EOF_,           /* the client closed its side */
    NBDRELAY_WAKE_,          /* wake_fd became readable (not read) */
    NBDRELAY_FULL_,          /* max_done requests answered */
    NBDRELAY_FAILED_,        /* reads failed: their headers in failed */
    NBDRELAY_ERROR_,         /* the client socket failed: error; this
                                reason wins over any other */
    NBDRELAY_NO_HANDLE_,     /* no handle was ready */
    NBDRELAY_IDLE_,          /* all it took was answered, nothing waits */
};

/* cdef-begin */
extern const int NBDRELAY_DEADLINE;
extern const int NBDRELAY_OTHER;
extern const int NBDRELAY_EOF;
extern const int NBDRELAY_WAKE;
extern const int NBDRELAY_FULL;
extern const int NBDRELAY_FAILED;
extern const int NBDRELAY_ERROR;
extern const int NBDRELAY_NO_HANDLE;
extern const int NBDRELAY_IDLE;
struct nbdrelay_args {
    /* in: the client's socket (plain TCP or unix). */
    int client_fd;
    /* in: libnbd handles (struct nbd_handle *) to read from. */
    void **handles;
    int nhandles;
    /* in: buffers; each has headroom bytes for a reply header, then
     * room for slot_data bytes of data. */
    uint8_t **slots;
    int nslots;
    size_t headroom;
    size_t slot_data;
    /* in: structured replies were negotiated. */
    int structured;
    /* in: what a served READ may ask: offset and length multiples of
     * align, offset + length at most size. */
    uint64_t size;
    uint32_t align;
    /* in: ends the run when readable; -1 for none. */
    int wake_fd;
    /* in: milliseconds the run takes new requests for. */
    int run_ms;
    /* in: milliseconds the socket may refuse a reply before the run
     * gives up on the client (error ETIMEDOUT); -1 waits forever. */
    int stall_ms;
    /* in/out: the client's bytes not yet parsed. */
    uint8_t *input;
    size_t input_cap;
    size_t input_len;
    /* out: the requests answered, up to max_done. */
    uint64_t *offsets;
    uint32_t *lengths;
    double *seconds;
    size_t max_done;
    size_t ndone;
    /* out: 28-byte headers of the reads that failed (room for nslots). */
    uint8_t *failed;
    size_t nfailed;
    /* out: NBDRELAY_*, and the errno of a failed socket (0 if none). */
    int reason;
    int error;
};

int nbdrelay_run(struct nbdrelay_args *a);
/* cdef-end */

#endif
