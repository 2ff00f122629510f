# SPDX-License-Identifier: GPL-2.0-or-later
"""
Client retries against a real daemon behind a relay that breaks
connections (test/support/relay.py): transfers complete through retries
alone, an always broken link fails after the retries with the original
error, and the server's answers are retried only for 503.

The daemon serves plain HTTP with its local service off, so the client
cannot bypass the relay. Retry policies record their delays instead of
sleeping.
"""

from __future__ import annotations

import io
import os
import subprocess
from typing import Any, Callable, Iterator

import pytest
from test_client_api import add_ticket, disk, no_leftovers

from ovirt_imageio import client
from ovirt_imageio.backends import base
from ovirt_imageio.backends.http_connection import ConnectionBroken
from ovirt_imageio.client import _tool

from support.daemon_util import Daemon, running
from support.prometheus_text import parse, select
from support.relay import Relay

# Fixture used from test_client_api.
__all__ = ["no_leftovers"]

MiB = 1024**2
SIZE = 16 * MiB
# A connection cut after 6 MiB breaks in the middle of the first copy
# request (10 MiB of data): its retry sends only what the daemon's ledger
# lacks after the written prefix.
CUT = 6 * MiB


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("daemon"), tls=False,
                 extra_conf="[local]\nenable = false\n") as d:
        yield d


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random data at 0-10M and 13M-15M, zeros elsewhere (a hole)."""
    path = str(tmp_path_factory.mktemp("image") / "image.raw")
    with open(path, "wb") as f:
        f.write(os.urandom(10 * MiB))
        f.seek(13 * MiB)
        f.write(os.urandom(2 * MiB))
        f.truncate(SIZE)
    return path


class Sleeps:
    """A retry policy's sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)

    def policy(self, retries: int = 3) -> client.Retry:
        return client.Retry(retries=retries, sleep=self)


def relayed_ticket(server: Daemon, relay: Relay, path: str,
                   ops: tuple[str, ...] = ("read", "write")) -> str:
    url = add_ticket(server, f"file://{path}", SIZE, ops=ops)
    return relay.url(url.rsplit("/", 1)[1])


def identical(a: str, b: str) -> bool:
    return subprocess.run(["qemu-img", "compare", "-q", "-f", "raw",
                           "-F", "raw", a, b]).returncode == 0


def puts(relay: Relay) -> list[str]:
    """The Content-Range of each PUT the relay saw."""
    return [crange for method, _, crange in relay.requests
            if method == "PUT"]


# Three copy requests: two connections carry them, one breaks.
@pytest.mark.parametrize("workers", [1, 2])
def test_upload_through_cuts(server: Daemon, image: str, tmp_path: Any,
                             workers: int) -> None:
    target = disk(tmp_path, SIZE)
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port), cut_after=CUT) as relay:
        url = relayed_ticket(server, relay, target)
        client.upload(image, url, None, max_workers=workers,
                      buffer_size=MiB, retries=sleeps.policy())
    assert identical(image, target)
    assert relay.cuts >= 1
    # Each cut request went again at once on a new connection, after the
    # first delay: no request broke twice.
    assert sleeps.delays == [0.5] * relay.cuts
    # A cut costs at most the request it broke.
    assert relay.client_bytes < 12 * MiB + relay.cuts * 4 * MiB + MiB


def written_bytes(d: Daemon) -> int:
    """Bytes the daemon wrote to storage for PUTs, all tickets."""
    _, text = d.control("GET", "/metrics")
    _, samples = parse(text)
    return int(sum(select(samples, "ovirt_imageio_backend_bytes_total",
                          op="write").values()))


@pytest.mark.parametrize("workers", [1, 2])
def test_upload_cut_sends_only_missing(server: Daemon, image: str,
                                       tmp_path: Any, workers: int) -> None:
    target = disk(tmp_path, SIZE)
    before = written_bytes(server)
    with Relay(("127.0.0.1", server.port), cut_after=CUT) as relay:
        url = relayed_ticket(server, relay, target)
        client.upload(image, url, None, max_workers=workers,
                      buffer_size=MiB, retries=Sleeps().policy())
    assert identical(image, target)
    assert relay.cuts >= 1
    # Streamed copy requests (10 MiB and 2 MiB of data), not 4 MiB pieces.
    assert puts(relay)[0] in ("bytes 0-10485759/*",
                              "bytes 13631488-15728639/*")
    # The daemon wrote every byte of data once: each cut request's
    # written prefix stayed written (and counted) and its retry sent only
    # the rest (a whole re-send would write the prefix again).
    assert written_bytes(server) - before == 12 * MiB
    # What a cut lost in flight (socket buffers, a partial block) is all
    # that went twice, besides the request heads and extents queries.
    assert relay.client_bytes < 12 * MiB + relay.cuts * 2 * MiB


