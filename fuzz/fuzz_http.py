# SPDX-License-Identifier: GPL-2.0-or-later
"""
Coverage-guided fuzz target (atheris, libFuzzer) for the HTTP request
path: see ``harness.py`` for what an input is and what counts as a
crash.

Run it through ``make fuzz`` (``fuzz/run.py``), or directly with any
libFuzzer flags, for example to replay a crash::

    .venv/bin/python fuzz/fuzz_http.py build/fuzz/crashes/crash-...

The ``ovirt_imageio`` modules and the harness are imported under
atheris' instrumentation, so libFuzzer sees the branches they take.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["ovirt_imageio", "harness"]):
    import harness


def test_one_input(data: bytes) -> None:
    harness.serve(data)


def main() -> None:
    harness.setup()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
