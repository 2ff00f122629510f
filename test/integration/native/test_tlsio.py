# SPDX-License-Identifier: GPL-2.0-or-later
"""
native.tlsio on real TLS connections over loopback: the SSL object is
found only where it is certain, bulk reads and batched writes behave like
the ssl module's per-record calls (each test runs both ways), the fast
path is on for the declared CPython versions, and a daemon with the
fallback forced still moves data right. The version decision itself is
tested from a table in test/unit/native/test_tlsio_policy.py.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import ssl
import struct
import subprocess
import sys
import threading
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio.native import ioutil, tlsio
from ovirt_imageio.transfer import stream as transfer_stream

from support import TOP
from support.daemon_util import PKI, Daemon, request

Pair = tuple[ssl.SSLSocket, ssl.SSLSocket]


def require_fast_path() -> None:
    # Off on CPython versions not in TESTED_PYTHONS: nothing to test.
    if not tlsio.ENABLED:
        pytest.skip(f"TLS fast path {tlsio.STATUS}")


def server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(PKI, "cert.pem"),
                        os.path.join(PKI, "key.pem"))
    return ctx


def client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(PKI, "ca.pem"))
    return ctx


@pytest.fixture
def pair() -> Iterator[Pair]:
    """A connected (server, client) pair over loopback TCP, both prepared
    with tlsio.prepare before the handshake."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[ssl.SSLSocket] = []
    errors: list[BaseException] = []

    def accept() -> None:
        try:
            sock, _ = listener.accept()
            s = server_context().wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
            tlsio.prepare(s, tlsio.SERVER_READ_BUFFER)
            s.do_handshake()
            accepted.append(s)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=accept)
    t.start()
    c = client_context().wrap_socket(
        socket.create_connection(("127.0.0.1", port)),
        server_hostname="localhost", do_handshake_on_connect=False)
    tlsio.prepare(c, tlsio.CLIENT_READ_BUFFER)
    c.do_handshake()
    t.join()
    listener.close()
    assert not errors, errors
    s = accepted[0]
    try:
        yield s, c
    finally:
        s.close()
        c.close()


@pytest.fixture(params=["fast", "fallback"])
def reader(request: Any) -> Callable[[ssl.SSLSocket, memoryview], int]:
    """recv_full through the C path, or through recv_into (no handle)."""
    fast = request.param == "fast"

    if fast:
        require_fast_path()

    def read(sock: ssl.SSLSocket, buf: memoryview) -> int:
        h = tlsio.handle(sock) if fast else None
        if fast:
            assert h is not None
        return tlsio.recv_full(sock, h, buf)

    return read


def send_in_thread(sock: ssl.SSLSocket, data: bytes,
                   then: Callable[[], object] | None = None
                   ) -> threading.Thread:
    def run() -> None:
        sock.sendall(data)
        if then is not None:
            then()

    t = threading.Thread(target=run)
    t.start()
    return t