def test_upload_to_used_ticket_resends_whole(server: Daemon, image: str,
                                             tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    with Relay(("127.0.0.1", server.port), cut_after=CUT) as relay:
        url = relayed_ticket(server, relay, target)
        # Another image written first: its ranges are in the ledger, and
        # a cut request must not take them for its own.
        with client.ImageioClient(url, retries=0) as c:
            c.write(0, b"\xff" * (4 * MiB))
        client.upload(image, url, None, max_workers=1, buffer_size=MiB,
                      retries=Sleeps().policy())
    assert identical(image, target)
    assert relay.cuts >= 1
    # In pieces sent again whole after a cut (client._io.RESEND_REQUEST).
    for crange in puts(relay):
        first, last = crange.split()[1].split("/")[0].split("-")
        assert int(last) - int(first) + 1 <= 4 * MiB


def test_download_through_cuts(server: Daemon, image: str,
                               tmp_path: Any) -> None:
    target = str(tmp_path / "download.raw")
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port), cut_after=CUT) as relay:
        url = relayed_ticket(server, relay, image, ops=("read",))
        client.download(url, target, None, fmt="raw", max_workers=2,
                        buffer_size=MiB, retries=sleeps.policy())
    assert identical(image, target)
    assert relay.cuts >= 1
    assert sleeps.delays == [0.5] * relay.cuts
    # Retries asked only for what was missing: nothing came twice (the
    # cut heads and extents are small).
    assert relay.server_bytes < 12 * MiB + 256 * 1024


def test_imageio_client_through_cuts(server: Daemon, tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    data = os.urandom(4 * MiB)
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port),
               cut_after=2 * MiB + MiB // 2) as relay:
        url = relayed_ticket(server, relay, target)
        with client.ImageioClient(url, buffer_size=MiB,
                                  retries=sleeps.policy()) as c:
            # Four PUTs of 1 MiB, every third one cut.
            assert c.write(MiB, data) == len(data)
            c.zero(8 * MiB, 4 * MiB)
            c.flush()
            buf = bytearray(len(data))
            # One GET, cut and resumed where it broke.
            assert c.read(MiB, buf) == len(data)
            assert bytes(buf) == data
            assert list(c.extents())
    assert relay.cuts >= 2
    # The read may break twice, each time resumed where it broke.
    assert len(sleeps.delays) == relay.cuts
    assert set(sleeps.delays) <= {0.5, 1.0}
    with open(target, "rb") as f:
        f.seek(MiB)
        assert f.read(len(data)) == data


