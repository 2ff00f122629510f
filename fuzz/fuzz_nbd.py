# SPDX-License-Identifier: GPL-2.0-or-later
"""
Coverage-guided fuzz target (atheris, libFuzzer) for the NBD door: the
handshake and the request parser and checks, see ``nbd_harness.py``.

Run it through ``make fuzz FUZZ_TARGET=nbd`` (``fuzz/run.py --target
nbd``), or directly with libFuzzer flags to replay a crash::

    .venv/bin/python fuzz/fuzz_nbd.py build/fuzz-nbd/crashes/crash-...
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["ovirt_imageio", "harness",
                                         "nbd_harness"]):
    import nbd_harness


def test_one_input(data: bytes) -> None:
    nbd_harness.serve(data)


def main() -> None:
    nbd_harness.setup()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
