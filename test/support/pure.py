# SPDX-License-Identifier: GPL-2.0-or-later
"""
Unit tests are pure: no socket, no child process. test/conftest.py runs
every test under test/unit/ (its set-up, call and tear-down, fixtures of
any scope included) with socket creation, ``subprocess.Popen`` (and so
``run``, ``check_output``, ...), ``os.fork`` and ``os.posix_spawn`` made
to fail, so a test that needs one of them fails there and belongs under
``test/integration/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
from typing import Any, NoReturn

import pytest


class UnitTestIO(AssertionError):
    """A unit test tried to open a socket or start a process."""

    def __init__(self, what: str) -> None:
        super().__init__(f"a unit test may not {what}; "
                         "move it under test/integration/")


class NoSocket(socket.socket):
    # A subclass, so ``isinstance`` and ``class X(socket.socket)`` in the
    # code under test keep working; only making one fails.
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnitTestIO("open a socket")


class NoPopen(subprocess.Popen[Any]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise UnitTestIO("start a process")


def no_process(*args: Any, **kwargs: Any) -> NoReturn:
    raise UnitTestIO("start a process")


def forbid_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sockets and processes fail until monkeypatch is undone."""
    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(subprocess, "Popen", NoPopen)
    monkeypatch.setattr(os, "fork", no_process)
    monkeypatch.setattr(os, "posix_spawn", no_process)
    monkeypatch.setattr(os, "posix_spawnp", no_process)
