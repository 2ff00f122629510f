# SPDX-License-Identifier: GPL-2.0-or-later
"""
Low level I/O helpers backed by the C extension ``ovirt_imageio._ioutil``.

With native/blake2b.py (hashing), the only module that talks to the
extension. Every function here
is a thin, zero-copy wrapper: Python buffers (bytearray, mmap, memoryview)
are handed to C with ``ffi.from_buffer``, C runs without the GIL, and a
negative C return (``-errno``) becomes::

    OSError(errno, f"{operation}: {os.strerror(errno)}")

Python picks the OSError subclass from errno, so a missing file is a
FileNotFoundError and an expired socket timeout (ETIMEDOUT) is a
TimeoutError. Interrupted system calls are retried in C.

Direct I/O (O_DIRECT) needs the file offset, the length and the memory
address aligned to the device's logical block size; ``aligned_buffer``
gives memory that satisfies any block size. Nothing here aligns
anything: the backends split unaligned requests.

Socket helpers work on plain sockets only (TCP or unix). TLS sockets carry
encrypted bytes; ``tls_recv_full`` reads them through the OpenSSL object of
a Python ``SSLSocket``, which ``ovirt_imageio.util.tlsio`` finds and checks.

Example::

    buf = aligned_buffer(1024**2)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    n = pread_full(fd, buf, 0)
"""

from __future__ import annotations

import errno
import math
import mmap
import os
import threading
from typing import TYPE_CHECKING, Any, Final, Iterator

from ._ioutil import ffi, lib

# What the TLS send path accepts (native.tlsio.send_all).
Buffer = bytes | bytearray | memoryview

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer, WriteableBuffer

FALLOC_FL_KEEP_SIZE: Final[int] = lib.IOUTIL_FALLOC_FL_KEEP_SIZE
FALLOC_FL_PUNCH_HOLE: Final[int] = lib.IOUTIL_FALLOC_FL_PUNCH_HOLE
FALLOC_FL_ZERO_RANGE: Final[int] = lib.IOUTIL_FALLOC_FL_ZERO_RANGE

# Extents fetched from C per call by iter_extents(). Bounds the memory
# used for a badly fragmented file; each batch costs 17 bytes per extent.
EXTENTS_BATCH: Final = 1024

# poll() takes an int of milliseconds.
_MAX_TIMEOUT_MS: Final = 2**31 - 1


def _check(rc: int, operation: str) -> int:
    if rc < 0:
        err = -rc
        raise OSError(err, f"{operation}: {os.strerror(err)}")
    return rc


def _timeout_ms(timeout: float | None) -> int:
    if timeout is None:
        return -1
    if timeout < 0:
        raise ValueError(f"Invalid timeout: {timeout}")
    return min(math.ceil(timeout * 1000), _MAX_TIMEOUT_MS)


# Buffers and memory.

# Transparent huge page size on x86_64 and most other platforms.
HUGE_PAGE_SIZE = 2 * 1024**2


def aligned_buffer(size: int) -> mmap.mmap:
    """
    Return a zero-filled, page-aligned buffer of size bytes.

    An anonymous mapping is page aligned, which satisfies O_DIRECT for any
    logical block size, while bytearray memory has no alignment guarantee.

    The mapping is private and marked MADV_DONTFORK: a fork in another
    thread (subprocess) gets no copy of it, so copy-on-write can never
    split a page under an in-flight direct read. Buffers of 2 MiB or more
    ask for transparent huge pages: every direct I/O pins the buffer's
    pages and every socket copy walks them, and with 2 MiB pages there are
    512 times fewer. On a two-core machine this cut the daemon's CPU per
    GiB by about a third and made transfers 15-45% faster.

    >>> buf = aligned_buffer(4096)
    >>> buffer_address(buf) % 4096
    0
    """
    if size <= 0:
        raise ValueError(f"Invalid buffer size: {size}")
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    buf.madvise(mmap.MADV_DONTFORK)
    if size >= HUGE_PAGE_SIZE:
        try:
            buf.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass  # Kernel without transparent huge pages: small pages.
    return buf


