# SPDX-License-Identifier: GPL-2.0-or-later
"""
The NBD door as one function of bytes, for fuzzing.

``serve(data)`` plays ``data`` as what a client sent on one connection to
the NBD service: the real ``nbdd`` ``Connection`` (the handshake state
machine, request parsing and checks, the operations on the ticket) reads
it from a ``MockStream``, with the tickets of ``harness.TICKETS`` ("rw"
and "ro", the export names) backed by memory, as in the HTTP harness.

Input format: the first byte says how the rest is cut into receives
(bits 1-7: 0 = one receive, n = receives of n bytes; bit 0 is unused),
so a corpus file is a plain NBD conversation behind one byte.

A crash is an exception escaping ``Connection.serve()``, a traceback the
door logged, a connection left open, or output not starting with the
NBD greeting. Errors a client can cause (option errors, NBD error
replies, closing on a bad magic) are fine.

Used by ``fuzz_nbd.py`` (atheris, ``make fuzz FUZZ_TARGET=nbd``) and by
``test/unit/project/test_fuzz_corpus.py``.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import harness  # noqa: E402
from harness import Crash, patched, setup  # noqa: E402, F401

from ovirt_imageio.nbdd.connection import Connection, Door  # noqa: E402
from ovirt_imageio.transfer.stream import MockStream  # noqa: E402

GREETING = b"NBDMAGICIHAVEOPT"


def serve(data: bytes) -> bytes:
    """
    Serve one connection of input ``data``; return what the server sent.
    Raises Crash (or the exception itself) for a server bug.
    """
    _, chunks = harness.split(data)
    store = harness._store()
    stream = MockStream(chunks)
    door = Door(harness._CFG, store, harness._POOL, harness._BUFFERS,
                handshake_timeout=60)
    conn = Connection(stream, door, client="fuzz", service="nbd")
    harness._TRACEBACKS.errors.clear()
    try:
        conn.serve()
        if harness._TRACEBACKS.errors:
            error = harness._TRACEBACKS.errors[0]
            raise Crash(f"Unexpected error: {error!r}") from error
        if not stream.closed:
            raise Crash("Connection left open")
        if not stream.sent.startswith(GREETING):
            raise Crash(f"Invalid greeting: {bytes(stream.sent[:20])!r}")
    finally:
        store.clear()
    return bytes(stream.sent)


def encode(conversation: bytes, chunk: int = 0) -> bytes:
    """An input for ``serve``: the inverse of its format."""
    return harness.encode(conversation, False, chunk)
