# SPDX-License-Identifier: GPL-2.0-or-later
from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
import uuid
from typing import Any, Callable, Generator, Iterator

import pytest

from ovirt_imageio.backends import base
from ovirt_imageio.backends import http as http_backend
from ovirt_imageio.tools import qemu_nbd

from support import ceph, pure
from support.daemon_util import PKI, Daemon, running
from support.nbd_util import NBDKit

UNIT = pathlib.Path(__file__).parent / "unit"


# A test under test/unit/ fails if it opens a socket or starts a process
# (see support/pure.py). Wrapping each phase, not an autouse fixture,
# also covers the module and session fixtures set up or torn down for it.

def _phase(item: pytest.Item) -> Generator[None, None, None]:
    if UNIT not in item.path.parents:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        pure.forbid_io(mp)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield from _phase(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, None, None]:
    yield from _phase(item)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A real daemon (TLS remote, local socket, control socket)."""
    with running(tmp_path_factory.mktemp("daemon")) as d:
        yield d


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


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short temporary directory for unix sockets."""
    # Not tmp_path: unix socket paths are limited to 107 bytes.
    path = tempfile.mkdtemp(prefix="nbd-")
    yield path
    shutil.rmtree(path)


@pytest.fixture
def serve(sock_dir: str) -> Iterator[Callable[..., qemu_nbd.Server]]:
    """Start qemu-nbd servers, stopped at the end of the test."""
    servers: list[qemu_nbd.Server] = []

    def start(image: Any, fmt: str, **kw: Any) -> qemu_nbd.Server:
        kw.setdefault("cache", "none")
        sock = os.path.join(sock_dir, f"qemu-nbd-{len(servers)}.sock")
        server = qemu_nbd.Server(str(image), fmt, sock, **kw)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def nbdkit(sock_dir: str) -> Iterator[Callable[..., NBDKit]]:
    """Start nbdkit servers (one per test), stopped at the end."""
    servers: list[NBDKit] = []

    def start(*args: str) -> NBDKit:
        server = NBDKit(sock_dir, *args)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(params=["tls", "unix"])
def transport(request: Any) -> str:
    """How an http backend reaches the daemon: TLS, or its local socket."""
    return str(request.param)


@pytest.fixture
def open_backend(daemon: Daemon, transport: str
                 ) -> Iterator[Callable[..., http_backend.HTTPBackend]]:
    """Open http backends for tickets over the test's transport."""
    opened: list[http_backend.HTTPBackend] = []
    ca_file = os.path.join(PKI, "ca.pem")

    def open_(ticket: dict[str, Any], mode: base.Mode = "r+", **kw: Any
              ) -> http_backend.HTTPBackend:
        kw.setdefault("prefer_unix_socket", transport == "unix")
        url = f"https://localhost:{daemon.port}/images/{ticket['uuid']}"
        b = http_backend.open(url, mode, ca_file=ca_file, **kw)
        opened.append(b)
        return b

    yield open_
    for b in opened:
        b.close()


@pytest.fixture(scope="session")
def ceph_cluster(
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ceph.Cluster]:
    """
    A private one-monitor, one-OSD Ceph cluster, started once per test
    session by the first test that needs it (about 15 s) and stopped at
    the end. Without the Ceph packages the tests skip, except in CI
    (CI=true), where they fail: ``make check`` installs the packages.
    """
    missing = ceph.missing()
    if missing:
        message = f"Ceph is not installed: {missing}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with ceph.running(tmp_path_factory.mktemp("ceph")) as cluster:
        yield cluster


@pytest.fixture
def rbd_image(ceph_cluster: ceph.Cluster) -> Iterator[Callable[..., str]]:
    """
    Return a function creating an RBD image of the test cluster and
    returning its name; the images are removed after the test.
    """
    names: list[str] = []

    def create(size: int = 1024**2, features: str | None = None) -> str:
        name = f"image-{uuid.uuid4().hex[:8]}"
        ceph_cluster.create_image(name, size, features)
        names.append(name)
        return name

    yield create
    for name in names:
        ceph_cluster.remove_image(name)
