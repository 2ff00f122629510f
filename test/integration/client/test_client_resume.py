# SPDX-License-Identifier: GPL-2.0-or-later
"""
Resume after interruptions, through the real ovirt-img and a real daemon:
the client SIGKILLed halfway through an upload, the daemon SIGKILLed
halfway through an upload that flushes every few MiB (restarted, ticket
added again) and through one that never flushes (the daemon's own
checkpoints), the client SIGKILLed halfway through a download; and the
inputs resume refuses.

Halfway is found by polling the ticket's ``transferred`` while a rate
limit on the ticket keeps the transfer slow enough to catch; the killed
client's requests are accounted for once the ticket has no connections
left. What was sent twice comes from the daemon's byte metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from typing import Any, Iterator

import pytest
from test_client_api import CA, no_leftovers  # noqa: F401

from ovirt_imageio import client
from ovirt_imageio.client._resume import Record, Sidecar
from ovirt_imageio.tools import qemu_img
from ovirt_imageio.util.rangeset import RangeSet

from support import TOP
from support.checksums import checksum_counts, checksum_read
from support.daemon_util import Daemon, running
from support.old_server import FakeServer
from support.prometheus_text import parse, select

MiB = 1024**2
OVIRT_IMG = os.path.join(TOP, "ovirt-img")
# 64 data extents of 1 MiB, each followed by a 1 MiB hole: requests of
# 1 MiB, so a kill cuts at most 4 of them (one per connection).
CHUNKS = 64
SIZE = 2 * CHUNKS * MiB
DATA = CHUNKS * MiB
# Slow enough to see halfway, fast enough for a test: 4 s per image.
RATE = DATA // 4
FLUSH_EVERY = 4 * MiB
DEADLINE = 120


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("resume")) as d:
        yield d


def make_source(path: str) -> str:
    with open(path, "wb") as f:
        for i in range(CHUNKS):
            f.seek(2 * i * MiB)
            f.write(os.urandom(MiB))
        f.truncate(SIZE)
    return path


def data_ranges() -> RangeSet:
    return RangeSet([(2 * i * MiB, (2 * i + 1) * MiB)
                     for i in range(CHUNKS)])


def new_disk(path: str) -> str:
    with open(path, "wb") as f:
        f.truncate(SIZE)
    return path


def add_ticket(d: Daemon, path: str, ops: list[str], **kw: Any
               ) -> dict[str, Any]:
    ticket: dict[str, Any] = {"uuid": str(uuid.uuid4()), "size": SIZE,
                              "url": f"file://{path}", "timeout": 300,
                              "ops": ops}
    ticket.update(kw)
    d.add_ticket(ticket)
    return ticket


def url(d: Daemon, ticket: dict[str, Any]) -> str:
    return f"https://localhost:{d.port}/images/{ticket['uuid']}"


def backend_bytes(d: Daemon, op: str) -> int:
    _, text = d.control("GET", "/metrics")
    _, samples = parse(text)
    return int(sum(select(samples, "ovirt_imageio_backend_bytes_total",
                          op=op).values()))


def poll(condition: Any, what: str) -> None:
    """Wait for condition() with a deadline: polling, not a sleep."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"Timed out waiting for {what}")
        time.sleep(0.02)


