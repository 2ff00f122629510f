# SPDX-License-Identifier: GPL-2.0-or-later
"""
The TLS contexts of ovirt_imageio.server.tls, read without a connection:
ciphers, minimum versions, verification settings, and the errors for bad
files of the test PKI (test/pki). Handshakes are tested in
test/integration/httpd/test_tls.py.
"""

from __future__ import annotations

import os
import ssl

import pytest

from ovirt_imageio.config import TLS, ConfigError
from ovirt_imageio.server import tls

from support import TOP

PKI = os.path.join(TOP, "test", "pki")
CA = os.path.join(PKI, "ca.pem")

TLS_CFG = TLS(key_file=os.path.join(PKI, "key.pem"),
              cert_file=os.path.join(PKI, "cert.pem"),
              ca_file=CA)


# Ciphers.

WEAK = ("RC4", "DES", "3DES", "NULL", "MD5", "EXP", "anon", "PSK", "SRP")


def test_server_ciphers_are_strong() -> None:
    ctx = tls.server_context(TLS(key_file=TLS_CFG.key_file,
                                 cert_file=TLS_CFG.cert_file))
    ciphers = ctx.get_ciphers()
    assert ciphers
    for c in ciphers:
        assert not any(w in c["name"] for w in WEAK), c["name"]
        assert c["aead"] or c["protocol"] == "TLSv1.2", c["name"]
        if c["protocol"] == "TLSv1.2":
            # Forward secrecy: ephemeral key exchange only.
            assert c["kea"] in ("kx-ecdhe", "kx-dhe"), c["name"]
        assert c["strength_bits"] >= 128, c["name"]



# Protocol versions.


@pytest.mark.parametrize("enable_tls1_1,minimum", [
    (False, ssl.TLSVersion.TLSv1_2),
    (True, ssl.TLSVersion.TLSv1_1),
], ids=lambda v: v.name if isinstance(v, ssl.TLSVersion) else None)
def test_server_minimum_version(enable_tls1_1: bool,
                                minimum: ssl.TLSVersion) -> None:
    cfg = TLS(key_file=TLS_CFG.key_file, cert_file=TLS_CFG.cert_file,
              enable_tls1_1=enable_tls1_1)
    assert tls.server_context(cfg).minimum_version == minimum


@pytest.mark.parametrize("secure", [True, False])
def test_client_minimum_version(secure: bool) -> None:
    ctx = tls.client_context(CA, secure=secure)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("secure,verify_mode,check_hostname", [
    (True, ssl.CERT_REQUIRED, True),
    (False, ssl.CERT_NONE, False),
])
def test_client_verification_settings(secure: bool, verify_mode: int,
                                      check_hostname: bool) -> None:
    ctx = tls.client_context(CA, secure=secure)
    assert ctx.verify_mode == verify_mode
    assert ctx.check_hostname is check_hostname


# Errors.


@pytest.mark.parametrize("field,value", [
    ("cert_file", "no-such-cert.pem"),
    ("key_file", "no-such-key.pem"),
    ("ca_file", "no-such-ca.pem"),
    # A file that is not PEM at all.
    ("cert_file", os.path.join(PKI, "README.md")),
    # A key that does not match the certificate.
    ("key_file", os.path.join(PKI, "ca-key.pem")),
])
def test_server_context_errors(field: str, value: str) -> None:
    values = {"key_file": TLS_CFG.key_file, "cert_file": TLS_CFG.cert_file,
              "ca_file": ""}
    values[field] = value
    with pytest.raises(ConfigError) as e:
        tls.server_context(TLS(**values))  # type: ignore[arg-type]
    assert os.path.basename(value) in str(e.value)