def pattern(size: int) -> bytes:
    return (bytes(range(251)) * (size // 251 + 1))[:size]


# Finding the SSL object.

def test_handle_found_on_both_sides(pair: Pair) -> None:
    require_fast_path()
    s, c = pair
    assert tlsio.handle(s) is not None
    assert tlsio.handle(c) is not None
    assert tlsio.handle(s) != tlsio.handle(c)


# OpenSSL's SSL_get_mode() is a macro over SSL_ctrl.
_SSL_CTRL_MODE = 33
_SSL_MODE_RELEASE_BUFFERS = 0x10


def _ssl_mode(sock: ssl.SSLSocket) -> int:
    libssl = ctypes.CDLL("libssl.so.3")
    libssl.SSL_ctrl.restype = ctypes.c_long
    libssl.SSL_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                ctypes.c_long, ctypes.c_void_p]
    h = tlsio.handle(sock)
    assert h is not None
    return int(libssl.SSL_ctrl(h, _SSL_CTRL_MODE, 0, None))


def test_prepared_connections_keep_their_record_buffer(pair: Pair) -> None:
    # The ssl module asks for the buffer to be freed whenever it empties
    # (a malloc and a free per record read); prepare undoes that.
    a, b = socket.socketpair()
    with a, b:
        plain = client_context().wrap_socket(
            a, server_hostname="localhost", do_handshake_on_connect=False)
        assert _ssl_mode(plain) & _SSL_MODE_RELEASE_BUFFERS
    for sock in pair:
        assert not _ssl_mode(sock) & _SSL_MODE_RELEASE_BUFFERS


def test_handle_none_when_disabled(pair: Pair,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tlsio, "ENABLED", False)
    assert tlsio.handle(pair[0]) is None
    assert tlsio.prepare(pair[0], tlsio.SERVER_READ_BUFFER) is None


def test_handle_none_for_unwrapped_or_foreign_objects(pair: Pair) -> None:
    class Fake:
        _sslobj = object()

        def fileno(self) -> int:
            return 0

    assert tlsio.handle(Fake()) is None  # type: ignore[arg-type]
    s, _ = pair
    s.close()
    assert tlsio.handle(s) is None


def test_handle_none_when_the_layout_does_not_match(
        pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    # Looking one pointer off must be refused, not trusted.
    s, _ = pair
    monkeypatch.setattr(tlsio, "_SOCKET_FIELD", tlsio._SOCKET_FIELD + 8)
    assert tlsio.handle(s) is None


# Reading.

@pytest.mark.parametrize("size", [1, 16 * 1024, 16 * 1024 + 1, 3 * 1024**2])
def test_recv_full_exact(pair: Pair, reader: Any, size: int) -> None:
    s, c = pair
    data = pattern(size)
    t = send_in_thread(c, data)
    buf = bytearray(size)
    assert reader(s, memoryview(buf)) == size
    t.join()
    assert buf == data


def test_bytes_after_the_body_stay_readable(pair: Pair, reader: Any) -> None:
    # The read buffer pulls in records past what was asked; the next
    # request head must still come out of the ssl module's own reads.
    s, c = pair
    body = pattern(200_000)
    t = send_in_thread(c, body + b"NEXT REQUEST")
    buf = bytearray(len(body))
    assert reader(s, memoryview(buf)) == len(body)
    assert buf == body
    rest = b""
    while len(rest) < 12:
        rest += s.recv(100)
    assert rest == b"NEXT REQUEST"
    t.join()


def poll_readable(sock: socket.socket) -> bool:
    p = select.poll()
    p.register(sock.fileno(), select.POLLIN)
    return bool(p.poll(0))


def test_has_pending_sees_records_poll_does_not(pair: Pair) -> None:
    # Four records sent at once; the first read pulls all of them into
    # the read buffer, where poll(2) cannot see them. A thread about to
    # wait for the next request must learn from has_pending to read.
    require_fast_path()
    s, c = pair
    h = tlsio.handle(s)
    assert h is not None
    data = pattern(4 * 16 * 1024)
    send_in_thread(c, data).join()
    first = bytearray(16 * 1024)
    assert tlsio.recv_full(s, h, memoryview(first)) == len(first)
    assert not poll_readable(s)
    assert tlsio.has_pending(s, h)
    rest = bytearray(len(data) - len(first))
    assert tlsio.recv_full(s, h, memoryview(rest)) == len(rest)
    assert first + rest == data
    assert not tlsio.has_pending(s, h)


def test_has_pending_without_handle_counts_the_current_record(
        pair: Pair) -> None:
    s, c = pair
    send_in_thread(c, b"x" * 2000).join()
    assert s.recv(1000) == b"x" * 1000
    assert tlsio.has_pending(s, None)
    assert s.recv(1000) == b"x" * 1000
    assert not tlsio.has_pending(s, None)


def test_stream_waits_for_data_or_wake(pair: Pair) -> None:
    s, c = pair
    stream = transfer_stream.TLSStream(s, tlsio.handle(s))
    stream.settimeout(10)
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        os.eventfd_write(wake, 1)
        assert stream.wait_readable(wake) is False
        os.eventfd_read(wake)
        send_in_thread(c, pattern(40_000)).join()
        assert stream.wait_readable(wake) is True
        buf = bytearray(16 * 1024)
        assert stream.recv_full(memoryview(buf)) == len(buf)
        # The rest may sit in the read buffer, unseen by poll.
        assert stream.wait_readable(wake) is True
        rest = bytearray(40_000 - len(buf))
        assert stream.recv_full(memoryview(rest)) == len(rest)
        stream.settimeout(0.2)
        with pytest.raises(TimeoutError):
            stream.wait_readable(wake)
    finally:
        os.close(wake)


def test_short_at_close_notify(pair: Pair, reader: Any) -> None:
    s, c = pair
    # unwrap() sends close_notify, then waits for the server's.
    t = send_in_thread(c, b"x" * 5000, then=c.unwrap)
    buf = bytearray(10_000)
    assert reader(s, memoryview(buf)) == 5000
    s.unwrap()
    t.join()


def test_short_at_unclean_close(pair: Pair, reader: Any) -> None:
    s, c = pair
    t = send_in_thread(c, b"y" * 5000,
                       then=lambda: socket.socket.shutdown(c,
                                                           socket.SHUT_WR))
    buf = bytearray(10_000)
    assert reader(s, memoryview(buf)) == 5000
    assert buf[:5000] == b"y" * 5000
    t.join()


def test_timeout(pair: Pair, reader: Any) -> None:
    s, c = pair
    s.settimeout(0.2)
    c.sendall(b"z" * 100)
    with pytest.raises(TimeoutError):
        reader(s, memoryview(bytearray(1000)))


def test_garbage_is_a_tls_error(pair: Pair, reader: Any) -> None:
    s, c = pair
    # Bytes under the TLS layer: no valid record.
    socket.socket.sendall(c, b"\x17\x03\x03\x00\x20" + b"\x00" * 32)
    with pytest.raises(ssl.SSLError):
        reader(s, memoryview(bytearray(1000)))


def test_closed_socket_is_refused(pair: Pair) -> None:
    s, _ = pair
    h = tlsio.handle(s)
    s.close()
    with pytest.raises(OSError):
        tlsio.recv_full(s, h, memoryview(bytearray(10)))


@pytest.mark.parametrize("size", [100, 70 * 1024, 300 * 1024, 3 * 1024**2])
def test_low_water_mark_never_waits_for_more_than_is_sent(
        pair: Pair, size: int) -> None:
    # The peer sends exactly the body in small records, then waits for
    # an answer: a low-water mark above the ciphertext still to come
    # would block until the timeout.
    s, c = pair
    s.settimeout(30)
    data = pattern(size)
    buf = bytearray(size)
    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(
            tlsio.recv_full(s, tlsio.handle(s), memoryview(buf))))
    t.start()
    for i in range(0, size, 7000):
        c.sendall(data[i:i + 7000])
    t.join(25)
    assert not t.is_alive(), "recv_full waited for bytes never sent"
    assert result == [size]
    assert buf == data
    # Back to the default for the ssl module's own reads.
    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    c.sendall(b"next")
    assert s.recv(10) == b"next"


# Writing.

@pytest.fixture(params=["fast", "fallback"])
def writer(request: Any) -> Callable[[ssl.SSLSocket, bytes], None]:
    """send_all through batched records, or through sendall (no handle)."""
    fast = request.param == "fast"

    if fast:
        require_fast_path()

    def write(sock: ssl.SSLSocket, data: bytes) -> None:
        h = tlsio.handle(sock) if fast else None
        if fast:
            assert h is not None
        tlsio.send_all(sock, h, memoryview(data))

    return write


def read_exactly(sock: ssl.SSLSocket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def receive_in_thread(sock: ssl.SSLSocket, size: int,
                      out: list[bytes]) -> threading.Thread:
    t = threading.Thread(target=lambda: out.append(read_exactly(sock, size)))
    t.start()
    return t


@pytest.mark.parametrize("size", [
    tlsio.MIN_BATCHED_SEND - 1,
    tlsio.MIN_BATCHED_SEND,
    256 * 1024,
    256 * 1024 + 1,
    5 * 1024**2 + 4321,
])
def test_send_all_exact(pair: Pair, writer: Any, size: int) -> None:
    s, c = pair
    data = pattern(size)
    out: list[bytes] = []
    t = receive_in_thread(c, size, out)
    writer(s, data)
    t.join()
    assert out == [data]


def test_connection_usable_after_batched_send(pair: Pair) -> None:
    # The socket's own BIO is back: the ssl module sends, receives and
    # says goodbye on the same connection as before.
    s, c = pair
    body = pattern(600_000)
    out: list[bytes] = []
    t = receive_in_thread(c, len(body) + 5, out)
    tlsio.send_all(s, tlsio.handle(s), body)
    s.sendall(b"after")
    t.join()
    assert out == [body + b"after"]
    c.sendall(b"reply")
    assert read_exactly(s, 5) == b"reply"
    t = threading.Thread(target=c.unwrap)
    t.start()
    s.unwrap()
    t.join()


def send_some_all(stream: transfer_stream.TLSStream, data: bytes,
                  then: bytes = b"") -> int:
    """Send data through send_some as the NBD door does (the rest again
    after a short return), waiting for room; then ``then`` through
    sendall. Returns the calls that returned short."""
    view = memoryview(data)
    stalls = 0
    wake = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        while view:
            n = stream.send_some(view)
            if n < len(view):
                stalls += 1
                stream.wait_io(wake, False, True)
            view = view[n:]
    finally:
        os.close(wake)
    if then:
        stream.sendall(then)
    return stalls


def test_send_some_keeps_records_in_order(pair: Pair) -> None:
    require_fast_path()
    s, c = pair
    stream = transfer_stream.TLSStream(s, tlsio.handle(s))
    stream.settimeout(10)
    body = pattern(32 * 1024**2 + 17)
    view = memoryview(body)
    # Nobody reads yet: the socket fills, and send_some returns 0
    # (holding records back) instead of waiting.
    while (n := stream.send_some(view)) > 0:
        view = view[n:]
    out: list[bytes] = []
    t = receive_in_thread(c, len(body) + 4, out)
    send_some_all(stream, bytes(view), then=b"tail")
    t.join()
    assert out == [body + b"tail"]


def test_sendall_finishes_records_send_some_held(pair: Pair) -> None:
    require_fast_path()
    s, c = pair
    stream = transfer_stream.TLSStream(s, tlsio.handle(s))
    stream.settimeout(10)
    body = pattern(32 * 1024**2)
    view = memoryview(body)
    # Fill the socket until send_some holds records back.
    while (n := stream.send_some(view)) > 0:
        view = view[n:]
    taken = len(body) - len(view)
    out: list[bytes] = []
    t = receive_in_thread(c, len(body), out)
    # The same bytes again, now waiting: nothing lost, nothing twice.
    stream.sendall(view)
    t.join()
    assert taken < len(body)
    assert out == [body]


def test_send_some_takes_pieces_while_the_socket_has_room(
        pair: Pair) -> None:
    require_fast_path()
    s, c = pair
    # Room for all of it unread: sending stops only when the socket is
    # full, not after the first piece encrypted.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024**2)
    stream = transfer_stream.TLSStream(s, tlsio.handle(s))
    body = pattern(3 * ioutil.TLS_ENCRYPT_MAX + 17)
    assert stream.send_some(body) == len(body)
    out: list[bytes] = []
    t = receive_in_thread(c, len(body), out)
    t.join()
    assert out == [body]


def test_send_some_without_handle_sends_all(pair: Pair) -> None:
    s, c = pair
    stream = transfer_stream.TLSStream(s, None)
    out: list[bytes] = []
    t = receive_in_thread(c, 300_000, out)
    assert stream.send_some(pattern(300_000)) == 300_000
    t.join()
    assert out == [pattern(300_000)]


def test_send_timeout(pair: Pair, writer: Any) -> None:
    # Nobody reads: the socket buffers fill and the send times out.
    s, _ = pair
    s.settimeout(0.2)
    with pytest.raises(TimeoutError):
        writer(s, pattern(64 * 1024**2))


def test_send_to_closed_peer(pair: Pair, writer: Any) -> None:
    s, c = pair
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                 struct.pack("ii", 1, 0))
    c.close()
    with pytest.raises(OSError):
        # The first batches may still be accepted; not all of them.
        for _ in range(20):
            writer(s, pattern(1024**2))


def test_send_closed_socket_is_refused(pair: Pair) -> None:
    s, _ = pair
    h = tlsio.handle(s)
    s.close()
    with pytest.raises(OSError):
        tlsio.send_all(s, h, pattern(1024**2))


def test_send_before_handshake_uses_the_ssl_module() -> None:
    # Before the handshake OpenSSL cannot write records: the C call
    # declines and sends nothing.
    require_fast_path()
    a, b = socket.socketpair()
    try:
        c = client_context().wrap_socket(
            a, server_hostname="localhost", do_handshake_on_connect=False)
        h = tlsio.prepare(c, tlsio.CLIENT_READ_BUFFER)
        assert h is not None
        assert not ioutil.tls_send_full(h, c.fileno(), pattern(100_000), 1.0)
        b.settimeout(0.1)
        with pytest.raises(TimeoutError):
            b.recv(1)
    finally:
        a.close()
        b.close()


# The declared versions.

@pytest.mark.skipif(
    sys.version_info[:3] not in tlsio.TESTED_PYTHONS
    or os.environ.get(tlsio.ENV_SWITCH) == "0",
    reason="not a tested CPython, or the fast path is switched off")
def test_fast_path_on_for_a_tested_version(pair: Pair) -> None:
    assert tlsio.ENABLED, tlsio.STATUS
    assert tlsio.STATUS == "on"
    assert tlsio.handle(pair[0]) is not None


# Run by another interpreter (the system's, which the daemon uses when it
# drops privileges): the fast path is on and moves data both ways.
OTHER_PYTHON_SCRIPT = """
import os, socket, ssl, sys, threading
from ovirt_imageio.native import tlsio
PKI = sys.argv[1]
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(os.path.join(PKI, "cert.pem"),
                           os.path.join(PKI, "key.pem"))
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.load_verify_locations(os.path.join(PKI, "ca.pem"))
a, b = socket.socketpair()
s = server_ctx.wrap_socket(a, server_side=True, do_handshake_on_connect=False)
c = client_ctx.wrap_socket(b, server_hostname="localhost",
                           do_handshake_on_connect=False)
hs = tlsio.prepare(s, tlsio.SERVER_READ_BUFFER)
hc = tlsio.prepare(c, tlsio.CLIENT_READ_BUFFER)
t = threading.Thread(target=c.do_handshake)
t.start()
s.do_handshake()
t.join()
data = os.urandom(3 * 1024**2)
for sender, hsend, receiver, hrecv in ((c, hc, s, hs), (s, hs, c, hc)):
    t = threading.Thread(target=tlsio.send_all, args=(sender, hsend, data))
    t.start()
    buf = bytearray(len(data))
    n = tlsio.recv_full(receiver, hrecv, memoryview(buf))
    t.join()
    assert n == len(data) and buf == data
print(tlsio.STATUS, hs is not None, hc is not None)
"""

SYSTEM_PYTHON = "/usr/bin/python3"


def python_release(python: str) -> tuple[int, ...] | None:
    try:
        p = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:3])"],
            capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return tuple(int(n) for n in p.stdout.split()) if p.returncode == 0 \
        else None