def huge_page_view(size: int) -> tuple[mmap.mmap, memoryview]:
    """
    Return a mapping and a view of size bytes of it that starts on a huge
    page boundary, asked for transparent huge pages.

    Why: the kernel backs only whole, aligned 2 MiB ranges of a mapping
    with huge pages, and a mapping is page aligned only (kernels before
    6.7 never align it further). The view gives its buffers physically
    contiguous memory: a direct I/O reaches the disk as one segment per
    contiguous run of pages, 64 for 256 KiB of small pages. The mapping
    is size + 2 MiB; close it (``release``) once the view and every
    slice of it are released. Where the kernel has no huge page to give,
    the memory is small pages, as ``aligned_buffer``'s.

    >>> m, view = huge_page_view(4096)
    >>> buffer_address(view) % HUGE_PAGE_SIZE, len(view)
    (0, 4096)
    >>> view.release(); release(m)
    """
    if size <= 0:
        raise ValueError(f"Invalid buffer size: {size}")
    buf = aligned_buffer(size + HUGE_PAGE_SIZE)
    skip = -buffer_address(buf) % HUGE_PAGE_SIZE
    return buf, memoryview(buf)[skip:skip + size]


def release(buf: mmap.mmap) -> None:
    """
    Unmap a buffer from aligned_buffer now, unless a view of it is still
    alive (say in a traceback): then it goes away with the last view.
    """
    try:
        buf.close()
    except BufferError:
        pass


def buffer_address(buf: ReadableBuffer) -> int:
    """Return the memory address of buf, to check its alignment."""
    with ffi.from_buffer(buf) as p:
        return int(ffi.cast("uintptr_t", p))


def is_zero(buf: ReadableBuffer) -> bool:
    """
    Return True if every byte of buf is zero.

    >>> is_zero(bytearray(100)), is_zero(b"\\0" * 99 + b"x")
    (True, False)
    """
    with ffi.from_buffer(buf) as p:
        return bool(lib.ioutil_is_zero(p, len(p)))


# Files.

def pread_full(fd: int, buf: WriteableBuffer, offset: int) -> int:
    """
    Read from fd at offset until buf is full or end of file.

    Returns the number of bytes read; less than len(buf) only at end of
    file.
    """
    with ffi.from_buffer(buf, require_writable=True) as p:
        n = lib.ioutil_pread_full(fd, p, len(p), offset)
    return _check(n, "pread")


def pwrite_full(fd: int, buf: ReadableBuffer, offset: int) -> None:
    """Write all of buf to fd at offset."""
    with ffi.from_buffer(buf) as p:
        rc = lib.ioutil_pwrite_full(fd, p, len(p), offset)
    _check(rc, "pwrite")


# Each thread's AIO context for pwrite_direct: unset until its first
# write, None where the kernel gave none. Dropped with the thread, which
# destroys the context (ffi.gc).
_aio = threading.local()


def _aio_context() -> Any:
    try:
        return _aio.context
    except AttributeError:
        pass
    err = ffi.new("int *")
    handle = lib.ioutil_aio_open(err)
    context = None
    if handle != ffi.NULL:
        context = ffi.gc(handle, lib.ioutil_aio_close)
    _aio.context = context
    return context


def pwrite_direct(fd: int, buf: ReadableBuffer, offset: int) -> None:
    """
    Write all of buf to fd at offset with Linux AIO, returning once the
    write completed; for descriptors opened with O_DIRECT.

    The result is pwrite_full's, but ext4 lets direct writes that
    allocate blocks (into holes of a sparse file) from several threads
    run at once only this way: a synchronous one holds the inode lock
    until it completes (see ext/aio.c). Each thread uses a context of its
    own; a thread the kernel gives none (``fs.aio-max-nr`` reached, AIO
    unavailable) writes with pwrite_full.
    """
    context = _aio_context()
    if context is None:
        pwrite_full(fd, buf, offset)
        return
    with ffi.from_buffer(buf) as p:
        rc = lib.ioutil_aio_pwrite_full(context, fd, p, len(p), offset)
    _check(rc, "pwrite")


