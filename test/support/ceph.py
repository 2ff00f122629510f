# SPDX-License-Identifier: GPL-2.0-or-later
"""
A private Ceph cluster for tests and benchmarks: one monitor and one OSD
on loopback, in a temporary folder, run as child processes.

No systemd and no manager; cephx authentication is required, as on a
real cluster: the bootstrap generates the keys of the monitor, the OSD
and ``client.admin`` with ``ceph-authtool`` and hands them to the
monitor's first start (no round trip), and creates ``client.imageio``
(``USER``), whose caps allow RBD images in the test pool only. Each
client's keyring is ``ceph.client.NAME.keyring`` beside the
``ceph.conf``, which names them (``keyring = .../$cluster.$name.keyring``),
so every client finds its key the way a host's clients do. The OSD keeps
its data in a sparse BlueStore file. Without a manager the
monitor never learns that the OSD is full: when the BlueStore file fills
up the OSD aborts and clients hang, so the file is sized far above
anything the tests write (it is sparse: only written data uses disk).

Clients get the daemon's timeouts in the generated ``ceph.conf`` too, so
a test client (``rbd``, ``rados``, qemu) never hangs on a dead cluster.

    with ceph.running(tmp_path) as cluster:
        cluster.create_image("disk", 1024**3)
        url = cluster.url("disk")       # rbd:rbd/disk:conf=/tmp/.../ceph.conf
        url = cluster.url("disk", user=ceph.USER)   # ...:id=imageio

Processes are stopped when the block exits, also when starting failed
half way, and die with the process that started them; ``kill_osd`` and
``start_osd`` let a test take the OSD away and bring it back.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import textwrap
import time
import uuid
from typing import Any, Iterator

log = logging.getLogger("ceph")

POOL = "rbd"

# A client of the pool with the caps a daemon's user needs, and no more.
USER = "imageio"

# Generous: sparse, so only written data costs disk. The benchmark writes
# several 2 GiB images; the OSD aborting when full would hang clients.
BLOCK_SIZE = 64 * 1024**3

# Up in about 10-30 s on this 2-core machine; the bound covers a loaded
# machine.
START_TIMEOUT = 120.0

# Client timeouts written into ceph.conf for test clients (the daemon sets
# its own through [backend_rbd]).
CLIENT_TIMEOUT = 20

STOP_TIMEOUT = 10.0

PG_NUM = 8


# The tools the cluster needs, and the bindings of the rbd backend.
TOOLS = ("monmaptool", "ceph-authtool", "ceph-mon", "ceph-osd", "ceph",
         "rbd")
BINDINGS = ("rados", "rbd")


def missing() -> str:
    """What is missing to run a cluster and the rbd backend; "" if none."""
    what = [t for t in TOOLS if shutil.which(t) is None]
    what += [f"python module {m}" for m in BINDINGS
             if importlib.util.find_spec(m) is None]
    return ", ".join(what)


class Error(Exception):
    """The cluster did not start, or a ceph command failed."""


class Cluster:
    """A running test cluster; see the module docstring."""

    def __init__(self, root: str, block_size: int = BLOCK_SIZE) -> None:
        self.root = os.path.abspath(root)
        self.conf = os.path.join(self.root, "ceph.conf")
        self.pool = POOL
        self.fsid = str(uuid.uuid4())
        self.port = _free_port()
        self.block_size = block_size
        self.mon: subprocess.Popen[bytes] | None = None
        self.osd: subprocess.Popen[bytes] | None = None
        self.start_time = 0.0

    # Set-up.

    def start(self) -> None:
        start = time.monotonic()
        deadline = start + START_TIMEOUT
        for name in ("mon", "osd/osd.0", "run", "log"):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        self._write_conf()
        monmap = os.path.join(self.root, "monmap")
        self._run("monmaptool", "--create", "--fsid", self.fsid,
                  "--addv", "a", f"[v2:127.0.0.1:{self.port}]", monmap)
        initial = self._bootstrap_keys()
        self._run("ceph-mon", "-c", self.conf, "--mkfs", "-i", "a",
                  "--monmap", monmap, "--keyring", initial)
        os.unlink(initial)
        self.mon = self._spawn("ceph-mon", "-c", self.conf, "-i", "a", "-f")

        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "create", osd_uuid,
                           timeout=_left(deadline)).strip()
        if osd_id != "0":
            raise Error(f"Unexpected OSD id {osd_id!r}")
        self._run("ceph-osd", "-c", self.conf, "-i", "0", "--mkfs",
                  "--osd-uuid", osd_uuid, timeout=_left(deadline))
        self.start_osd(deadline)

        self.ceph("osd", "pool", "create", self.pool, str(PG_NUM),
                  timeout=_left(deadline))
        self.ceph("osd", "pool", "application", "enable", self.pool, "rbd",
                  timeout=_left(deadline))
        # Proves the placement groups are active: rbd waits for them.
        self._run("rbd", "-c", self.conf, "pool", "init", self.pool,
                  timeout=_left(deadline))
        self.add_user(USER, self.pool, timeout=_left(deadline))
        self.start_time = time.monotonic() - start
        log.info("Ceph cluster up in %.1f s at %s", self.start_time,
                 self.root)

    def _bootstrap_keys(self) -> str:
        """
        Generate the keys of the monitor, the OSD and client.admin; write
        each daemon's and the admin's keyring where the ceph.conf says,
        and return a keyring of all three with their caps, which the
        monitor's mkfs imports (ceph-authtool, no cluster needed).
        """
        # ceph-mon --mkfs writes the monitor's own keyring.
        entities: dict[str, tuple[str | None, dict[str, str]]] = {
            "mon.": (None, {"mon": "allow *"}),
            "osd.0": (os.path.join(self.root, "osd", "osd.0", "keyring"),
                      {"mon": "allow profile osd", "osd": "allow *"}),
            "client.admin": (self.keyring("admin"),
                             {"mon": "allow *", "osd": "allow *",
                              "mgr": "allow *"}),
        }
        initial = os.path.join(self.root, "initial.keyring")
        with open(initial, "w") as all_keys:
            for name, (path, caps) in entities.items():
                key = self._run("ceph-authtool", "--gen-print-key").strip()
                text = _keyring_entry(name, key, caps)
                all_keys.write(text)
                if path is not None:
                    _write_private(path, text)
        return initial

    def keyring(self, user: str) -> str:
        """The keyring of client.USER, where the ceph.conf names it."""
        return os.path.join(self.root, f"ceph.client.{user}.keyring")

    def add_user(self, user: str, pool: str, read_only: bool = False,
                 timeout: float = 60) -> str:
        """
        Create client.USER with the caps of an RBD user of pool (what the
        Ceph docs give to a hypervisor's client; read_only: to a backup
        client) and write its keyring where the ceph.conf names it;
        return the keyring's path.
        """
        path = self.keyring(user)
        osd = f"profile {'rbd-read-only' if read_only else 'rbd'} pool={pool}"
        self.ceph("auth", "get-or-create", f"client.{user}",
                  "mon", "profile rbd", "osd", osd, "-o", path,
                  timeout=timeout)
        return path

    def _write_conf(self) -> None:
        r = self.root
        text = textwrap.dedent(f"""\
            [global]
            fsid = {self.fsid}
            mon host = [v2:127.0.0.1:{self.port}]
            public addr = 127.0.0.1
            cluster addr = 127.0.0.1
            auth cluster required = cephx
            auth service required = cephx
            auth client required = cephx
            osd pool default size = 1
            osd pool default min size = 1
            osd pool default pg num = {PG_NUM}
            osd crush chooseleaf type = 0
            mon allow pool size one = true
            mon allow pool delete = true
            mon warn on pool no redundancy = false
            run dir = {r}/run
            admin socket = {r}/run/$name.asok
            pid file = {r}/run/$name.pid
            log file = {r}/log/$name.log
            rados osd op timeout = {CLIENT_TIMEOUT}
            rados mon op timeout = {CLIENT_TIMEOUT}
            client mount timeout = {CLIENT_TIMEOUT}

            [client]
            keyring = {r}/$cluster.$name.keyring

            [mon]
            mon data = {r}/mon/$name

            [osd]
            osd data = {r}/osd/$name
            osd objectstore = bluestore
            bluestore block create = true
            bluestore block size = {self.block_size}
            bluestore block db create = false
            bluestore block wal create = false
            # A small machine: keep the OSD's caches and threads modest.
            osd memory target = 939524096
            bluestore cache autotune = false
            bluestore cache size = 134217728
            osd op num shards = 2
            osd op num threads per shard = 2
            """)
        with open(self.conf, "w") as f:
            f.write(text)

    # The OSD, for failure tests.

    def start_osd(self, deadline: float | None = None) -> None:
        """
        Start the OSD and wait until the monitor sees it up and, once the
        pool exists, until its placement groups serve I/O again.
        """
        if deadline is None:
            deadline = time.monotonic() + START_TIMEOUT
        self.osd = self._spawn("ceph-osd", "-c", self.conf, "-i", "0", "-f")
        self._wait_osd_up(deadline)
        if self.start_time:
            # Listing touches every placement group: it answers once they
            # all peered (rados waits for that, up to its op timeout).
            self._run("rados", "-c", self.conf, "-p", self.pool, "ls",
                      timeout=_left(deadline))

    def _wait_osd_up(self, deadline: float) -> None:
        assert self.osd is not None
        while True:
            out = self.ceph("osd", "dump", "--format", "json",
                            timeout=_left(deadline))
            osds = json.loads(out)["osds"]
            if osds and osds[0]["up"]:
                return
            if self.osd.poll() is not None:
                raise Error(f"ceph-osd exited with {self.osd.returncode}; "
                            f"see {self.root}/log/osd.0.log")
            if time.monotonic() > deadline:
                raise Error("OSD not up in time")
            # The monitor has no way to notify us of the OSD booting.
            time.sleep(0.2)

    @property
    def osd_pid(self) -> int:
        """The running OSD's pid (benchmarks read its CPU time)."""
        assert self.osd is not None
        return self.osd.pid

    def kill_osd(self) -> None:
        """Kill the OSD at once (SIGKILL), like a crashed storage host."""
        if self.osd is not None:
            _kill(self.osd, signal.SIGKILL)
            self.osd = None

    # Images.

    def url(self, image: str, snap: str | None = None, *,
            from_snap: str | None = None, user: str | None = None,
            keyring: str | None = None) -> str:
        """
        A ticket URL (qemu syntax) for an image of the pool, as
        client.admin unless user is given (id=); keyring is the URL's
        keyring= option.
        """
        url = f"rbd:{self.pool}/{image}"
        if snap:
            url += f"@{snap}"
        url += f":conf={self.conf}"
        if user:
            url += f":id={user}"
        if keyring:
            url += f":keyring={keyring}"
        if from_snap:
            url += f":from-snap={from_snap}"
        return url

    def qemu_url(self, image: str, snap: str | None = None) -> str:
        """The same image in qemu's own rbd: syntax (no from-snap)."""
        return self.url(image, snap)

    def rbd(self, *args: str, timeout: float = 60) -> str:
        """Run the rbd tool against the cluster; return its output."""
        return self._run("rbd", "-c", self.conf, "-p", self.pool, *args,
                         timeout=timeout)

    def create_image(self, name: str, size: int,
                     features: str | None = None) -> None:
        args = ["create", "--size", f"{size}B", name]
        if features:
            args += ["--image-feature", features]
        self.rbd(*args)

    def remove_image(self, name: str) -> None:
        for snap in json.loads(self.rbd("snap", "ls", "--format", "json",
                                        name)):
            self.rbd("snap", "rm", f"{name}@{snap['name']}")
        self.rbd("rm", "--no-progress", name)

    def ceph(self, *args: str, timeout: float = 60) -> str:
        """Run the ceph tool against the cluster; return its output."""
        return self._run("ceph", "-c", self.conf,
                         "--connect-timeout", str(max(1, int(timeout))),
                         *args, timeout=timeout)

    # Processes.

    def _run(self, *args: str, timeout: float = 60) -> str:
        try:
            p = subprocess.run(args, capture_output=True, timeout=timeout,
                               check=False)
        except subprocess.TimeoutExpired:
            raise Error(f"{args[0]} {' '.join(args[1:4])} timed out") \
                from None
        if p.returncode != 0:
            raise Error(f"{' '.join(args)} failed ({p.returncode}): "
                        f"{p.stderr.decode(errors='replace')}")
        return p.stdout.decode()

    def _spawn(self, *args: str) -> subprocess.Popen[bytes]:
        out = open(os.path.join(self.root, "log",
                                f"{os.path.basename(args[0])}.out"), "ab")
        with out:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out,
                                    preexec_fn=_die_with_parent)

    def stop(self) -> None:
        """Stop both daemons; the OSD first, so it leaves cleanly."""
        for name in ("osd", "mon"):
            p = getattr(self, name)
            if p is not None:
                _kill(p, signal.SIGTERM)
                setattr(self, name, None)


@contextlib.contextmanager
def running(root: Any, block_size: int = BLOCK_SIZE) -> Iterator[Cluster]:
    """Start a cluster in folder root; stop it when the block exits."""
    cluster = Cluster(str(root), block_size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _keyring_entry(name: str, key: str, caps: dict[str, str]) -> str:
    """One entity of a keyring file, in ceph-authtool's format."""
    lines = [f"[{name}]", f"\tkey = {key}"]
    lines += [f'\tcaps {kind} = "{cap}"' for kind, cap in caps.items()]
    return "\n".join(lines) + "\n"


def _write_private(path: str, text: str) -> None:
    """Keys are secrets: readable by their owner only, like Ceph's."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _die_with_parent() -> None:
    """
    In the child before exec: the kernel kills it when the process that
    started it dies, so a test run killed outright (no finally blocks)
    leaves no Ceph daemon behind.
    """
    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _kill(p: subprocess.Popen[bytes], sig: int) -> None:
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(STOP_TIMEOUT)
            return
        except subprocess.TimeoutExpired:
            p.kill()
    p.wait()


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise Error("Ceph cluster did not start in time")
    return left


def _free_port() -> int:
    """A TCP port free on loopback now (the monitor binds it next)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