def kill_halfway(d: Daemon, ticket: dict[str, Any],
                 proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL proc once the ticket transferred half of the data."""
    def halfway() -> bool:
        assert proc.poll() is None, "the transfer ended too early"
        return int(d.ticket(ticket["uuid"]).get("transferred", 0)) >= DATA // 2

    poll(halfway, "half of the transfer")
    proc.kill()
    proc.wait()


def wait_no_connections(d: Daemon, ticket: dict[str, Any]) -> None:
    # The daemon records a request before its connection leaves the
    # ticket, so then the metrics and the ledger know it.
    poll(lambda: d.ticket(ticket["uuid"])["connections"] == 0,
         "the ticket's connections to end")


def written_total(d: Daemon, ticket: dict[str, Any]) -> int:
    conn = d.local()
    try:
        conn.request("GET", f"/images/{ticket['uuid']}/extents"
                            "?context=written")
        resp = conn.getresponse()
        items = json.loads(resp.read())
    finally:
        conn.close()
    return sum(e["length"] for e in items if e["written"])


def tool(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([OVIRT_IMG, *args, "--cafile", CA],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    _, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, err.decode()


# Uploads.

def test_upload_client_killed(daemon: Daemon, tmp_path: Any) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    target = new_disk(str(tmp_path / "target.raw"))
    ticket = add_ticket(daemon, target, ["write"], rate_limit=RATE)
    before = backend_bytes(daemon, "write")

    kill_halfway(daemon, ticket, tool("upload", src, url(daemon, ticket),
                                      "--disk-is-zero"))
    wait_no_connections(daemon, ticket)
    first = backend_bytes(daemon, "write") - before
    # Half was transferred; at most one request per connection was cut.
    assert first >= DATA // 2 - 4 * MiB
    # The ledger has every write the metrics counted, and may have a
    # request or two whose answer found the client dead (written, but
    # not a successful request for the metrics).
    written = written_total(daemon, ticket)
    assert first <= written <= first + 4 * MiB

    daemon.control("PATCH", f"/tickets/{ticket['uuid']}", {"rate_limit": 0})
    middle = backend_bytes(daemon, "write")
    rc, err = finish(tool("upload", src, url(daemon, ticket),
                          "--disk-is-zero", "--resume"))
    assert rc == 0, err
    wait_no_connections(daemon, ticket)
    assert qemu_img.compare(src, target, "raw", "raw")
    # Exactly what the ledger lacked was sent: nothing twice.
    assert backend_bytes(daemon, "write") - middle == DATA - written


def test_upload_daemon_killed(tmp_path: Any) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    target = new_disk(str(tmp_path / "target.raw"))
    d = Daemon(tmp_path / "daemon")
    d.start()
    try:
        ticket = add_ticket(d, target, ["write"], rate_limit=RATE)
        proc = tool("upload", src, url(d, ticket), "--disk-is-zero",
                    "--flush-every", str(FLUSH_EVERY))

        def halfway() -> bool:
            assert proc.poll() is None, "the upload ended too early"
            status = d.ticket(ticket["uuid"])
            return int(status.get("transferred", 0)) >= DATA // 2

        poll(halfway, "half of the upload")
        d.kill()
        rc, err = finish(proc)
        assert rc == 1 and "error" in err, err

        d.start()
        ticket.pop("rate_limit")
        d.add_ticket(ticket)
        durable = written_total(d, ticket)
        # Flushed every 4 MiB: at most that, the flush running and the
        # requests in flight are missing from the saved ledger.
        assert durable >= DATA // 2 - 3 * FLUSH_EVERY - 4 * MiB

        client.upload(src, url(d, ticket), CA, disk_is_zero=True,
                      resume=True)
        wait_no_connections(d, ticket)
        assert qemu_img.compare(src, target, "raw", "raw")
        # The restarted daemon received exactly what the ledger lacked.
        assert backend_bytes(d, "write") == DATA - durable
    finally:
        d.stop()


def written_ranges(d: Daemon, ticket: dict[str, Any]
                   ) -> list[tuple[int, int]]:
    conn = d.local()
    try:
        conn.request("GET", f"/images/{ticket['uuid']}/extents"
                            "?context=written")
        items = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return [(e["start"], e["start"] + e["length"]) for e in items
            if e["written"]]


# The daemon's own checkpoint bound in the next test: 8 MiB of the 64 MiB
# of data, so half the upload is four bounds.
CHECKPOINT = 8 * MiB


def test_upload_daemon_killed_without_client_flush(tmp_path: Any) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    target = new_disk(str(tmp_path / "target.raw"))
    d = Daemon(tmp_path / "daemon", extra_conf=f"""
        [daemon]
        checkpoint_size = {CHECKPOINT}
        """)
    d.start()
    try:
        ticket = add_ticket(d, target, ["write"], rate_limit=RATE)
        # No --flush-every: the client flushes only at the end, so all
        # that is durable at the kill is the daemon's checkpoints.
        proc = tool("upload", src, url(d, ticket), "--disk-is-zero")

        def halfway() -> bool:
            assert proc.poll() is None, "the upload ended too early"
            status = d.ticket(ticket["uuid"])
            return int(status.get("transferred", 0)) >= DATA // 2

        poll(halfway, "half of the upload")
        d.kill()
        rc, err = finish(proc)
        assert rc == 1 and "error" in err, err

        d.start()
        ticket.pop("rate_limit")
        d.add_ticket(ticket)
        ranges = written_ranges(d, ticket)
        durable = sum(end - start for start, end in ranges)
        # At most one bound, the requests completing while the last
        # checkpoint ran and the requests in flight were not durable.
        assert durable >= DATA // 2 - 2 * CHECKPOINT - 4 * MiB
        # Only data was sent (the target is known zero), and what the
        # saved ledger says was written is on the target.
        data = data_ranges()
        for start, end in ranges:
            data.add(start, end)
        assert data.total() == DATA
        with open(src, "rb") as a, open(target, "rb") as b:
            for start, end in ranges:
                a.seek(start)
                b.seek(start)
                assert a.read(end - start) == b.read(end - start)

        client.upload(src, url(d, ticket), CA, disk_is_zero=True,
                      resume=True)
        wait_no_connections(d, ticket)
        assert qemu_img.compare(src, target, "raw", "raw")
        assert backend_bytes(d, "write") == DATA - durable
    finally:
        d.stop()


def test_upload_resume_without_written_feature(tmp_path: Any) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    # What upstream 2.5 answers: no "written".
    options = b'{"features": ["checksum", "extents", "flush", "zero"]}'
    with FakeServer(SIZE, 200, options) as server:
        rc, err = finish(tool("upload", src, server.url, "--resume"))
        assert rc == 1
        assert "does not report written ranges" in err
        assert "without resume" in err
        # Failed at once: nothing was sent.
        assert server.methods() == ["OPTIONS"]


def test_upload_resume_nothing_written(daemon: Daemon, tmp_path: Any
                                       ) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    target = new_disk(str(tmp_path / "target.raw"))
    ticket = add_ticket(daemon, target, ["write"])
    before = backend_bytes(daemon, "write")
    client.upload(src, url(daemon, ticket), CA, resume=True)
    wait_no_connections(daemon, ticket)
    assert qemu_img.compare(src, target, "raw", "raw")
    assert backend_bytes(daemon, "write") - before == DATA
    # All written now: a second resume sends nothing.
    client.upload(src, url(daemon, ticket), CA, resume=True)
    wait_no_connections(daemon, ticket)
    assert backend_bytes(daemon, "write") - before == DATA


# Downloads.

def test_download_client_killed(daemon: Daemon, tmp_path: Any) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    ticket = add_ticket(daemon, src, ["read"], rate_limit=RATE)
    out = str(tmp_path / "out.raw")
    before = backend_bytes(daemon, "read")

    kill_halfway(daemon, ticket, tool(
        "download", "-f", "raw", "--flush-every", str(FLUSH_EVERY),
        url(daemon, ticket), out))
    wait_no_connections(daemon, ticket)
    record = Sidecar(out).load()
    assert record is not None
    assert (record.fmt, record.size) == ("raw", SIZE)
    recorded = sum(min(e, de) - max(s, ds)
                   for s, e in record.done.ranges()
                   for ds, de in data_ranges().ranges()
                   if min(e, de) > max(s, ds))
    assert recorded >= DATA // 2 - 3 * FLUSH_EVERY - 4 * MiB

    daemon.control("PATCH", f"/tickets/{ticket['uuid']}", {"rate_limit": 0})
    middle = backend_bytes(daemon, "read")
    rc, err = finish(tool("download", "-f", "raw", "--resume",
                          url(daemon, ticket), out))
    assert rc == 0, err
    assert "no resume record" not in err
    wait_no_connections(daemon, ticket)
    assert not Sidecar(out).exists()
    assert qemu_img.compare(src, out, "raw", "raw")
    # The resumed download read exactly the data the record lacked.
    assert backend_bytes(daemon, "read") - middle == DATA - recorded
    assert middle - before >= recorded


def test_download_resume_without_record(daemon: Daemon, tmp_path: Any
                                        ) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    ticket = add_ticket(daemon, src, ["read"])
    out = str(tmp_path / "out.raw")
    with open(out, "wb") as f:
        f.write(b"old content")
    rc, err = finish(tool("download", "-f", "raw", "--resume",
                          url(daemon, ticket), out))
    assert rc == 0, err
    assert f"no resume record for {out}: starting a new download" in err
    assert qemu_img.compare(src, out, "raw", "raw")
    assert not Sidecar(out).exists()


def _downloaded_partly(tmp_path: Any, record: Record) -> str:
    out = str(tmp_path / "out.raw")
    with open(out, "wb") as f:
        f.truncate(record.size)
    Sidecar(out).save(record)
    return out


@pytest.mark.parametrize("record,args,message", [
    (Record("raw", SIZE + MiB, RangeSet([(0, MiB)])), ["-f", "raw"],
     "not the same image"),
    (Record("raw", SIZE, RangeSet([(0, MiB)])), ["-f", "qcow2"],
     "only raw targets can be resumed"),
    (Record("qcow2", SIZE, RangeSet([(0, MiB)])), ["-f", "raw"],
     "as qcow2, not raw"),
])
def test_download_resume_refused(daemon: Daemon, tmp_path: Any,
                                 record: Record, args: list[str],
                                 message: str) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    ticket = add_ticket(daemon, src, ["read"])
    out = _downloaded_partly(tmp_path, record)
    saved = open(Sidecar(out).path, "rb").read()
    rc, err = finish(tool("download", *args, "--resume",
                          url(daemon, ticket), out))
    assert rc == 1
    assert message in err
    # Refused before touching anything.
    assert os.path.getsize(out) == record.size
    assert open(Sidecar(out).path, "rb").read() == saved


def test_download_resume_damaged_record(daemon: Daemon, tmp_path: Any
                                        ) -> None:
    src = make_source(str(tmp_path / "src.raw"))
    ticket = add_ticket(daemon, src, ["read"])
    out = _downloaded_partly(tmp_path, Record("raw", SIZE, RangeSet()))
    with open(Sidecar(out).path, "r+b") as f:
        f.seek(20)
        f.write(b"X")
    rc, err = finish(tool("download", "-f", "raw", "--resume",
                          url(daemon, ticket), out))
    assert rc == 1
    assert "Damaged resume record" in err


@pytest.mark.parametrize("resume", [True, False])
def test_download_failure(daemon: Daemon, tmp_path: Any, resume: bool
                          ) -> None:
    """
    A download failing midway (its ticket deleted) keeps the file and its
    record with resume, for the next try; without, removes both.
    """
    src = make_source(str(tmp_path / "src.raw"))
    ticket = add_ticket(daemon, src, ["read"], rate_limit=RATE)
    out = str(tmp_path / "out.raw")
    errors: list[BaseException] = []

    def download() -> None:
        try:
            client.download(url(daemon, ticket), out, CA, fmt="raw",
                            resume=resume, flush_every=FLUSH_EVERY)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=download)
    t.start()
    try:
        poll(lambda: (Sidecar(out).load() or Record("raw", 0, RangeSet())
                      ).done.total() > 0, "a first record")
    finally:
        daemon.control("DELETE", f"/tickets/{ticket['uuid']}")
        t.join()
    assert len(errors) == 1 and isinstance(errors[0], client.ImageioError)
    assert os.path.exists(out) == resume
    assert Sidecar(out).exists() == resume


def test_upload_requests_keep_hash_blocks_whole(daemon: Daemon,
                                                tmp_path: Any) -> None:
    """
    Requests to a server with a ledger are small, but never cut the
    ticket's hash-on-write blocks (16 MiB here, twice LEDGER_REQUEST):
    every block is hashed as written and the checksum reads nothing.
    """
    size = 48 * MiB
    src = str(tmp_path / "src.raw")
    with open(src, "wb") as f:
        f.write(os.urandom(size))
    target = new_disk(str(tmp_path / "target.raw"))
    ticket = add_ticket(daemon, target, ["write"], size=size,
                        checksum={"algorithm": "sha256",
                                  "block_size": 16 * MiB})
    before = checksum_counts(daemon)
    client.upload(src, url(daemon, ticket), CA, verify=True)
    assert checksum_read(daemon, before) == 0
