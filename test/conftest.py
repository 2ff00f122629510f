# SPDX-License-Identifier: GPL-2.0-or-later
from __future__ import annotations

import os
import sys
import uuid
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from daemon_util import Daemon  # noqa: E402


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real daemon (TLS remote, local socket, control socket)."""
    d = Daemon(tmp_path_factory.mktemp("daemon"))
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def make_ticket(tmp_path: Any) -> Any:
    """Return a function creating a file-backed ticket dict."""

    def make(size: int = 1024**2, ops: tuple[str, ...] = ("read", "write"),
             data: bytes | None = None, **kw: Any) -> dict[str, Any]:
        path = tmp_path / f"image-{uuid.uuid4().hex[:8]}.raw"
        with open(path, "wb") as f:
            if data is not None:
                f.write(data)
            else:
                f.truncate(size)
        ticket = {
            "uuid": str(uuid.uuid4()),
            "size": size,
            "url": f"file://{path}",
            "timeout": 300,
            "ops": list(ops),
        }
        ticket.update(kw)
        ticket["_path"] = str(path)
        return ticket

    return make
