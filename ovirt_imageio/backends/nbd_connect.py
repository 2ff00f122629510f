# SPDX-License-Identifier: GPL-2.0-or-later
"""
Connecting to an NBD server for the nbd backend: the socket, libnbd's
handshake, and the goodbye.

Connecting never hangs. libnbd has no timeout of its own, so we connect
the socket ourselves with a timeout and give it to libnbd, then drive the
handshake with libnbd's asynchronous calls, polling until a deadline. The
handshake runs in option mode:

1. with ``dirty``, list the contexts matching ``qemu:dirty-bitmap:``; the
   export must have exactly one bitmap, else dirty extents are
   unavailable (which bitmap would we report?);
2. request ``base:allocation``, ``qemu:allocation-depth`` and the bitmap;
3. go, and check the export opened.

Failures to connect become ``ConnectError`` with a message safe for an
HTTP client (no socket paths; those go to the log).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Callable

import nbd

from ..net import sndbuf
from .base import Unreachable
from .nbd_url import Address, UnixAddress

# The nbd backend's messages, whichever of its modules logs them.
log = logging.getLogger("ovirt_imageio.backends.nbd")

# Bound on connecting and completing the handshake.
CONNECT_TIMEOUT = 10.0

# Bound on a polite disconnect when closing.
DISCONNECT_TIMEOUT = 2.0

BASE_ALLOCATION = "base:allocation"
ALLOCATION_DEPTH = "qemu:allocation-depth"
DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:"


class ConnectError(Unreachable):
    """Cannot connect to the NBD server or open its export."""


def connect(address: Address, dirty: bool, timeout: float,
            reads_only: bool = False) -> tuple[Any, str | None]:
    """
    Connect to the export at address within timeout seconds; return the
    ready libnbd handle and its dirty bitmap context (if dirty was asked
    and the export has one bitmap). Raises ConnectError.

    A handle for ``reads_only`` (``nbd_spread``) asks for simple replies
    and no meta contexts: it answers no block status. A structured read
    reply reached libnbd in three reads of its own (16, 4 and 8 bytes)
    before the data, a simple one in one (16 bytes), and qemu-nbd looks
    up the allocation of every range it reads for a structured reply,
    to send holes as holes.
    """
    deadline = time.monotonic() + timeout
    sock = _connect_socket(address, deadline)
    h = nbd.NBD()
    try:
        if reads_only:
            h.set_request_structured_replies(False)
        bitmap = _handshake(h, sock, address, dirty and not reads_only,
                            deadline, contexts=not reads_only)
    except BaseException:
        disconnect(h)
        raise
    return h, bitmap


def _connect_socket(address: Address, deadline: float) -> socket.socket:
    timeout = max(0.0, deadline - time.monotonic())
    try:
        if isinstance(address, UnixAddress):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sndbuf.size_unix_send_buffer(sock)
                sock.settimeout(timeout)
                sock.connect(address.path)
            except BaseException:
                sock.close()
                raise
        else:
            sock = socket.create_connection(
                (address.host, address.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except socket.timeout:
        log.warning("Timeout connecting to %s", address)
        raise ConnectError(
            f"Cannot connect to NBD server: Timed out after "
            f"{_seconds(timeout)} seconds") from None
    except OSError as e:
        log.warning("Cannot connect to %s: %s", address, e)
        # strerror never holds the path (OSError keeps it in filename).
        reason = e.strerror or "Invalid address"
        raise ConnectError(
            f"Cannot connect to NBD server: {reason}") from None
    # libnbd drives the descriptor itself.
    sock.settimeout(None)
    return sock


def _handshake(h: Any, sock: socket.socket, address: Address,
               dirty: bool, deadline: float, contexts: bool = True
               ) -> str | None:
    """Connect h over sock; return the dirty bitmap context, if any."""
    try:
        h.set_export_name(address.export)
        # We never expose a buffer whose read failed, so libnbd need not
        # zero every read buffer first.
        h.set_pread_initialize(False)
        h.set_opt_mode(True)
        h.aio_connect_socket(sock.fileno())
    except nbd.Error as e:
        sock.close()
        raise ConnectError(f"NBD handshake failed: {reason(e)}") from None
    # The handle owns the descriptor now.
    sock.detach()

    try:
        _poll_until(h, lambda: not h.aio_is_connecting(), deadline)
        bitmap = None
        if h.aio_is_negotiating():
            if dirty:
                bitmap = _find_bitmap(h, deadline)
            for name in (BASE_ALLOCATION, ALLOCATION_DEPTH, bitmap):
                if name and contexts:
                    h.add_meta_context(name)
            _run_option(h, h.aio_opt_go, deadline, address.export)
    except nbd.Error as e:
        log.warning("NBD handshake with %s failed: %s", address, e)
        raise ConnectError(f"NBD handshake failed: {reason(e)}") from None

    if not h.aio_is_ready():
        raise ConnectError(
            f"NBD handshake failed: {h.connection_state()}")
    if bitmap and not h.can_meta_context(bitmap):
        bitmap = None
    return bitmap


def _find_bitmap(h: Any, deadline: float) -> str | None:
    """The export's only dirty bitmap context, or None."""
    names: list[str] = []

    def found(name: str) -> int:
        names.append(name)
        return 0

    h.add_meta_context(DIRTY_BITMAP_PREFIX)
    try:
        err = _run_option(h, lambda cb: h.aio_opt_list_meta_context(found, cb),
                          deadline, None)
    finally:
        h.clear_meta_contexts()
    if err:
        log.warning("Cannot list NBD dirty bitmaps: %s", os.strerror(err))
        return None
    bitmaps = sorted({n for n in names if n.startswith(DIRTY_BITMAP_PREFIX)
                      and len(n) > len(DIRTY_BITMAP_PREFIX)})
    if len(bitmaps) != 1:
        log.warning("Expected one dirty bitmap, found %s; dirty extents "
                    "are not available", bitmaps)
        return None
    return bitmaps[0]


