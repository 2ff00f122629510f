# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD door: tickets served as NBD exports on a unix socket and on TCP
(STARTTLS when the daemon has TLS). It speaks NBD through the sans-IO
``nbd/`` layer and reaches storage only through the transfer core, with
the same authorization, expiry, cancel and buffers as the HTTP door.
"""