def test_always_cut_fails_after_retries(server: Daemon, image: str,
                                        tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    sleeps = Sleeps()
    # OPTIONS passes; every PUT breaks.
    with Relay(("127.0.0.1", server.port), cut_after=64 * 1024) as relay:
        url = relayed_ticket(server, relay, target)
        with pytest.raises(ConnectionBroken) as e:
            client.upload(image, url, None, max_workers=1,
                          retries=sleeps.policy(retries=2))
    # The original error, telling how often it was tried.
    assert "failed in PUT request" in str(e.value)
    # The last attempt may have broken differently (reset, broken pipe,
    # or end of stream), depending on where the cut caught it.
    [note] = e.value.__notes__
    assert note.startswith("Gave up after 3 attempts; the last one failed "
                           "with: Connection to http://127.0.0.1:")
    assert "failed in PUT request" in note
    # A fresh ticket: the first PUT is the whole 10 MiB copy request, and
    # each retry sends only what the daemon lacked after the cut before.
    sent = puts(relay)
    assert len(sent) == 3
    assert sent[0] == "bytes 0-10485759/*"
    starts = [int(crange.split()[1].split("-")[0]) for crange in sent]
    assert starts == sorted(starts) and starts[2] > 0
    assert all(crange.endswith("-10485759/*") for crange in sent)
    assert sleeps.delays == [0.5, 1.0]


def test_no_retries(server: Daemon, image: str, tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    with Relay(("127.0.0.1", server.port), cut_after=64 * 1024) as relay:
        url = relayed_ticket(server, relay, target)
        with pytest.raises(ConnectionBroken) as e:
            client.upload(image, url, None, max_workers=1, retries=0)
    assert not getattr(e.value, "__notes__", None)
    assert len(puts(relay)) == 1


def answer_puts(status: int, times: int) -> Callable[[str, str], int | None]:
    """Answer the first times PUTs with status, forward the rest."""
    left = times

    def answer(method: str, target: str) -> int | None:
        nonlocal left
        if method == "PUT" and left:
            left -= 1
            return status
        return None
    return answer


@pytest.mark.parametrize("status", [403, 404])
def test_error_answer_not_retried(server: Daemon, image: str, tmp_path: Any,
                                  status: int) -> None:
    target = disk(tmp_path, SIZE)
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port),
               answer=answer_puts(status, 100)) as relay:
        url = relayed_ticket(server, relay, target)
        with pytest.raises(base.RemoteError) as e:
            client.upload(image, url, None, max_workers=1,
                          retries=sleeps.policy())
    assert e.value.status == status
    assert len(puts(relay)) == 1
    assert sleeps.delays == []


def test_503_retried(server: Daemon, image: str, tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port),
               answer=answer_puts(503, 2)) as relay:
        url = relayed_ticket(server, relay, target)
        client.upload(image, url, None, max_workers=1,
                      retries=sleeps.policy())
    assert identical(image, target)
    assert sleeps.delays == [0.5, 1.0]
    # The first request three times, whole (a 503 wrote nothing), then
    # the others once each.
    sent = puts(relay)
    assert sent[:3] == ["bytes 0-10485759/*"] * 3
    assert len(sent) == len(set(sent)) + 2


def test_cli_retries_option(server: Daemon, image: str, tmp_path: Any,
                            capsys: pytest.CaptureFixture[str]) -> None:
    target = disk(tmp_path, SIZE)
    with Relay(("127.0.0.1", server.port), cut_after=64 * 1024) as relay:
        url = relayed_ticket(server, relay, target)
        rc = _tool.main(["upload", image, url, "--max-workers", "1",
                         "--retries", "0"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "failed in PUT request" in err
    assert len(puts(relay)) == 1


def test_imageio_client_streams_through_cuts(server: Daemon,
                                             tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    data = os.urandom(4 * MiB)
    source = tmp_path / "source"
    source.write_bytes(data)
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port), cut_after=5 * MiB) as relay:
        url = relayed_ticket(server, relay, target)
        with client.ImageioClient(url, buffer_size=MiB,
                                  retries=sleeps.policy()) as c:
            # Two streamed PUTs from a seekable file: the second breaks
            # and is sent again from the file's start position.
            with open(source, "rb") as f:
                c.read_from(f, 0, len(data))
            with open(source, "rb") as f:
                c.read_from(f, 4 * MiB, len(data))
            c.flush()
            # One streamed GET of 8 MiB, resumed where it broke.
            out = io.BytesIO()
            c.write_to(out, 0, 8 * MiB)
    assert out.getvalue() == data * 2
    assert relay.cuts >= 2
    assert sleeps.delays == [0.5] * relay.cuts
    with open(target, "rb") as f:
        assert f.read(8 * MiB) == data * 2


def test_imageio_client_stream_not_seekable(server: Daemon,
                                            tmp_path: Any) -> None:
    target = disk(tmp_path, SIZE)
    r, w = os.pipe()
    with os.fdopen(w, "wb") as f:
        f.write(b"x" * 32 * 1024)
    sleeps = Sleeps()
    with Relay(("127.0.0.1", server.port), cut_after=16 * 1024) as relay:
        url = relayed_ticket(server, relay, target)
        with client.ImageioClient(url, retries=sleeps.policy()) as c:
            with os.fdopen(r, "rb") as f, pytest.raises(OSError):
                # A pipe cannot be read again: no retry.
                c.read_from(f, 0, 32 * 1024)
    assert len(puts(relay)) == 1
    assert sleeps.delays == []
