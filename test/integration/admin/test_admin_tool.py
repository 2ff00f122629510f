# SPDX-License-Identifier: GPL-2.0-or-later
"""ovirt-imageioctl life cycle against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import pytest
from test_admin_client import control

from ovirt_imageio.admin import _tool

from support import TOP
from support.daemon_util import Daemon

__all__ = ["control"]

CTL = os.path.join(TOP, "ovirt-imageioctl")


def run(capsys: pytest.CaptureFixture[str], *argv: str
        ) -> tuple[int, str, str]:
    rc = _tool.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write_ticket(tmp_path: Any) -> tuple[str, str]:
    image = tmp_path / "disk.raw"
    image.write_bytes(bytes(8192))
    ticket_id = str(uuid.uuid4())
    path = tmp_path / "ticket.json"
    path.write_text(json.dumps({
        "uuid": ticket_id, "size": 8192, "url": f"file://{image}",
        "timeout": 300, "ops": ["read", "write"]}))
    return ticket_id, str(path)


def test_life_cycle(control: Daemon, tmp_path: Any,
                    capsys: pytest.CaptureFixture[str]) -> None:
    conf = ["-c", control.conf_dir]
    ticket_id, path = write_ticket(tmp_path)

    assert run(capsys, "add-ticket", *conf, path) == (0, "", "")

    rc, out, err = run(capsys, "show-ticket", *conf, ticket_id)
    assert (rc, err) == (0, "")
    status = json.loads(out)
    assert status["uuid"] == ticket_id
    assert status["timeout"] == 300
    # Indented for people.
    assert out.startswith("{\n    ")

    assert run(capsys, "mod-ticket", *conf, "--timeout", "0",
               ticket_id) == (0, "", "")
    rc, out, _ = run(capsys, "show-ticket", "--conf-dir", control.conf_dir,
                     ticket_id)
    assert json.loads(out)["expires"] < status["expires"]

    assert run(capsys, "del-ticket", *conf, ticket_id) == (0, "", "")
    rc, out, err = run(capsys, "show-ticket", *conf, ticket_id)
    assert rc == 1
    assert out == ""
    assert err.startswith("ovirt-imageioctl: Server error: 404 ")
    assert err.count("\n") == 1


def test_no_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys)
    assert rc == 0
    assert "add-ticket" in out


@pytest.mark.parametrize("argv", [
    ["mod-ticket", "x"],
    ["mod-ticket", "x", "--timeout", "-1"],
    ["mod-ticket", "x", "--timeout", "soon"],
    ["show-ticket"],
    ["bogus"],
])
def test_usage_errors(argv: list[str],
                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _tool.main(argv)
    assert e.value.code == 2


def test_bad_conf_dir(tmp_path: Any,
                      capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "show-ticket", "-c", str(tmp_path), "x")
    assert rc == 1
    assert err.startswith("ovirt-imageioctl: Could not find ")


@pytest.mark.parametrize("content,message", [
    ("{not json", "Invalid ticket JSON"),
    ("[1, 2]", "expecting a JSON object"),
    # Only the daemon can tell what is wrong with this one.
    ('{"uuid": "x", "size": "big"}', "Server error: 400"),
])
def test_add_bad_ticket(control: Daemon, tmp_path: Any, content: str,
                        message: str,
                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "ticket.json"
    path.write_text(content)
    rc, out, err = run(capsys, "add-ticket", "-c", control.conf_dir,
                       str(path))
    assert rc == 1
    assert message in err


def test_add_missing_file(tmp_path: Any,
                          capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(capsys, "add-ticket", "-c", str(tmp_path),
                       str(tmp_path / "missing.json"))
    assert rc == 1
    assert "Cannot read" in err


def test_executable(control: Daemon, tmp_path: Any) -> None:
    ticket_id, path = write_ticket(tmp_path)
    conf = ["-c", control.conf_dir]
    subprocess.run([CTL, "add-ticket", *conf, path], check=True)
    proc = subprocess.run([CTL, "show-ticket", *conf, ticket_id],
                          capture_output=True, check=True)
    assert json.loads(proc.stdout)["uuid"] == ticket_id
    subprocess.run([CTL, "del-ticket", *conf, ticket_id], check=True)
    proc = subprocess.run([CTL, "del-ticket", "-c", str(tmp_path), "x"],
                          capture_output=True)
    assert proc.returncode == 1
