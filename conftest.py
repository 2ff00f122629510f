# SPDX-License-Identifier: GPL-2.0-or-later
"""
Collection rules for the whole tree (pytest reads this before any path).

`make check` collects the doctests of every package module
(``--doctest-modules``, see setup.cfg), which imports each module. A few
modules need an optional binding that a development machine may lack (the
libnbd binding ``nbd`` comes from a distribution package, never from PyPI).
Such a module is skipped, not an error; any other import failure still
fails collection.
"""

from __future__ import annotations

import importlib
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parent / "ovirt_imageio"

# Top-level modules the package imports only where they are needed.
OPTIONAL = frozenset({"nbd"})


def module_name(path: pathlib.Path) -> str:
    """The dotted name of a package source file."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def pytest_ignore_collect(collection_path: pathlib.Path,
                          config: pytest.Config) -> bool | None:
    if collection_path.suffix != ".py" or \
            PACKAGE not in collection_path.parents:
        return None
    # pytest never collects doctests from __main__.py; importing one runs
    # its command.
    if collection_path.name == "__main__.py":
        return None
    try:
        importlib.import_module(module_name(collection_path))
    except ModuleNotFoundError as e:
        if e.name in OPTIONAL:
            return True
    # Anything else: let the doctest collector import it and report.
    return None