# Queues closed and kept for the next AioQueue of the same depth, at most
# _IDLE_MAX of them: io_destroy waits for an RCU grace period (28 ms on
# the bench VM), and the NBD door opens a queue per connection. The
# client saw each connection close that much later, one after another:
# nbdcopy's four added a tenth to a 1 GiB download. Kept queues live
# until the process exits.
_IDLE_MAX = 8
_idle_lock = threading.Lock()
# depth -> [(queue, eventfd)]
_idle: dict[int, list[tuple[Any, int]]] = {}


def _take_idle(depth: int) -> tuple[Any, int] | None:
    with _idle_lock:
        kept = _idle.get(depth)
        return kept.pop() if kept else None


def _keep_idle(depth: int, q: Any, efd: int) -> bool:
    """Keep an empty queue for reuse; False when enough are kept."""
    try:
        # Completions reaped by the reset left the counter up.
        os.eventfd_read(efd)
    except BlockingIOError:
        pass
    with _idle_lock:
        if sum(len(v) for v in _idle.values()) >= _IDLE_MAX:
            return False
        _idle.setdefault(depth, []).append((q, efd))
        return True


class AioQueue:
    """
    Reads and writes of O_DIRECT descriptors kept in flight together by
    one thread, through Linux AIO (see ext/aio.c): ``submit`` queues one
    and returns at once, ``kick`` starts the queued ones together,
    ``reap`` collects the finished ones without waiting, and ``fileno()``
    (an eventfd) is readable while there are some to collect. A queue
    serves one thread at a time, and each buffer must stay alive until
    its request is reaped.

    Raises OSError if the kernel gives no AIO context (``fs.aio-max-nr``
    reached, AIO unavailable).

    >>> q = AioQueue(8)                                 # doctest: +SKIP
    >>> q.submit(fd, True, buf, 0, tag=1)               # doctest: +SKIP
    >>> q.kick()                                        # doctest: +SKIP
    >>> select.select([q], [], [])                      # doctest: +SKIP
    >>> q.reap()                                        # doctest: +SKIP
    [(1, 1048576)]
    """

    def __init__(self, depth: int) -> None:
        if depth < 1:
            raise ValueError(f"Invalid depth: {depth}")
        self.depth = depth
        self._q: Any
        kept = _take_idle(depth)
        if kept is not None:
            self._q, self._efd = kept
        else:
            self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            err = ffi.new("int *")
            handle = lib.ioutil_aioq_open(depth, self._efd, err)
            if handle == ffi.NULL:
                os.close(self._efd)
                _check(err[0], "io_setup")
            self._q = handle
        self._tags = ffi.new("uint64_t[]", depth)
        self._results = ffi.new("int64_t[]", depth)

    def fileno(self) -> int:
        return self._efd

    def submit(self, fd: int, write: bool, buf: Any, offset: int,
               tag: int) -> None:
        """
        Queue reading fd at offset into buf, or writing buf there; the
        request starts at the next ``kick``.
        Raises BlockingIOError (EAGAIN) when ``depth`` requests are
        queued or in flight. A request the kernel refuses comes back
        from ``reap`` with its -errno.
        """
        with ffi.from_buffer(buf, require_writable=not write) as p:
            rc = lib.ioutil_aioq_submit(self._q, fd, int(write), p, len(p),
                                        offset, tag)
        _check(rc, "io_submit")

    def kick(self) -> None:
        """Start the queued requests, together (see ext/aio.c); call it
        before waiting on ``fileno()``."""
        lib.ioutil_aioq_kick(self._q)

    def reap(self) -> list[tuple[int, int]]:
        """The (tag, bytes moved or -errno) of the finished requests."""
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            # Nothing finished since the last reap: the kernel signals
            # the eventfd after it posts each completion, and a refused
            # request signals it too (ext/aio.c), so io_getevents would
            # find nothing new. The door reaps at every turn of its loop.
            return []
        n = _check(lib.ioutil_aioq_reap(self._q, self._tags, self._results,
                                        self.depth), "io_getevents")
        return [(self._tags[i], self._results[i]) for i in range(n)]

    def close(self) -> None:
        """Wait for the requests in flight and drop the queued ones, then
        release the queue, or keep it empty for the next AioQueue of its
        depth."""
        if self._q is None:
            return
        q, self._q = self._q, None
        if lib.ioutil_aioq_reset(q) == 0 and _keep_idle(self.depth, q,
                                                         self._efd):
            return
        lib.ioutil_aioq_close(q)
        os.close(self._efd)


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """
    Call fallocate(2).

    Raises OSError with errno EOPNOTSUPP when the file system does not
    support mode; callers use that to pick a fallback.
    """
    _check(lib.ioutil_fallocate(fd, mode, offset, length), "fallocate")


