# SPDX-License-Identifier: GPL-2.0-or-later
"""
The guard of test/conftest.py (support/pure.py): in a unit test every
way of making a socket or a process fails, so no unit test can use one by
accident.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from typing import Callable, Iterator

import pytest


@pytest.mark.parametrize("make", [
    lambda: socket.socket(),
    lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM),
    lambda: socket.socketpair(),
    lambda: socket.create_connection(("127.0.0.1", 9)),
], ids=["socket", "unix", "socketpair", "create_connection"])
def test_no_socket(make: Callable[[], object]) -> None:
    with pytest.raises(AssertionError, match="may not open a socket"):
        make()


@pytest.mark.parametrize("start", [
    lambda: subprocess.run(["true"]),
    lambda: subprocess.check_output([sys.executable, "-c", "pass"]),
    lambda: subprocess.Popen(["true"]),
    # If the guard failed, the child would leave at once.
    lambda: os.fork() or os._exit(0),
    lambda: os.posix_spawn("/bin/true", ["true"], {}),
], ids=["run", "check_output", "Popen", "fork", "posix_spawn"])
def test_no_process(start: Callable[[], object]) -> None:
    with pytest.raises(AssertionError, match="may not start a process"):
        start()



@pytest.fixture(scope="module")
def module_socket() -> Iterator[object]:
    # Module fixtures are set up within the first test's set-up phase,
    # which the guard covers too.
    try:
        yield socket.socket()
    except AssertionError as e:
        yield e


def test_guard_covers_module_fixtures(module_socket: object) -> None:
    assert isinstance(module_socket, AssertionError)
    assert "may not open a socket" in str(module_socket)
