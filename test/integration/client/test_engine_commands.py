# SPDX-License-Identifier: GPL-2.0-or-later
"""
``ovirt-img upload-disk`` and ``download-disk`` against the engine test
double in front of a real daemon: the oVirt SDK, the double's REST API,
real tickets, real files and qemu-nbd.

Most tests run twice: with our ovirt-img and with upstream 2.5.1's (from
the ignored ``.bench-venv`` that ``make check`` creates), so the double
is checked against the client it imitates an engine for, and both tools
must leave the same disks. Upstream's tool runs outside this tree,
without our PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any, Iterator

import pytest

from ovirt_imageio.tools import qemu_img

from support import TOP
from support.daemon_util import Daemon, running
from support.engine import USERNAME, EngineDouble

UPSTREAM_IMG = os.path.join(TOP, ".bench-venv", "bin", "ovirt-img")
MiB = 1024**2
SIZE = 8 * MiB

TOOLS = [
    "ours",
    pytest.param("upstream", marks=pytest.mark.skipif(
        not os.path.exists(UPSTREAM_IMG),
        reason="upstream 2.5.1 not installed; `make check` installs it "
               "into .bench-venv")),
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("daemon")) as d:
        yield d


@pytest.fixture
def engine(daemon: Daemon, tmp_path: Any) -> Iterator[EngineDouble]:
    with EngineDouble(daemon.conf_dir, f"https://localhost:{daemon.port}",
                      str(tmp_path / "sd")) as e:
        yield e
        # Whatever the test did, nothing stays open: no transfer on the
        # engine, no ticket on the daemon.
        assert e.model.open_transfers() == []
        for t in e.model.transfers.values():
            assert t.ticket_id is None


class Tool:
    """One ovirt-img (ours or upstream's) logged in to an engine."""

    def __init__(self, name: str, engine: EngineDouble, tmp_path: Any
                 ) -> None:
        self.name = name
        self.engine = engine
        self.tmp = tmp_path
        self.password_file = str(tmp_path / "password")
        with open(self.password_file, "w") as f:
            f.write(engine.password + "\n")

    def run(self, command: str, *args: str,
            password_file: str | None = None,
            env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        common = ["--engine-url", self.engine.url, "--username", USERNAME,
                  "--password-file", password_file or self.password_file,
                  "--cafile", self.engine.cafile]
        run_env = dict(os.environ)
        if self.name == "ours":
            argv = [sys.executable, "-m", "ovirt_imageio.client"]
            run_env["PYTHONPATH"] = TOP
        else:
            argv = [UPSTREAM_IMG]
            run_env.pop("PYTHONPATH", None)
        run_env.update(env or {})
        return subprocess.run([*argv, command, *common, *args],
                              cwd=str(self.tmp), env=run_env,
                              capture_output=True, text=True, timeout=120)

    def ok(self, command: str, *args: str) -> str:
        p = self.run(command, *args)
        assert p.returncode == 0, p.stderr
        return p.stdout

    def upload(self, filename: str, *args: str) -> str:
        """Upload filename; returns the new disk's id."""
        disk_id = str(uuid.uuid4())
        self.ok("upload-disk", "-s", "sd1", "--disk-id", disk_id, *args,
                filename)
        return disk_id


@pytest.fixture(params=TOOLS)
def tool(request: pytest.FixtureRequest, engine: EngineDouble,
         tmp_path: Any) -> Tool:
    return Tool(request.param, engine, tmp_path)


def make_raw(path: str, size: int = SIZE) -> str:
    """A raw image with data at 0 and 4 MiB, holes elsewhere."""
    with open(path, "wb") as f:
        f.write(os.urandom(MiB))
        f.seek(4 * MiB)
        f.write(os.urandom(MiB // 2))
        f.truncate(size)
    return path


def convert(src: str, dst: str, fmt: str) -> str:
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, src, dst],
                   check=True)
    return dst


def compare(a: str, b: str) -> None:
    subprocess.run(["qemu-img", "compare", "-q", a, b], check=True)


def volume(engine: EngineDouble, disk_id: str) -> str:
    return engine.model.disks[disk_id].volumes[-1].path


# Upload and download.

# Image format, disk format and allocation, and the downloads' formats:
# every pair of formats both ways, without every product of them.
@pytest.mark.parametrize("image_fmt,disk_fmt,allocation,downloads", [
    ("qcow2", "qcow2", "sparse", ("raw", "qcow2")),
    ("raw", "qcow2", "sparse", ("raw",)),
    ("qcow2", "qcow2", "preallocated", ("qcow2",)),
    ("raw", "raw", "sparse", ("qcow2",)),
    ("qcow2", "raw", "preallocated", ("raw", "qcow2")),
])
def test_upload_download(tool: Tool, tmp_path: Any, image_fmt: str,
                         disk_fmt: str, allocation: str,
                         downloads: tuple[str, ...]) -> None:
    src = make_raw(str(tmp_path / "src.raw"))
    image = src if image_fmt == "raw" else convert(
        src, str(tmp_path / "src.qcow2"), "qcow2")
    args = ["-f", disk_fmt]
    if allocation == "preallocated":
        args.append("--preallocated")
    disk_id = tool.upload(image, *args)

    disk = tool.engine.model.disks[disk_id]
    assert disk.status == "ok"
    assert disk.fmt == ("cow" if disk_fmt == "qcow2" else "raw")
    assert disk.sparse is (allocation == "sparse")
    assert disk.provisioned_size == SIZE
    assert disk.content_type == "data"
    assert disk.name == "src"
    assert disk.description == "Uploaded by ovirt-img"
    assert disk.backup == ("incremental" if disk_fmt == "qcow2" else None)
    # Only a sparse qcow2 disk grows from an initial size.
    if disk_fmt == "qcow2" and allocation == "sparse":
        measured = qemu_img.measure(image, out_fmt="qcow2")["required"]
        assert disk.initial_size == measured
    else:
        assert disk.initial_size is None
    compare(src, volume(tool.engine, disk_id))

    for fmt in downloads:
        out = str(tmp_path / f"out.{fmt}")
        tool.ok("download-disk", "-f", fmt, disk_id, out)
        assert qemu_img.info(out)["format"] == fmt
        compare(src, out)
    assert tool.engine.called("POST", "/finalize") == 1 + len(downloads)
    assert tool.engine.called("POST", "/cancel") == 0


def test_upload_iso(tool: Tool, tmp_path: Any) -> None:
    # What makes an image an ISO for ovirt-img: the primary volume
    # descriptor at 32 KiB.
    iso = str(tmp_path / "boot.iso")
    with open(iso, "wb") as f:
        f.write(os.urandom(0x8000))
        f.write(b"\x01CD001\x01\x00")
        f.write(os.urandom(MiB))
        f.truncate(4 * MiB)
    disk_id = tool.upload(iso, "-f", "qcow2", "--name", "install")
    disk = tool.engine.model.disks[disk_id]
    assert (disk.content_type, disk.fmt, disk.sparse) == ("iso", "raw",
                                                          False)
    assert disk.name == "install"
    compare(iso, volume(tool.engine, disk_id))


def test_both_tools_same_disk(engine: EngineDouble, tmp_path: Any) -> None:
    if not os.path.exists(UPSTREAM_IMG):
        pytest.skip("upstream 2.5.1 not installed")
    src = convert(make_raw(str(tmp_path / "src.raw")),
                  str(tmp_path / "src.qcow2"), "qcow2")
    disks = []
    for name in ("ours", "upstream"):
        t = Tool(name, engine, tmp_path)
        disks.append(engine.model.disks[t.upload(src, "-d", "same")])
    ours, theirs = disks
    for attr in ("fmt", "sparse", "content_type", "provisioned_size",
                 "initial_size", "backup", "description", "name",
                 "status"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    compare(ours.volumes[-1].path, theirs.volumes[-1].path)


def test_download_snapshot(engine: EngineDouble, tmp_path: Any) -> None:
    # Upstream's download-disk has no snapshot option: ours only.
    tool = Tool("ours", engine, tmp_path)
    before = make_raw(str(tmp_path / "before.raw"))
    disk_id = tool.upload(before, "-f", "qcow2")
    snap = engine.model.snapshot(disk_id)
    # Writes after the snapshot go to the new active volume.
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x55 0 1M",
                    volume(engine, disk_id)], check=True,
                   capture_output=True)
    out = str(tmp_path / "snap.qcow2")
    tool.ok("download-disk", "--snapshot-id", snap.id, disk_id, out)
    compare(before, out)
    out = str(tmp_path / "disk.raw")
    tool.ok("download-disk", "-f", "raw", disk_id, out)
    with open(out, "rb") as f:
        assert f.read(MiB) == b"\x55" * MiB


def test_proxy_fallback(tool: Tool, tmp_path: Any) -> None:
    tool.engine.model.fail.add("host_url")
    src = make_raw(str(tmp_path / "src.raw"))
    disk_id = tool.upload(src, "-f", "raw")
    out = str(tmp_path / "out.raw")
    tool.ok("download-disk", "-f", "raw", disk_id, out)
    compare(src, out)


def test_old_engine_removes_transfer(tool: Tool, tmp_path: Any) -> None:
    # Before 4.4.7 a finalized transfer vanished: the disk tells.
    tool.engine.model.fail.add("old_engine")
    disk_id = tool.upload(make_raw(str(tmp_path / "src.raw")), "-f", "raw")
    assert tool.engine.model.disks[disk_id].status == "ok"


def test_json_phases(tool: Tool, tmp_path: Any) -> None:
    src = make_raw(str(tmp_path / "src.raw"))
    out = tool.ok("upload-disk", "-s", "sd1", "-o", "json", src)
    phases = _phases(out)
    assert phases == ["inspecting image", "creating disk",
                      "creating transfer", "uploading image",
                      "finalizing transfer", "upload completed"]
    disk_id = next(iter(tool.engine.model.disks))
    out = tool.ok("download-disk", "-o", "json", disk_id,
                  str(tmp_path / "out.qcow2"))
    assert _phases(out) == ["creating transfer", "downloading image",
                            "finalizing transfer", "download completed"]
    last = json.loads(out.splitlines()[-1])
    assert last["transferred"] == SIZE


def _phases(out: str) -> list[str]:
    """The phases of JSON progress lines, in order, each once."""
    phases: list[str] = []
    for line in out.splitlines():
        phase = json.loads(line)["description"]
        # Both tools describe every line, from the first one on.
        assert phase
        if not phases or phases[-1] != phase:
            phases.append(phase)
    return phases


# Failures: exit 1, a message naming the problem, nothing left open.

def _failed(tool: Tool, p: subprocess.CompletedProcess[str], words: str
            ) -> None:
    assert p.returncode == 1, p.stderr
    if tool.name == "ours":
        # Ours promises one line; upstream logs a traceback.
        lines = p.stderr.splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith("ovirt-img: error: ")
    assert words in p.stderr, p.stderr


def test_wrong_password(tool: Tool, tmp_path: Any) -> None:
    bad = str(tmp_path / "bad-password")
    with open(bad, "w") as f:
        f.write("wrong\n")
    p = tool.run("upload-disk", "-s", "sd1",
                 make_raw(str(tmp_path / "src.raw")), password_file=bad)
    _failed(tool, p, "Cannot authenticate user")
    assert tool.engine.model.disks == {}


def test_unknown_storage_domain(tool: Tool, tmp_path: Any) -> None:
    p = tool.run("upload-disk", "-s", "nosuchsd",
                 make_raw(str(tmp_path / "src.raw")))
    _failed(tool, p, "nosuchsd")
    assert tool.engine.model.disks == {}


def test_unknown_disk(tool: Tool, tmp_path: Any) -> None:
    missing = str(uuid.uuid4())
    p = tool.run("download-disk", missing, str(tmp_path / "out.qcow2"))
    _failed(tool, p, missing)
    assert not os.path.exists(tmp_path / "out.qcow2")


def test_unsupported_format(tool: Tool, tmp_path: Any) -> None:
    image = str(tmp_path / "src.vmdk")
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", image, "1M"],
                   check=True)
    p = tool.run("upload-disk", "-s", "sd1", image)
    _failed(tool, p, "vmdk")
    assert tool.engine.called("POST", "/disks") == 0