def dio_offset_align(fd: int) -> int:
    """
    Return the direct I/O offset alignment the kernel reports for fd.

    Uses statx(STATX_DIOALIGN) (Linux 6.1). Returns 0 when the kernel or
    the file system does not report it.
    """
    return _check(lib.ioutil_dio_offset_align(fd), "statx")


def iter_extents(
    fd: int, start: int, end: int,
) -> Iterator[tuple[int, int, bool]]:
    """
    Yield (start, length, is_data) extents covering [start, end) of fd.

    Uses lseek(SEEK_DATA/SEEK_HOLE), so the result follows the file
    system's allocation. Extents alternate between data and holes; the
    range past end of file is a hole. File systems without hole support
    report everything before end of file as data. Moves fd's file
    position.

    C fills at most EXTENTS_BATCH extents per call, so memory stays
    bounded however fragmented the file is.
    """
    starts = ffi.new("int64_t[]", EXTENTS_BATCH)
    lengths = ffi.new("int64_t[]", EXTENTS_BATCH)
    is_data = ffi.new("uint8_t[]", EXTENTS_BATCH)
    pos = start
    while pos < end:
        n = _check(
            lib.ioutil_scan_extents(
                fd, pos, end, starts, lengths, is_data, EXTENTS_BATCH),
            "lseek")
        if n == 0:
            break
        for i in range(n):
            yield int(starts[i]), int(lengths[i]), bool(is_data[i])
        pos = int(starts[n - 1]) + int(lengths[n - 1])


def scan_extents(fd: int, start: int, end: int) -> list[tuple[int, int, bool]]:
    """
    Return (start, length, is_data) extents covering [start, end) of fd.

    See iter_extents, which this collects.

    >>> fd = os.open("/dev/null", os.O_RDONLY)
    >>> scan_extents(fd, 0, 0)
    []
    >>> os.close(fd)
    """
    return list(iter_extents(fd, start, end))


# Block devices.

def blkzeroout(fd: int, offset: int, length: int) -> None:
    """Zero a byte range of a block device (ioctl BLKZEROOUT)."""
    _check(lib.ioutil_blkzeroout(fd, offset, length), "blkzeroout")


def blksszget(fd: int) -> int:
    """Return the logical sector size of a block device (ioctl BLKSSZGET)."""
    return _check(lib.ioutil_blksszget(fd), "blksszget")


def blkgetsize64(fd: int) -> int:
    """Return the size in bytes of a block device (ioctl BLKGETSIZE64)."""
    size = ffi.new("uint64_t *")
    _check(lib.ioutil_blkgetsize64(fd, size), "blkgetsize64")
    return int(size[0])


# Sockets.

def recv_full(sockfd: int, buf: WriteableBuffer, timeout: float | None) -> int:
    """
    Receive from sockfd until buf is full or the peer closes.

    Returns the number of bytes received; less than len(buf) only at end of
    stream. timeout (seconds, None to wait forever) bounds the whole call;
    when it expires TimeoutError is raised and the bytes received so far
    are lost to the caller, as with socket.sendall.
    """
    ms = _timeout_ms(timeout)
    with ffi.from_buffer(buf, require_writable=True) as p:
        n = lib.ioutil_recv_full(sockfd, p, len(p), ms)
    return _check(n, "recv")


def recv_some(sockfd: int, buf: WriteableBuffer, timeout: float | None
              ) -> int:
    """
    Receive what sockfd has, up to len(buf) bytes, waiting for at least
    one; 0 at end of stream. timeout (seconds, None to wait forever)
    bounds the wait: TimeoutError. Unlike a Python socket with a timeout,
    which polls before every recv, this polls only when nothing is there.
    """
    ms = _timeout_ms(timeout)
    with ffi.from_buffer(buf, require_writable=True) as p:
        n = lib.ioutil_recv_some(sockfd, p, len(p), ms)
    return _check(n, "recv")


