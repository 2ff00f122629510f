# SPDX-License-Identifier: GPL-2.0-or-later
"""ovirt-img against a real daemon: output in text and JSON, errors,
exit codes and signals."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import signal
import subprocess
import tempfile
from typing import Any, Iterator

import pytest
from test_client_api import (
    CA,
    SIZE,
    MiB,
    add_ticket,
    disk,
    make_image,
    no_leftovers,
    qemu_io,
    qemu_nbd_processes,
    serve,
)

from ovirt_imageio import __version__
from ovirt_imageio.client import _tool
from ovirt_imageio.tools import qemu_img

from support import TOP
from support.daemon_util import Daemon, running

# Fixtures used from test_client_api.
__all__ = ["no_leftovers", "serve"]

OVIRT_IMG = os.path.join(TOP, "ovirt-img")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("daemon")) as d:
        yield d


def run(capsys: pytest.CaptureFixture[str], *argv: str
        ) -> tuple[int, str, str]:
    rc = _tool.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _tool.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"ovirt-img {__version__}"


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys)
    assert rc == 2
    assert "usage:" in err


def test_upload_download_text(server: Daemon, tmp_path: Any,
                              capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")

    rc, out, err = run(capsys, "upload", src, url, "--cafile", CA,
                       "--max-workers", "2", "--buffer-size", "1m")
    assert (rc, err) == (0, "")
    # Not a terminal: one summary line.
    assert out.startswith("upload completed: 8.00 MiB in ")
    assert out.count("\n") == 1
    assert qemu_img.compare(src, target, "qcow2", "raw")

    dst = str(tmp_path / "out.raw")
    rc, out, err = run(capsys, "download", url, dst, "--cafile", CA,
                       "--format", "raw")
    assert (rc, err) == (0, "")
    assert out.startswith("download completed: 8.00 MiB in ")
    assert qemu_img.compare(src, dst, "qcow2", "raw")


def test_upload_download_json(server: Daemon, tmp_path: Any,
                              capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")

    rc, out, err = run(capsys, "upload", src, url, "--cafile", CA,
                       "-o", "json")
    assert (rc, err) == (0, "")
    records = [json.loads(line) for line in out.splitlines()]
    assert records[0]["description"] == "uploading image"
    assert records[-1]["description"] == "upload completed"
    assert records[-1]["transferred"] == SIZE
    assert records[-1]["size"] == SIZE
    done = [r["transferred"] for r in records]
    assert done == sorted(done)

    dst = str(tmp_path / "out.qcow2")
    rc, out, err = run(capsys, "download", url, dst, "--cafile", CA,
                       "--output", "json")
    assert (rc, err) == (0, "")
    last = json.loads(out.splitlines()[-1])
    assert last["description"] == "download completed"
    assert qemu_img.compare(src, dst, "raw", "qcow2")


def test_checksum(server: Daemon, tmp_path: Any,
                  capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    rc, out, err = run(capsys, "checksum", src, "-o", "json")
    assert (rc, err) == (0, "")
    result = json.loads(out)
    assert result["algorithm"] == "blake2b"
    assert result["block_size"] == 4 * MiB

    rc, out, err = run(capsys, "checksum", src)
    assert rc == 0
    assert out == f"{result['checksum']}  {src}\n"

    # The server computes the same checksum for the uploaded image.
    target = disk(tmp_path)
    url = add_ticket(server, f"file://{target}")
    assert run(capsys, "upload", src, url, "--cafile", CA)[0] == 0
    rc, out, err = run(capsys, "checksum", url, "--cafile", CA, "-o",
                       "json")
    assert (rc, err) == (0, "")
    assert json.loads(out) == result


def test_upload_verify(server: Daemon, tmp_path: Any,
                       capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    rc, out, err = run(capsys, "upload", src, url, "--cafile", CA,
                       "--verify")
    assert (rc, err) == (0, "")
    assert "checksum verified" in out


def test_info(server: Daemon, tmp_path: Any,
              capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    rc, out, err = run(capsys, "info", src)
    assert (rc, err) == (0, "")
    assert "format: qcow2\n" in out
    assert "virtual-size: 8388608 (8.00 MiB)\n" in out

    rc, out, err = run(capsys, "info", src, "-o", "json")
    assert json.loads(out)["virtual-size"] == SIZE

    url = add_ticket(server, f"file://{disk(tmp_path)}")
    rc, out, err = run(capsys, "info", url, "--cafile", CA, "-o", "json")
    assert (rc, err) == (0, "")
    info = json.loads(out)
    assert info["size"] == SIZE
    assert info["transport"] == "unix"
    assert {"extents", "zero", "flush"} <= set(info["features"])

    rc, out, err = run(capsys, "info", url, "--cafile", CA)
    assert "size: 8388608 (8.00 MiB)\n" in out
    assert "features: checksum, extents, flush, written, zero\n" in out


def test_extents(server: Daemon, tmp_path: Any,
                 capsys: pytest.CaptureFixture[str]) -> None:
    src = str(tmp_path / "src.qcow2")
    qemu_img.create(src, "qcow2", size=SIZE)
    qemu_io(src, "qcow2", "write -P 1 0 1M", "write -z 1M 1M")
    rc, out, err = run(capsys, "extents", src)
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        f"{0:>15} {MiB:>15}  data",
        f"{MiB:>15} {MiB:>15}  zero",
        f"{2 * MiB:>15} {6 * MiB:>15}  zero,hole",
    ]
    rc, out, err = run(capsys, "extents", src, "-o", "json")
    assert json.loads(out)[0] == {"start": 0, "length": MiB, "zero": False,
                                  "hole": False}

    url = add_ticket(server, f"file://{disk(tmp_path)}")
    rc, out, err = run(capsys, "extents", url, "--cafile", CA, "-o",
                       "json")
    assert (rc, err) == (0, "")
    items = json.loads(out)
    assert sum(i["length"] for i in items) == SIZE


@pytest.mark.parametrize("case", ["expired", "wrong-ca", "missing-file",
                                  "read-only"])
def test_errors(server: Daemon, tmp_path: Any, case: str,
                capsys: pytest.CaptureFixture[str]) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    ops = ("read",) if case == "read-only" else ("read", "write")
    url = add_ticket(server, f"file://{disk(tmp_path)}", ops=ops)
    cafile = CA
    if case == "expired":
        ticket_id = url.rsplit("/", 1)[1]
        server.control("PATCH", f"/tickets/{ticket_id}", {"timeout": 0})
    elif case == "wrong-ca":
        cafile = os.path.join(os.path.dirname(CA), "cert.pem")
    elif case == "missing-file":
        src = str(tmp_path / "missing.qcow2")
    rc, out, err = run(capsys, "upload", src, url, "--cafile", cafile)
    assert rc == 1
    assert out == ""
    # One line, naming the problem.
    assert err.count("\n") == 1 and err.startswith("ovirt-img: error: ")
    expected = {
        "expired": "Server error: 403",
        "wrong-ca": "CERTIFICATE_VERIFY_FAILED",
        "missing-file": "qemu-img failed:",
        "read-only": "Server error: 403",
    }[case]
    assert expected in err


def test_download_error_removes_target(server: Daemon, tmp_path: Any,
                                       capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    src = make_image(str(tmp_path / "src.raw"), "raw")
    url = add_ticket(server, f"file://{src}", ops=("read",))
    dst = str(tmp_path / "out.qcow2")
    rc, out, err = run(capsys, "download", url, dst, "--cafile", CA,
                       "--incremental")
    assert rc == 1
    assert "dirty" in err
    assert not os.path.exists(dst)


# Signals, through the real executable.

@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_transfer(server: Daemon, tmp_path: Any,
                               signo: int) -> None:
    """
    Interrupt an upload in the middle: ovirt-img stops its workers and
    qemu-nbd and exits with 128+signo.

    The upload writes a JSON line per progress step into a pipe shrunk
    to one page that nobody reads, so it blocks in the middle of the copy
    until the test has sent the signal and starts reading.
    """
    chunks = 128
    src = str(tmp_path / "src.qcow2")
    qemu_img.create(src, "qcow2", size=chunks * 128 * 1024)
    qemu_io(src, "qcow2", *[f"write -P {i % 250 + 1} {i * 128}k 64k"
                            for i in range(chunks)])
    size = chunks * 128 * 1024
    url = add_ticket(server, f"file://{disk(tmp_path, size)}", size=size)
    private = tempfile.mkdtemp(prefix="ct-")
    try:
        r, w = os.pipe()
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)
        proc = subprocess.Popen(
            [OVIRT_IMG, "upload", src, url, "--cafile", CA, "-o", "json",
             "--max-workers", "1"],
            stdout=w, stderr=subprocess.PIPE,
            env=dict(os.environ, TMPDIR=private))
        os.close(w)
        # Unbuffered: read exactly the lines we look at, no more.
        with os.fdopen(r, "rb", buffering=0) as stdout:
            # Wait for the first progress: the copy runs.
            while True:
                record = json.loads(stdout.readline())
                assert record["description"] == "uploading image"
                if record["transferred"]:
                    break
            assert qemu_nbd_processes(private)
            proc.send_signal(signo)
            rest = stdout.read()
        stderr = proc.stderr.read() if proc.stderr else b""
        rc = proc.wait(60)
        assert rc == 128 + signo, stderr
        name = signal.Signals(signo).name
        assert stderr.decode().strip().endswith(f"terminated by {name}")
        last = json.loads(rest.splitlines()[-1])
        assert last["description"] == "command failed"
        assert last["transferred"] < size
        assert qemu_nbd_processes(private) == []
        assert os.listdir(private) == []
    finally:
        shutil.rmtree(private, ignore_errors=True)


def test_terminal_progress(server: Daemon, tmp_path: Any) -> None:
    """On a terminal the bar is redrawn in place and ends the line."""
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    url = add_ticket(server, f"file://{disk(tmp_path)}")
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [OVIRT_IMG, "upload", src, url, "--cafile", CA],
            stdout=secondary, stderr=subprocess.PIPE)
        os.close(secondary)
        secondary = -1
        output = b""
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                # EIO: the other side closed.
                break
            if not data:
                break
            output += data
        assert proc.wait(60) == 0
    finally:
        os.close(primary)
        if secondary != -1:
            os.close(secondary)
    text = output.decode()
    assert "\r" in text
    final = text.replace("\r\n", "\n").split("\r")[-1]
    assert final.startswith("[ 100% ] 8.00 MiB, ")
    assert final.rstrip().endswith("| upload completed")


def test_incremental(server: Daemon, tmp_path: Any, serve: Any,
                     capsys: pytest.CaptureFixture[str]) -> None:
    image = str(tmp_path / "vm.qcow2")
    qemu_img.create(image, "qcow2", size=SIZE)
    qemu_io(image, "qcow2", "write -P 1 0 2M")
    qemu_img.bitmap_add(image, "b1")
    nbd = serve(image, "qcow2", read_only=True)
    full = str(tmp_path / "full.qcow2")
    url = add_ticket(server, nbd.url, ops=("read",))
    assert run(capsys, "download", url, full, "--cafile", CA)[0] == 0
    nbd.stop()

    qemu_io(image, "qcow2", "write -P 2 1M 64k")
    nbd = serve(image, "qcow2", read_only=True, bitmap="b1")
    url = add_ticket(server, nbd.url, ops=("read",), dirty=True)
    incr = str(tmp_path / "incr.qcow2")
    log = str(tmp_path / "ovirt-img.log")
    rc, out, err = run(capsys, "download", url, incr, "--cafile", CA,
                       "--incremental", "--backing-file", "full.qcow2",
                       "--verify", "--log-file", log, "--log-level",
                       "debug")
    assert (rc, err) == (0, "")
    assert "checksum verified" in out
    assert qemu_img.compare(image, incr)
    assert qemu_img.info(incr)["backing-filename"] == "full.qcow2"
    with open(log) as f:
        assert "Verified checksum" in f.read()


def test_executable(tmp_path: Any) -> None:
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    proc = subprocess.run([OVIRT_IMG, "info", src, "-o", "json"],
                          capture_output=True, check=True)
    assert json.loads(proc.stdout)["format"] == "qcow2"