def _run_option(h: Any, start: Callable[[Callable[[Any], int]], object],
                deadline: float, export: str | None) -> int:
    """
    Run one option-mode request and wait for it. With export set, a
    failure is fatal (the export did not open); otherwise return errno.
    """
    result: list[int] = []

    def done(err: Any) -> int:
        result.append(int(err.value))
        return 1

    start(done)
    _poll_until(h, lambda: bool(result), deadline)
    if export is not None and result[0]:
        raise ConnectError(f"Cannot open NBD export {export!r}: "
                           f"{os.strerror(result[0])}")
    return result[0]


def _poll_until(h: Any, done: Callable[[], bool], deadline: float) -> None:
    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ConnectError("NBD handshake failed: Timed out")
        # poll releases the GIL while it waits.
        h.poll(max(1, int(remaining * 1000)))


def disconnect(h: Any) -> None:
    """Say goodbye if the connection works, within DISCONNECT_TIMEOUT."""
    try:
        if h.aio_is_ready() and h.aio_in_flight() == 0:
            h.aio_disconnect()
            deadline = time.monotonic() + DISCONNECT_TIMEOUT
            while not (h.aio_is_closed() or h.aio_is_dead()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                h.poll(max(1, int(remaining * 1000)))
    except nbd.Error as e:
        log.debug("Ignoring error disconnecting: %s", e)
    # Dropping the last reference closes the handle and its socket.


def reason(e: Any) -> str:
    """libnbd's message without the "nbd_pread: " call prefix."""
    text = str(e.string if isinstance(e, nbd.Error) else e)
    head, sep, tail = text.partition(": ")
    if sep and head.startswith("nbd_") and " " not in head:
        return tail
    return text


def _seconds(value: float) -> str:
    return f"{value:g}"