class ChunkedReceiver:
    """
    The C receive loop of a chunked request body on a plain socket
    (``ext/chunked.c``): payload straight into the caller's buffer, the
    common framing between chunks (CRLF, a plain hex size, CRLF) parsed
    in C, so a chunk costs no trip through Python.

    The caller (``httpd.chunked_body``) keeps the position in its
    decoder and hands it over for each call; ``recv`` returns the
    payload bytes it stored and why it stopped:

    - FULL: buf is full;
    - FRAMING: framing only the Python decoder parses (extensions, the
      last chunk, malformed bytes) came: ``take_pending`` gives the
      received bytes not used yet;
    - EOF: the peer closed;
    - ERROR: ``error`` is the errno (ETIMEDOUT when the timeout, which
      bounds one call, expired).

    After any of them, ``chunk_left``, ``total`` and ``after_data`` say
    where the body is.
    """

    FULL: Final = lib.IOUTIL_CHUNKED_FULL
    FRAMING: Final = lib.IOUTIL_CHUNKED_FRAMING
    EOF: Final = lib.IOUTIL_CHUNKED_EOF
    ERROR: Final = lib.IOUTIL_CHUNKED_ERROR

    def __init__(self, sockfd: int, timeout: float | None) -> None:
        self._fd = sockfd
        self._ms = _timeout_ms(timeout)
        # Owned here: lives as long as this object.
        self._st = ffi.new("struct ioutil_chunked *")

    def recv(self, buf: WriteableBuffer, chunk_left: int, total: int,
             after_data: bool) -> tuple[int, int]:
        """(payload bytes stored in buf, status), from the given position."""
        st = self._st
        st.chunk_left = chunk_left
        st.total = total
        st.after_data = int(after_data)
        with ffi.from_buffer(buf, require_writable=True) as p:
            n = lib.ioutil_chunked_recv(self._fd, p, len(p), self._ms, st)
        return int(n), int(st.status)

    @property
    def chunk_left(self) -> int:
        return int(self._st.chunk_left)

    @property
    def total(self) -> int:
        return int(self._st.total)

    @property
    def after_data(self) -> bool:
        return bool(self._st.after_data)

    @property
    def error(self) -> OSError:
        err = int(self._st.error)
        return OSError(err, f"recv: {os.strerror(err)}")

    def take_pending(self) -> bytes:
        """The received bytes not used yet (framing, payload, or what
        follows the body), now the caller's."""
        st = self._st
        data = bytes(ffi.buffer(st.data, st.pending))
        st.pending = 0
        return data


def send_full(sockfd: int, buf: ReadableBuffer, timeout: float | None) -> None:
    """
    Send all of buf to sockfd.

    timeout (seconds, None to wait forever) bounds the whole call. A
    closed peer raises BrokenPipeError; SIGPIPE is never raised.
    """
    ms = _timeout_ms(timeout)
    with ffi.from_buffer(buf) as p:
        rc = lib.ioutil_send_full(sockfd, p, len(p), ms)
    _check(rc, "send")


def send_some(sockfd: int, buf: ReadableBuffer) -> int:
    """
    Send what sockfd takes of buf now, without waiting, and return how
    many bytes that was (0 when its buffer is full). A closed peer raises
    BrokenPipeError; SIGPIPE is never raised.
    """
    with ffi.from_buffer(buf) as p:
        return _check(lib.ioutil_send_some(sockfd, p, len(p)), "send")


# TLS (ext/tls.c). An SSL handle is the address of an OpenSSL SSL object;
# only ovirt_imageio.util.tlsio should produce one.