def test_finalize_fails(tool: Tool, tmp_path: Any) -> None:
    tool.engine.model.fail.add("finalize")
    p = tool.run("upload-disk", "-s", "sd1", "-f", "raw",
                 make_raw(str(tmp_path / "src.raw")))
    _failed(tool, p, "failed")
    # The engine removed the disk of the failed upload.
    assert tool.engine.model.disks == {}


def test_transfer_paused(tool: Tool, tmp_path: Any) -> None:
    tool.engine.model.fail.add("pause")
    p = tool.run("upload-disk", "-s", "sd1", "-f", "raw",
                 make_raw(str(tmp_path / "src.raw")))
    _failed(tool, p, "paused")
    assert tool.engine.called("POST", "/cancel") == 1
    assert tool.engine.model.disks == {}


def test_upload_fails_cancels(tool: Tool, tmp_path: Any) -> None:
    # Neither the host nor the proxy answers: the upload fails, the
    # transfer is cancelled and the engine removes the new disk.
    tool.engine.model.fail.add("host_url")
    tool.engine.model.proxy_base = "https://localhost:1"
    p = tool.run("upload-disk", "-s", "sd1", "-f", "raw",
                 make_raw(str(tmp_path / "src.raw")))
    assert p.returncode == 1, p.stderr
    assert tool.engine.called("POST", "/cancel") == 1
    assert tool.engine.called("POST", "/finalize") == 0
    assert tool.engine.model.disks == {}


