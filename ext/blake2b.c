/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * BLAKE2b through libsodium's generichash, whose compression function is
 * picked at run time for the CPU (AVX2, SSSE3 or portable): about 1.2x
 * the speed of CPython's bundled implementation here, and both the
 * daemon's hash-on-write and the client's verification hash every byte
 * they move. Unkeyed BLAKE2b with outlen bytes of digest is exactly
 * hashlib.blake2b(digest_size=outlen).
 *
 * The state lives in memory owned by the Python object (so its lifetime
 * is that object's); it must be aligned to IOUTIL_BLAKE2B_ALIGN bytes.
 */

#include <errno.h>
#include <string.h>

#include <sodium.h>

#include "ioutil.h"

const size_t IOUTIL_BLAKE2B_STATE_SIZE =
    sizeof(crypto_generichash_blake2b_state);
const size_t IOUTIL_BLAKE2B_ALIGN =
    _Alignof(crypto_generichash_blake2b_state);

int ioutil_blake2b_setup(void)
{
    /* 0 the first time, 1 after; safe to call from several threads. */
    return sodium_init() < 0 ? -ENOSYS : 0;
}

int ioutil_blake2b_init(void *state, size_t outlen)
{
    if (outlen < crypto_generichash_blake2b_BYTES_MIN ||
            outlen > crypto_generichash_blake2b_BYTES_MAX)
        return -EINVAL;
    if (crypto_generichash_blake2b_init(state, NULL, 0, outlen) != 0)
        return -EINVAL;
    return 0;
}

int ioutil_blake2b_update(void *state, const void *buf, size_t len)
{
    if (crypto_generichash_blake2b_update(state, buf, len) != 0)
        return -EINVAL;
    return 0;
}

int ioutil_blake2b_final(const void *state, void *scratch, void *out,
                         size_t outlen)
{
    /*
     * Finishing a state consumes it; hash objects may be updated after a
     * digest (as in hashlib), so finish a copy.
     */
    memcpy(scratch, state, sizeof(crypto_generichash_blake2b_state));
    if (crypto_generichash_blake2b_final(scratch, out, outlen) != 0)
        return -EINVAL;
    return 0;
}
