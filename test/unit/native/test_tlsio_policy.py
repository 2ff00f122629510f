# SPDX-License-Identifier: GPL-2.0-or-later
"""
When native.tlsio may read CPython's private SSL object layout: a table
of (interpreter, version, switch, OpenSSL versions) and the decision.
Real TLS connections, both ways, are in
test/integration/native/test_tlsio.py.
"""

from __future__ import annotations

import platform
import ssl
import sys

import pytest

from ovirt_imageio.native import ioutil, tlsio

OPENSSL = 0x30000130
OTHER_OPENSSL = 0x30000140


@pytest.mark.parametrize("implementation,version,switch,ext,lib,expected", [
    # The declared versions, with or without the switch set to on.
    ("CPython", (3, 11, 7), None, OPENSSL, OPENSSL, None),
    ("CPython", (3, 11, 2), None, OPENSSL, OPENSSL, None),
    ("CPython", (3, 11, 7), "1", OPENSSL, OPENSSL, None),
    ("CPython", (3, 11, 2), "", OPENSSL, OPENSSL, None),
    # A whole sys.version_info: only the release counts.
    ("CPython", (3, 11, 7, "final", 0), None, OPENSSL, OPENSSL, None),
    # Any other release, newer or older, same minor or not.
    ("CPython", (3, 11, 8), None, OPENSSL, OPENSSL,
     "CPython 3.11.8 is not a tested version"),
    ("CPython", (3, 11, 0), None, OPENSSL, OPENSSL,
     "CPython 3.11.0 is not a tested version"),
    ("CPython", (3, 12, 7), None, OPENSSL, OPENSSL,
     "CPython 3.12.7 is not a tested version"),
    ("CPython", (3, 10, 7), None, OPENSSL, OPENSSL,
     "CPython 3.10.7 is not a tested version"),
    ("CPython", (4, 0, 0), None, OPENSSL, OPENSSL,
     "CPython 4.0.0 is not a tested version"),
    # Not CPython at all, even with a tested version number.
    ("PyPy", (3, 11, 7), None, OPENSSL, OPENSSL, "PyPy is not CPython"),
    ("GraalVM", (3, 11, 2), None, OPENSSL, OPENSSL,
     "GraalVM is not CPython"),
    # The extension and the ssl module on different libssl builds.
    ("CPython", (3, 11, 7), None, OTHER_OPENSSL, OPENSSL,
     "extension built with OpenSSL 0x30000140, ssl module uses "
     "0x30000130"),
    # The switch turns it off whatever else holds, and says so first.
    ("CPython", (3, 11, 7), "0", OPENSSL, OPENSSL,
     "turned off by OVIRT_IMAGEIO_TLS_FASTPATH=0"),
    ("PyPy", (3, 12, 0), "0", OTHER_OPENSSL, OPENSSL,
     "turned off by OVIRT_IMAGEIO_TLS_FASTPATH=0"),
])
def test_refusal(implementation: str, version: tuple[int, ...],
                 switch: str | None, ext: int, lib: int,
                 expected: str | None) -> None:
    assert tlsio.refusal(implementation, version, switch, ext, lib) == \
        expected


def test_tested_versions_are_releases() -> None:
    # Entries must compare with sys.version_info[:3].
    assert tlsio.TESTED_PYTHONS
    for v in tlsio.TESTED_PYTHONS:
        assert len(v) == 3 and all(isinstance(n, int) for n in v)


def test_module_decision_reads_this_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    facts = (platform.python_implementation(), sys.version_info[:3])
    openssl = (ioutil.tls_openssl_version(), ssl.OPENSSL_VERSION_NUMBER)
    monkeypatch.setenv(tlsio.ENV_SWITCH, "0")
    assert tlsio._refusal() == "turned off by OVIRT_IMAGEIO_TLS_FASTPATH=0"
    monkeypatch.delenv(tlsio.ENV_SWITCH)
    assert tlsio._refusal() == tlsio.refusal(*facts, None, *openssl)

