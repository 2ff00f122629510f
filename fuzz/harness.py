# SPDX-License-Identifier: GPL-2.0-or-later
"""
The HTTP request path as one function of bytes, for fuzzing.

``serve(data)`` plays ``data`` as what a client sent on one connection:
the real ``Connection`` (head parser, header policies, body framing,
pipelining, the error rules) reads it from a ``MockStream`` and
dispatches to the real routers and handlers of the image service or the
control service, with tickets backed by memory instead of files.

Input format: the first byte selects the service (bit 0: 0 = images,
1 = control) and how the rest is cut into receives (bits 1-7: 0 = one
receive, n = receives of n bytes), so a corpus file is a plain HTTP
conversation behind one byte.

A crash is what ``serve`` raises: any exception escaping
``Connection.serve()``, any unexpected exception inside a handler (the
daemon answers those with a generic 500 and logs them with a traceback;
here they are re-raised), or a connection left open. Everything a
client can cause on purpose (400, 403, 416, 5xx mapped from backend
errors) is fine.

Used by ``fuzz_http.py`` (atheris, ``make fuzz``) and by
``test/test_fuzz_corpus.py`` (the corpus and hypothesis in ``make
check``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
from typing import Any, Callable, Iterator

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TOP not in sys.path:
    sys.path.insert(0, TOP)

from ovirt_imageio import backends, config
from ovirt_imageio.backends.memory import MemoryBackend
from ovirt_imageio.httpd.connection import Connection
from ovirt_imageio.httpd.handlers import checksum, extents, images, info
from ovirt_imageio.httpd.handlers import tickets as tickets_handler
from ovirt_imageio.httpd.router import Router
from ovirt_imageio.transfer import buffers, ticketspec
from ovirt_imageio.transfer.store import TicketStore
from ovirt_imageio.transfer.stream import MockStream

# Small images and buffers keep one input fast, and still make reads and
# writes span several buffers.
IMAGE_SIZE = 64 * 1024
BUFFER_SIZE = 4096

# Tickets installed before every input; corpus files use these ids.
TICKETS = {
    "rw": ["read", "write"],
    "ro": ["read"],
}


class Crash(Exception):
    """An input made the server misbehave; see the module docstring."""


class _InlineExecutor(concurrent.futures.Executor):
    """Runs submitted work at once: one thread, reproducible inputs."""

    def submit(self, fn: Callable[..., Any], /, *args: Any,
               **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:
            future.set_exception(e)
        return future


class _Tracebacks(logging.Handler):
    """Keeps the exceptions the server logged with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def _open_memory(url: str, mode: backends.Mode, **kw: Any) -> MemoryBackend:
    # Any URL (fuzzed control requests install any) opens memory, never
    # a file or a socket.
    data = bytearray(b"\xa5" * (IMAGE_SIZE // 2))
    return MemoryBackend(data, mode=mode)


_CFG = config.loads(f"""
[tls]
enable = false
[backend_file]
buffer_size = {BUFFER_SIZE}
[backend_nbd]
buffer_size = {BUFFER_SIZE}
[backend_http]
buffer_size = {BUFFER_SIZE}
[local]
socket = fuzz
[control]
remove_timeout = 0
""")
_POOL = _InlineExecutor()
_BUFFERS = buffers.BufferPool()
_TRACEBACKS = _Tracebacks()
_SETUP = contextlib.ExitStack()


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """
    While active, tickets open memory backends and the server's
    tracebacks are collected (``serve`` needs both).
    """
    root = logging.getLogger()
    saved = backends.open_url
    backends.open_url = _open_memory
    root.addHandler(_TRACEBACKS)
    try:
        yield
    finally:
        root.removeHandler(_TRACEBACKS)
        backends.open_url = saved


def setup() -> None:
    """For a fuzzing process: quiet logging, and ``patched()`` for good."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(logging.ERROR)
    # Logging errors (a bad %-format) would be printed, not raised.
    logging.raiseExceptions = False
    # Kept referenced: a dropped context manager would be closed, and
    # undo the patch, when it is garbage collected.
    _SETUP.enter_context(patched())


def _store() -> TicketStore:
    store = TicketStore()
    for uuid, ops in TICKETS.items():
        store.add(ticketspec.parse({
            "uuid": uuid, "size": IMAGE_SIZE, "ops": ops, "timeout": 300,
            "url": f"file:///fuzz/{uuid}",
        }))
    return store


def _router(control: bool, store: TicketStore) -> Router:
    if control:
        return Router([
            (r"/tickets/(.*)", tickets_handler.Tickets(_CFG, store)),
        ])
    return Router([
        (r"/images/(.*)/extents", extents.Extents(_CFG, store)),
        (r"/images/(.*)/checksum/algorithms", checksum.Algorithms()),
        (r"/images/(.*)/checksum",
         checksum.Checksum(_CFG, store, _POOL, _BUFFERS)),
        (r"/images/(.*)", images.Images(_CFG, store, _POOL, _BUFFERS)),
        (r"/info/", info.Info()),
    ])


def split(data: bytes) -> tuple[bool, list[bytes]]:
    """The service flag and the receives encoded in an input."""
    if not data:
        return False, []
    control = bool(data[0] & 1)
    size = data[0] >> 1
    rest = data[1:]
    if size == 0:
        return control, [rest]
    return control, [rest[i:i + size] for i in range(0, len(rest), size)]


def serve(data: bytes) -> bytes:
    """
    Serve one connection of input ``data``; return what the server sent.
    Raises Crash (or the exception itself) for a server bug.
    """
    control, chunks = split(data)
    store = _store()
    stream = MockStream(chunks)
    conn = Connection(stream, _router(control, store), client="fuzz",
                      service="control" if control else "images")
    _TRACEBACKS.errors.clear()
    conn.serve()
    try:
        if _TRACEBACKS.errors:
            error = _TRACEBACKS.errors[0]
            raise Crash(f"Unexpected error: {error!r}") from error
        if not stream.closed:
            raise Crash("Connection left open")
        if stream.sent and not stream.sent.startswith(b"HTTP/1.1 "):
            raise Crash(f"Invalid response: {bytes(stream.sent[:60])!r}")
    finally:
        store.clear()
    return bytes(stream.sent)


def encode(requests: bytes, control: bool = False, chunk: int = 0) -> bytes:
    """An input for ``serve``: the inverse of ``split``."""
    if not 0 <= chunk < 128:
        raise ValueError(f"Invalid chunk size: {chunk}")
    return bytes([chunk << 1 | int(control)]) + requests
