# SPDX-License-Identifier: GPL-2.0-or-later
"""
The package's doctests are part of the suite (``--doctest-modules`` over
``ovirt_imageio`` in setup.cfg), and collecting them must not depend on
the optional libnbd binding.
"""

from __future__ import annotations

import subprocess
import sys

from support import TOP

# Collect the package's doctests in a fresh interpreter where ``import
# nbd`` fails the way it does when python3-libnbd is not installed.
WITHOUT_NBD = """
import sys
import pytest
sys.modules["nbd"] = None
sys.exit(pytest.main(["--collect-only", "-q", "ovirt_imageio"]))
"""


def test_doctests_collected_without_nbd() -> None:
    p = subprocess.run([sys.executable, "-c", WITHOUT_NBD], cwd=TOP,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    # Modules that need nbd are left out, the rest are collected.
    assert "ovirt_imageio/backends/nbd.py" not in out
    assert "ovirt_imageio/client/_local.py" not in out
    assert "ovirt_imageio/transfer/ticketspec.py::" in out
    assert "ovirt_imageio/backends/nbd_url.py::" in out