def test_download_fails_finalizes(tool: Tool, tmp_path: Any) -> None:
    tool.engine.model.fail.add("host_url")
    src = make_raw(str(tmp_path / "src.raw"))
    tool.engine.model.import_disk(src, "raw")
    disk_id = next(iter(tool.engine.model.disks))
    tool.engine.model.proxy_base = "https://localhost:1"
    p = tool.run("download-disk", disk_id, str(tmp_path / "out.qcow2"))
    assert p.returncode == 1, p.stderr
    # A download transfer is finalized, never cancelled; the disk stays.
    assert tool.engine.called("POST", "/finalize") == 1
    assert tool.engine.model.disks[disk_id].status == "ok"


# Our tool only: configuration, host choice, the SDK as an option.

def test_config_section(engine: EngineDouble, tmp_path: Any) -> None:
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    (xdg / "ovirt-img.conf").write_text(
        f"[double]\nengine_url = {engine.url}\nusername = {USERNAME}\n"
        f"password = {engine.password}\ncafile = {engine.cafile}\n"
        "description = configured\n")
    src = make_raw(str(tmp_path / "src.raw"))
    p = subprocess.run(
        [sys.executable, "-m", "ovirt_imageio.client", "upload-disk", "-c",
         "double", "-s", "sd1", "-f", "raw", src],
        env=dict(os.environ, PYTHONPATH=TOP, XDG_CONFIG_HOME=str(xdg)),
        cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    (disk,) = engine.model.disks.values()
    assert disk.description == "configured"
    # Not a terminal: one line per phase, then a summary.
    assert p.stdout.splitlines()[:6] == [
        "inspecting image", "creating disk", "creating transfer",
        "uploading image", "finalizing transfer", "upload completed"]
    assert p.stdout.splitlines()[6].startswith("transferred 8.00 MiB in ")


@pytest.mark.parametrize("local", [True, False])
def test_local_host(engine: EngineDouble, tmp_path: Any,
                    monkeypatch: pytest.MonkeyPatch,
                    capsys: pytest.CaptureFixture[str], local: bool) -> None:
    from ovirt_imageio.client import _ovirt, _tool
    vdsm_id = tmp_path / "vdsm.id"
    vdsm_id.write_text((engine.model.host["hw_id"] if local
                        else str(uuid.uuid4())) + "\n")
    monkeypatch.setattr(_ovirt, "VDSM_ID", str(vdsm_id))
    tool = Tool("ours", engine, tmp_path)
    src = make_raw(str(tmp_path / "src.raw"))
    rc = _tool.main(["upload-disk", "--engine-url", engine.url,
                     "--username", USERNAME, "--password-file",
                     tool.password_file, "--cafile", engine.cafile, "-s",
                     "sd1", "-f", "raw", src])
    assert rc == 0, capsys.readouterr().err
    (transfer,) = engine.model.transfers.values()
    # This machine is the host only when its hardware id is an Up host
    # of the storage domain's data center.
    expected = engine.model.host["id"] if local else None
    assert transfer.spec["host_id"] == expected
    assert engine.called("GET", "/datacenters") == 1
    assert engine.called("GET", "/hosts") == 1


def test_without_sdk(engine: EngineDouble, tmp_path: Any) -> None:
    # A package that fails to import stands for a missing SDK.
    fake = tmp_path / "nosdk" / "ovirtsdk4"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no sdk here')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'nosdk'}:{TOP}")
    p = subprocess.run(
        [sys.executable, "-c", "import sys, ovirt_imageio.client; "
         "print('ovirtsdk4' in sys.modules)"],
        env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"
    tool = Tool("ours", engine, tmp_path)
    p = tool.run("download-disk", str(uuid.uuid4()), "out.qcow2",
                 env={"PYTHONPATH": env["PYTHONPATH"]})
    assert p.returncode == 1
    assert p.stderr.strip() == (
        "ovirt-img: error: This command needs the oVirt Python SDK: "
        "install ovirt-engine-sdk-python (pip install "
        "'ovirt-imageio[engine]')")
    assert engine.requests == []


def test_script(daemon: Daemon, tmp_path: Any) -> None:
    # scripts/test-engine: the double for use by hand, configured from
    # the daemon's conf dir only.
    proc = subprocess.Popen(
        [os.path.join(TOP, "scripts", "test-engine"), daemon.conf_dir],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) == {"engine_url", "cafile", "username",
                             "password_file", "storage_domain"}
        src = make_raw(str(tmp_path / "src.raw"))
        common = ["--engine-url", info["engine_url"], "--username",
                  info["username"], "--password-file", info["password_file"],
                  "--cafile", info["cafile"]]
        ovirt_img = [sys.executable, "-m", "ovirt_imageio.client"]
        env = dict(os.environ, PYTHONPATH=TOP)
        p = subprocess.run(
            [*ovirt_img, "upload-disk", *common, "-s",
             info["storage_domain"], "-o", "json", "--disk-id",
             disk_id := str(uuid.uuid4()), src],
            env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out = str(tmp_path / "out.raw")
        p = subprocess.run(
            [*ovirt_img, "download-disk", *common, "-f", "raw", disk_id,
             out], env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        compare(src, out)
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    # It removed its password file and storage on the way out.
    assert not os.path.exists(info["password_file"])


@pytest.mark.parametrize("tool_name", TOOLS)
def test_missing_image(engine: EngineDouble, tmp_path: Any,
                       tool_name: str) -> None:
    tool = Tool(tool_name, engine, tmp_path)
    p = tool.run("upload-disk", "-s", "sd1", str(tmp_path / "nosuch.raw"))
    # A usage error, found before logging in.
    assert p.returncode == 2
    assert "nosuch.raw" in p.stderr
    assert engine.requests == []


def test_signal_while_waiting_for_transfer(engine: EngineDouble,
                                           tmp_path: Any) -> None:
    engine.model.fail.add("stay_initializing")
    tool = Tool("ours", engine, tmp_path)
    src = make_raw(str(tmp_path / "src.raw"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ovirt_imageio.client", "upload-disk",
         "--engine-url", engine.url, "--username", USERNAME,
         "--password-file", tool.password_file, "--cafile", engine.cafile,
         "-s", "sd1", src],
        env=dict(os.environ, PYTHONPATH=TOP), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        assert engine.model.polled.wait(60)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + 15, err
    assert err.strip() == "ovirt-img: terminated by SIGTERM"
    # The waiting transfer was cancelled and took its disk.
    assert engine.called("POST", "/cancel") == 1
    assert engine.model.disks == {}


def test_transfer_timeout(engine: EngineDouble, tmp_path: Any,
                          monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    from ovirt_imageio.client import _ovirt, _tool
    monkeypatch.setattr(_ovirt, "TRANSFER_TIMEOUT", 0.3)
    engine.model.fail.add("stay_initializing")
    tool = Tool("ours", engine, tmp_path)
    rc = _tool.main(["download-disk", "--engine-url", engine.url,
                     "--username", USERNAME, "--password-file",
                     tool.password_file, "--cafile", engine.cafile,
                     engine.model.import_disk(
                         make_raw(str(tmp_path / "src.raw")), "raw").id,
                     str(tmp_path / "out.qcow2")])
    assert rc == 1
    assert "Timed out waiting for transfer" in capsys.readouterr().err
    assert engine.called("POST", "/cancel") == 1