def test_fast_path_on_the_system_python() -> None:
    release = python_release(SYSTEM_PYTHON)
    if release is None or release == sys.version_info[:3]:
        pytest.skip(f"no other interpreter at {SYSTEM_PYTHON}")
    if release not in tlsio.TESTED_PYTHONS:
        pytest.skip(f"{SYSTEM_PYTHON} is {release}, not a tested version")
    # The system interpreter gets only cffi's backend from this venv.
    import _cffi_backend
    site = os.path.dirname(_cffi_backend.__file__)
    env = {k: v for k, v in os.environ.items() if k != tlsio.ENV_SWITCH}
    env["PYTHONPATH"] = f"{TOP}:{site}"
    p = subprocess.run([SYSTEM_PYTHON, "-c", OTHER_PYTHON_SCRIPT, PKI],
                       env=env, cwd="/", capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["on", "True", "True"]


# The fallback, forced.

def test_daemon_with_fallback_forced_moves_data(tmp_path: Any,
                                                make_ticket: Any) -> None:
    size = 8 * 1024**2
    ticket = make_ticket(size=size)
    data = os.urandom(size)
    d = Daemon(tmp_path / "daemon", env={tlsio.ENV_SWITCH: "0"})
    d.start()
    try:
        d.add_ticket({k: v for k, v in ticket.items() if k != "_path"})
        conn = d.remote()
        target = f"/images/{ticket['uuid']}"
        r = request(conn, "PUT", target, body=data)
        assert r.status == 200, r.read()
        r.read()
        r = request(conn, "GET", target)
        assert r.status == 200
        assert r.read() == data
        r = request(conn, "GET", target,
                    headers={"Range": "bytes=1000-2000999"})
        assert r.status == 206
        assert r.read() == data[1000:2001000]
        conn.close()
    finally:
        d.stop()
    with open(ticket["_path"], "rb") as f:
        assert f.read() == data
    assert (f"TLS fast path off: turned off by {tlsio.ENV_SWITCH}=0"
            in d.log())
