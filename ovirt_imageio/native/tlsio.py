# SPDX-License-Identifier: GPL-2.0-or-later
"""
Bulk reads and writes on TLS sockets without a trip through Python per
record.

``SSLSocket.recv_into`` returns one TLS record (at most 16 KiB) per call,
and OpenSSL then makes two read(2) calls per record. Moving a request
or response body of several MiB that way costs hundreds of interpreter
round trips and GIL hand-offs per chunk; with four connections on two
cores the hand-offs cost more than the decryption. ``recv_full`` reads a
whole chunk in one C call (``ioutil.tls_recv_full``) with the GIL released,
on the very SSL object the ssl module created, and ``prepare`` has the
SSL object read its socket through a buffer of ours, so that one read(2)
brings in many records (OpenSSL's own read-ahead would too, but copies
what it holds again before each record: see ext/tls.c).
``send_all`` is the mirror for writes: ``SSLSocket.sendall`` makes one
write(2) per record, ``ioutil.tls_send_full`` one send(2) per 256 KiB of
records.

The ssl module does not publish its SSL object, so ``handle`` reads it
from the ``_ssl._SSLSocket`` instance. That is CPython's private layout,
and a wrong pointer would crash the process, so ``handle`` only returns
an address when every check holds:

- CPython of a version in ``TESTED_PYTHONS`` (the layout may change in
  any release), and the extension runs with the libssl that ``ssl`` runs
  with (``refusal`` decides this once, at import);
- the object is an ``_ssl._SSLSocket``;
- the field before the SSL pointer holds the weak reference to the
  Python socket that ``_ssl`` keeps there (it is the shared basic weak
  reference, so ``weakref.ref(sock)`` returns that very object);
- OpenSSL reports the socket's own descriptor for the SSL pointer.

Otherwise callers fall back to ``recv_into`` loops and ``sendall``,
which are correct, only slower. ``OVIRT_IMAGEIO_TLS_FASTPATH=0`` in the
environment turns the fast path off; ``STATUS`` says whether it is on,
or why not.

Using the SSL object directly is safe with the ssl module as long as a
single thread uses the socket at a time, which is already a rule of the
ssl module, and the Python socket outlives the call.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import ssl
import sys
import weakref
from typing import Final

from . import ioutil

# The read buffer of a TLS socket: up to this much of records per
# read(2). Measured on the benchmark machine (2 cores, 1 GiB moved), with
# OpenSSL's read-ahead, which this buffer replaced:
# - the daemon reading uploads, which mostly waits for its client, used
#   10% less CPU with 256 KiB than with 64 KiB (18% with one
#   connection), thanks to the low-water mark tls_recv_full sets while
#   waiting: bigger reads, fewer ACKs;
# - a client reading downloads used 7% less CPU with 64 KiB than with
#   256 KiB (its buffer stays in cache).
# 1 MiB was slower for both.
SERVER_READ_BUFFER = 256 * 1024
CLIENT_READ_BUFFER = 64 * 1024

# _ssl._SSLSocket starts with PyObject_HEAD, then the weak reference to
# the Python socket, then the SSL pointer. object.__basicsize__ is the
# size of PyObject_HEAD on this build (debug builds make it larger).
_SOCKET_FIELD = object.__basicsize__
_SSL_FIELD = _SOCKET_FIELD + ctypes.sizeof(ctypes.c_void_p)


# The CPython releases the fast path was tested on: the layout checks of
# ``handle`` and test/integration/native/test_tlsio.py (which requires the
# handle to be found) pass on them. They are the development machines'
# interpreters, pyenv's 3.11.7 and Debian 12's 3.11.2. The checks would
# most likely refuse a changed layout, but a private layout may change in
# any release, so any other version, newer ones too, uses the fallback
# until it has been tested and added here.
TESTED_PYTHONS: Final = frozenset({(3, 11, 2), (3, 11, 7)})

ENV_SWITCH: Final = "OVIRT_IMAGEIO_TLS_FASTPATH"


def refusal(implementation: str, version: tuple[int, ...],
            switch: str | None, extension_openssl: int,
            ssl_openssl: int) -> str | None:
    """
    Why the fast path must stay off, or None when it may be used.

    Pure: the caller passes what it found, that is
    ``platform.python_implementation()``, ``sys.version_info``, the value
    of ``OVIRT_IMAGEIO_TLS_FASTPATH`` (or None), and the OpenSSL version
    numbers of the extension and of the ssl module.

    >>> refusal("CPython", (3, 11, 7), None, 0x30000130, 0x30000130)
    >>> refusal("CPython", (3, 13, 0), None, 0x30000130, 0x30000130)
    'CPython 3.13.0 is not a tested version'
    """
    if switch == "0":
        return f"turned off by {ENV_SWITCH}=0"
    if implementation != "CPython":
        return f"{implementation} is not CPython"
    release = tuple(version[:3])
    if release not in TESTED_PYTHONS:
        name = ".".join(str(n) for n in release)
        return f"CPython {name} is not a tested version"
    if extension_openssl != ssl_openssl:
        return (f"extension built with OpenSSL {extension_openssl:#x}, "
                f"ssl module uses {ssl_openssl:#x}")
    return None


def _refusal() -> str | None:
    return refusal(platform.python_implementation(), sys.version_info[:3],
                   os.environ.get(ENV_SWITCH), ioutil.tls_openssl_version(),
                   ssl.OPENSSL_VERSION_NUMBER)


REFUSAL = _refusal()
ENABLED = REFUSAL is None
# For the daemon's start-up log.
STATUS = "on" if ENABLED else f"off: {REFUSAL}"


def _pointer_at(address: int) -> int:
    return ctypes.c_void_p.from_address(address).value or 0


def handle(sock: ssl.SSLSocket) -> int | None:
    """
    The address of the OpenSSL SSL object behind sock, or None when it
    cannot be found with certainty (see the module doc).
    """
    if not ENABLED:
        return None
    obj = getattr(sock, "_sslobj", None)
    if obj is None:
        return None
    cls = type(obj)
    if cls.__module__ != "_ssl" or cls.__name__ != "_SSLSocket":
        return None
    try:
        ref = weakref.ref(sock)
        fd = sock.fileno()
    except (TypeError, OSError):
        return None
    base = id(obj)
    if _pointer_at(base + _SOCKET_FIELD) != id(ref):
        return None
    ssl_ptr = _pointer_at(base + _SSL_FIELD)
    if ssl_ptr == 0 or fd < 0 or ioutil.tls_get_fd(ssl_ptr) != fd:
        return None
    return ssl_ptr


def prepare(sock: ssl.SSLSocket, read_buffer: int) -> int | None:
    """
    Have sock read through a buffer of read_buffer bytes
    (SERVER_READ_BUFFER or CLIENT_READ_BUFFER), and return its handle (or
    None).

    Call it after wrapping with ``do_handshake_on_connect=False`` and
    before the handshake.
    """
    h = handle(sock)
    if h is not None:
        ioutil.tls_buffer_reads(h, read_buffer)
    return h


# Smaller writes fit in one or two records; the ssl module sends them
# as well as the batching path would.
MIN_BATCHED_SEND = 32 * 1024


def _open_fd(sock: ssl.SSLSocket, what: str) -> tuple[object, int]:
    # The reference to the SSL object keeps it alive even if another
    # thread closes sock meanwhile; the call then fails on the fd.
    obj = getattr(sock, "_sslobj", None)
    fd = sock.fileno()
    if obj is None or fd < 0:
        raise OSError(errno.EBADF, f"{what}: the TLS socket is closed")
    return obj, fd


def recv_full(sock: ssl.SSLSocket, ssl_handle: int | None,
              buf: memoryview) -> int:
    """
    Fill buf from sock; less than len(buf) only at end of stream.

    ssl_handle is what ``handle`` or ``prepare`` returned for sock; with
    None this loops over ``recv_into``. The socket's timeout bounds each
    wait for data, as it does for ``recv_into``.
    """
    if ssl_handle is not None:
        obj, fd = _open_fd(sock, "recv")
        n = ioutil.tls_recv_full(ssl_handle, fd, buf, sock.gettimeout())
        del obj
        return n
    pos = 0
    size = len(buf)
    while pos < size:
        n = sock.recv_into(buf[pos:])
        if n == 0:
            break
        pos += n
    return pos


def has_pending(sock: ssl.SSLSocket, ssl_handle: int | None) -> bool:
    """
    Whether sock holds received bytes that poll(2) on its descriptor
    would not report, so a thread about to wait for the socket to become
    readable must read instead.

    With an ssl_handle the read buffer of ``prepare`` may hold whole
    records not yet decrypted, which ``SSLSocket.pending`` does not
    count; without one, OpenSSL reads a record at a time, and pending
    (the decrypted bytes of the current record) says it all.
    """
    if ssl_handle is not None:
        obj, _ = _open_fd(sock, "poll")
        pending = ioutil.tls_has_pending(ssl_handle)
        del obj
        return pending
    return sock.pending() > 0


def send_all(sock: ssl.SSLSocket, ssl_handle: int | None,
             data: ioutil.Buffer) -> None:
    """
    Send all of data on sock, like ``sock.sendall``.

    With an ssl_handle (see ``recv_full``) and enough data, the records
    go out in batches, one send(2) each; otherwise through ``sendall``.
    The socket's timeout bounds each batch.
    """
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if ssl_handle is not None and size >= MIN_BATCHED_SEND:
        obj, fd = _open_fd(sock, "send")
        sent = ioutil.tls_send_full(ssl_handle, fd, data, sock.gettimeout())
        del obj
        if sent:
            return
    sock.sendall(data)
