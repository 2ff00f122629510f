# SPDX-License-Identifier: GPL-2.0-or-later
"""
Tests for ovirt_imageio.server.tls against a real TLS server on loopback,
using the checked-in test PKI (test/pki). The settings of the contexts it
makes, read without a connection, are tested in
test/unit/server/test_tls_contexts.py.
"""

from __future__ import annotations

import functools
import os
import socket
import ssl
import threading
import warnings
from types import TracebackType

import pytest

from ovirt_imageio.config import TLS
from ovirt_imageio.server import tls

from support import TOP  # noqa: E402

PKI = os.path.join(TOP, "test", "pki")
CA = os.path.join(PKI, "ca.pem")
TIMEOUT = 10

TLS_CFG = TLS(key_file=os.path.join(PKI, "key.pem"),
              cert_file=os.path.join(PKI, "cert.pem"),
              ca_file=CA)

# Python's default cipher list plus the SHA1 suites TLS 1.0/1.1 need, at
# the security level OpenSSL 3 needs for them. For test clients only.
LEGACY_CIPHERS = (
    "@SECLEVEL=0:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:"
    "!aNULL:!eNULL:!aDSS:!AESCCM")

LEGACY = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


class OneShotServer:
    """
    Accept one TCP connection, do the TLS handshake with ``ctx``, send the
    negotiated version and a newline, and wait for the client to close.
    The outcome is in ``version`` or ``error`` after the block exits.
    """

    def __init__(self, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> None:
        self.ctx = ctx
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family)
        self.sock.settimeout(TIMEOUT)
        self.address = self.sock.getsockname()[:2]
        self.version: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._serve, name="tls-server", daemon=True)

    def __enter__(self) -> OneShotServer:
        self._thread.start()
        return self

    def __exit__(self, t: type[BaseException] | None,
                 v: BaseException | None, tb: TracebackType | None) -> None:
        self._thread.join(TIMEOUT)
        self.sock.close()
        assert not self._thread.is_alive(), "server thread is stuck"

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                with self.ctx.wrap_socket(conn, server_side=True) as s:
                    self.version = s.version()
                    s.sendall(f"{self.version}\n".encode())
                    # Closing before the client has read could reset the
                    # connection under the client; wait for its close.
                    s.recv(1)
        except (OSError, ssl.SSLError) as e:
            self.error = e


def talk(server: OneShotServer, ctx: ssl.SSLContext,
         server_hostname: str = "localhost") -> str:
    """Connect to server and return the version it reports."""
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_hostname) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    break
                data += chunk
    return data.decode().strip()


def pinned_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A verifying client speaking only ``version``."""
    ctx = tls.client_context(CA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = version
        ctx.maximum_version = version
    if version in LEGACY:
        ctx.set_ciphers(LEGACY_CIPHERS)
    return ctx


@functools.cache
def openssl_allows(version: ssl.TLSVersion) -> bool:
    """
    Whether this Python and OpenSSL can complete a handshake at
    ``version`` at all, with contexts made for it without our module.
    """
    if version not in ssl.TLSVersion or version not in (
            *LEGACY, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        return False
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(TLS_CFG.cert_file, TLS_CFG.key_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server_ctx.minimum_version = version
        server_ctx.maximum_version = version
    if version in LEGACY:
        server_ctx.set_ciphers(LEGACY_CIPHERS)
    try:
        with OneShotServer(server_ctx) as server:
            return talk(server, pinned_client(version)) == _name(version)
    except (OSError, ssl.SSLError):
        return False


def _name(version: ssl.TLSVersion) -> str:
    return {
        ssl.TLSVersion.TLSv1: "TLSv1",
        ssl.TLSVersion.TLSv1_1: "TLSv1.1",
        ssl.TLSVersion.TLSv1_2: "TLSv1.2",
        ssl.TLSVersion.TLSv1_3: "TLSv1.3",
    }[version]


def require(version: ssl.TLSVersion) -> None:
    if not openssl_allows(version):
        pytest.skip(f"This OpenSSL ({ssl.OPENSSL_VERSION}) cannot do "
                    f"{_name(version)} even at security level 0")


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


# Verification.


@pytest.mark.parametrize(
    "hostname", ["localhost", "localhost.localdomain", "127.0.0.1"])
def test_verify_hostname(hostname: str) -> None:
    with OneShotServer(tls.server_context(TLS_CFG)) as server:
        version = talk(server, tls.client_context(CA), hostname)
    assert server.error is None
    assert version == server.version
    assert version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.skipif(not ipv6_loopback(), reason="No IPv6 loopback")
def test_verify_ipv6_address() -> None:
    with OneShotServer(tls.server_context(TLS_CFG), host="::1") as server:
        version = talk(server, tls.client_context(CA), "::1")
    assert version == server.version


@pytest.mark.parametrize("hostname", ["example.com", "127.0.0.2"])
def test_wrong_hostname_is_rejected(hostname: str) -> None:
    with OneShotServer(tls.server_context(TLS_CFG)) as server:
        with pytest.raises(ssl.SSLCertVerificationError,
                           match="mismatch"):
            talk(server, tls.client_context(CA), hostname)
    assert server.version is None


@pytest.mark.parametrize("ca_file", [None, ""])
def test_system_store_does_not_trust_test_ca(ca_file: str | None) -> None:
    with OneShotServer(tls.server_context(TLS_CFG)) as server:
        with pytest.raises(ssl.SSLCertVerificationError):
            talk(server, tls.client_context(ca_file))


def test_insecure_client_skips_verification() -> None:
    with OneShotServer(tls.server_context(TLS_CFG)) as server:
        version = talk(server, tls.client_context(None, secure=False),
                       "example.com")
    assert version == server.version


def test_no_client_certificate_requested() -> None:
    ctx = tls.server_context(TLS_CFG)
    assert ctx.verify_mode == ssl.CERT_NONE
    with OneShotServer(ctx) as server:
        talk(server, tls.client_context(CA))
    assert server.error is None


# Protocol versions.


@pytest.mark.parametrize("enable_tls1_1,version,accepted", [
    (False, ssl.TLSVersion.TLSv1, False),
    (False, ssl.TLSVersion.TLSv1_1, False),
    (False, ssl.TLSVersion.TLSv1_2, True),
    (False, ssl.TLSVersion.TLSv1_3, True),
    (True, ssl.TLSVersion.TLSv1, False),
    (True, ssl.TLSVersion.TLSv1_1, True),
    (True, ssl.TLSVersion.TLSv1_2, True),
    (True, ssl.TLSVersion.TLSv1_3, True),
], ids=lambda v: v.name if isinstance(v, ssl.TLSVersion) else None)
def test_protocol_versions(enable_tls1_1: bool, version: ssl.TLSVersion,
                           accepted: bool) -> None:
    # A refusal only means something if the client could speak the
    # version to a server willing to.
    require(version)
    cfg = TLS(key_file=TLS_CFG.key_file, cert_file=TLS_CFG.cert_file,
              enable_tls1_1=enable_tls1_1)
    with OneShotServer(tls.server_context(cfg)) as server:
        if accepted:
            assert talk(server, pinned_client(version)) == _name(version)
        else:
            with pytest.raises(ssl.SSLError):
                talk(server, pinned_client(version))
    if accepted:
        assert server.version == _name(version)
    else:
        assert isinstance(server.error, ssl.SSLError)
        assert server.error.reason == "UNSUPPORTED_PROTOCOL"