def tls_recv_full(ssl_handle: int, sockfd: int, buf: WriteableBuffer,
                  timeout: float | None) -> int:
    """
    Receive from a TLS connection until buf is full or the stream ends.

    Returns the number of bytes received; less than len(buf) only at end
    of stream (with or without close_notify). timeout (seconds, None to
    wait forever) bounds each wait for the socket. Raises TimeoutError,
    another OSError, or ssl.SSLError for a TLS protocol error.
    """
    ms = _timeout_ms(timeout)
    err = ffi.new("char[]", 256)
    with ffi.from_buffer(buf, require_writable=True) as p:
        n = lib.ioutil_tls_recv_full(ffi.cast("void *", ssl_handle), sockfd,
                                     p, len(p), ms, err, len(err))
    if n == -errno.EPROTO:
        # Imported here: most users of this module never touch TLS.
        import ssl
        raise ssl.SSLError(f"recv: {ffi.string(err).decode(errors='replace')}")
    return _check(n, "recv")


def tls_send_full(ssl_handle: int, sockfd: int, buf: ReadableBuffer,
                  timeout: float | None) -> bool:
    """
    Send all of buf on a TLS connection, many records per send(2).

    Returns False, having sent nothing, when it cannot start (the
    handshake is not done, or no memory for the batch); the caller then
    sends through the ssl module. timeout (seconds, None
    to wait forever) bounds the sending of each 320 KiB batch. Raises
    TimeoutError, another OSError, or ssl.SSLError for a TLS error.
    """
    ms = _timeout_ms(timeout)
    err = ffi.new("char[]", 256)
    with ffi.from_buffer(buf) as p:
        rc = lib.ioutil_tls_send_full(ffi.cast("void *", ssl_handle), sockfd,
                                      p, len(p), ms, err, len(err))
    if rc == -errno.EINPROGRESS:
        return False
    if rc == -errno.EPROTO:
        import ssl
        raise ssl.SSLError(f"send: {ffi.string(err).decode(errors='replace')}")
    _check(rc, "send")
    return True


# Plaintext bytes tls_encrypt takes at most, and the room for record
# overhead its output buffer needs beyond them.
TLS_ENCRYPT_MAX: Final[int] = lib.IOUTIL_TLS_ENCRYPT_MAX
TLS_ENCRYPT_SLACK: Final[int] = lib.IOUTIL_TLS_ENCRYPT_SLACK


def tls_encrypt(ssl_handle: int, buf: ReadableBuffer, out: WriteableBuffer
                ) -> int:
    """
    Encrypt buf (at most TLS_ENCRYPT_MAX bytes) as TLS records into out
    (at least len(buf) + TLS_ENCRYPT_SLACK bytes) and return their
    length; the caller sends them, before anything else on the
    connection. Raises ssl.SSLError for a TLS error, OSError
    (EINPROGRESS) when the handshake is not done.
    """
    err = ffi.new("char[]", 256)
    with ffi.from_buffer(buf) as p, \
            ffi.from_buffer(out, require_writable=True) as o:
        rc = lib.ioutil_tls_encrypt(ffi.cast("void *", ssl_handle), p,
                                    len(p), o, len(o), err, len(err))
    if rc == -errno.EPROTO:
        import ssl
        raise ssl.SSLError(
            f"send: {ffi.string(err).decode(errors='replace')}")
    return _check(rc, "send")


def tls_buffer_reads(ssl_handle: int, buffer_size: int) -> bool:
    """Have the SSL object read its socket through a buffer of
    buffer_size bytes (before the handshake); False if it could not, and
    reads stay unbuffered."""
    return lib.ioutil_tls_buffer_reads(ffi.cast("void *", ssl_handle),
                                       buffer_size) == 0


def tls_get_fd(ssl_handle: int) -> int:
    """The socket descriptor OpenSSL uses for the SSL object."""
    return int(lib.ioutil_tls_get_fd(ffi.cast("void *", ssl_handle)))


def tls_has_pending(ssl_handle: int) -> bool:
    """Whether OpenSSL holds received bytes of the SSL object, decrypted
    or not (SSL_has_pending)."""
    return bool(lib.ioutil_tls_has_pending(ffi.cast("void *", ssl_handle)))


def tls_openssl_version() -> int:
    """OPENSSL_VERSION_NUMBER of the libssl the extension runs with."""
    return int(lib.ioutil_tls_openssl_version())
