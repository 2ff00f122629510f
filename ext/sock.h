/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Socket waiting helpers shared by ioutil.c and tls.c (implemented in
 * ioutil.c). Internal: not part of the cffi interface in ioutil.h.
 *
 * - sock_deadline_from: an absolute CLOCK_MONOTONIC deadline in ms for a
 *   timeout in ms, or -1 (none) for a negative timeout.
 * - sock_wait_ready: poll sockfd for events until the deadline; 0 when
 *   ready (including errors and hang-up), -ETIMEDOUT, or -errno.
 * - sock_set_lowat: set SO_RCVLOWAT to want unless *current already is,
 *   keeping *current in step; best effort.
 * - sock_recv_some: one recv(2) of at most len bytes, waiting for data
 *   until the deadline (a negative timeout_ms means the socket is
 *   blocking): the bytes received, 0 at end of stream, or -errno.
 * - sock_send_deadline: send all of buf (MSG_NOSIGNAL), waiting when the
 *   socket is full until the deadline; a negative timeout_ms means the
 *   socket is blocking. 0 or -errno.
 */

#ifndef OVIRT_IMAGEIO_SOCK_H
#define OVIRT_IMAGEIO_SOCK_H

#include <stddef.h>
#include <stdint.h>

int64_t sock_deadline_from(int timeout_ms);
int sock_wait_ready(int sockfd, short events, int64_t deadline);
void sock_set_lowat(int sockfd, int *current, int want);
int64_t sock_recv_some(int sockfd, char *buf, size_t len, int timeout_ms,
                       int64_t deadline);
int sock_send_deadline(int sockfd, const char *buf, size_t len,
                       int timeout_ms, int64_t deadline);

#endif
