# SPDX-License-Identifier: GPL-2.0-or-later
"""The engine commands' options: config sections, precedence, password."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from ovirt_imageio.client import _engine, _engine_options, _options

CONF = """\
[engine1]
engine_url = https://engine1.example.com
username = admin@internal
password = from-config
cafile = /etc/engine1.pem
secure = no
log_level = info
description = from config
disk_timeout = 30
retries = 5

[bad]
engine_url = https://bad.example.com
username = u
secure = maybe

[badretries]
engine_url = https://bad.example.com
username = u
retries = -1
"""


def parse(tmp_path: Any, *argv: str, prompt: str = "prompted"
          ) -> argparse.Namespace:
    conf_dir = tmp_path / "xdg"
    conf_dir.mkdir(exist_ok=True)
    (conf_dir / "ovirt-img.conf").write_text(CONF)
    args = _options.parser().parse_args(list(argv))
    _engine_options.resolve(args, prompt=lambda _: prompt,
                            env={"XDG_CONFIG_HOME": str(conf_dir)})
    return args


def download(*extra: str) -> list[str]:
    return ["download-disk", *extra, "6b1d1a7c-0a8f-4bd4-9e7b-2b8b4c2d4f10",
            "out.qcow2"]


def test_config_file_location() -> None:
    assert _engine_options.config_file(
        {"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == "/x/ovirt-img.conf"
    assert _engine_options.config_file(
        {"HOME": "/h"}) == "/h/.config/ovirt-img.conf"


def test_section_values(tmp_path: Any) -> None:
    args = parse(tmp_path, *download("-c", "engine1"))
    assert args.engine_url == "https://engine1.example.com"
    assert args.username == "admin@internal"
    assert args.password == "from-config"
    assert args.cafile == "/etc/engine1.pem"
    assert args.secure is False
    assert args.log_level == "info"
    assert args.description == "from config"
    assert args.disk_timeout == 30
    assert args.retries == 5


def test_command_line_wins(tmp_path: Any) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\nsecond line\n")
    args = parse(tmp_path, *download(
        "-c", "engine1", "--engine-url", "https://other", "--username",
        "me", "--cafile", "ca.pem", "--insecure", "--log-level", "error",
        "-d", "mine", "--password-file", str(pw), "--retries", "0"))
    assert (args.engine_url, args.username, args.cafile) == (
        "https://other", "me", "ca.pem")
    assert args.secure is False
    assert args.log_level == "error"
    assert args.description == "mine"
    assert args.password == "from-file"
    assert args.retries == 0


def test_defaults_and_prompt(tmp_path: Any) -> None:
    args = parse(tmp_path, *download("--engine-url", "https://e",
                                     "--username", "u"))
    assert args.secure is True
    assert args.description == _engine_options.DEFAULT_DESCRIPTION
    assert args.disk_timeout == 120
    assert args.password == "prompted"
    assert args.format == "qcow2"
    assert args.max_workers == 4
    assert args.retries == 3


@pytest.mark.parametrize("argv,words", [
    (download(), "--engine-url, --username"),
    (download("--engine-url", "https://e"), "--username"),
    (download("-c", "nosuch"), "No section 'nosuch'"),
    (download("-c", "bad"), "Invalid secure"),
    (download("-c", "badretries"), "Invalid retries"),
])
def test_errors(tmp_path: Any, argv: list[str], words: str) -> None:
    with pytest.raises(_engine_options.ConfigError) as e:
        parse(tmp_path, *argv)
    assert words in str(e.value)


def test_missing_config_file(tmp_path: Any) -> None:
    args = _options.parser().parse_args(download("-c", "engine1"))
    with pytest.raises(_engine_options.ConfigError) as e:
        _engine_options.resolve(args, env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert "Cannot read" in str(e.value)


@pytest.mark.parametrize("text,value", [
    ("yes", True), ("On", True), ("1", True), ("TRUE", True),
    ("no", False), ("off", False), ("0", False), ("False", False)])
def test_parse_bool(text: str, value: bool) -> None:
    assert _engine_options.parse_bool(text) is value


@pytest.mark.parametrize("argv", [
    ["upload-disk", "--engine-url", "e", "--username", "u", "f.raw"],
    ["upload-disk", "-s", "sd", "/nonexistent/f.raw"],
    ["upload-disk", "-s", "sd", "/"],
    ["upload-disk", "-s", "sd", "--disk-id", "not-a-uuid", "f.raw"],
    ["download-disk", "not-a-uuid", "out"],
    ["download-disk", "--buffer-size", "32m",
     "6b1d1a7c-0a8f-4bd4-9e7b-2b8b4c2d4f10", "out"],
    ["download-disk", "--max-workers", "9",
     "6b1d1a7c-0a8f-4bd4-9e7b-2b8b4c2d4f10", "out"],
    ["download-disk", "--retries", "-1",
     "6b1d1a7c-0a8f-4bd4-9e7b-2b8b4c2d4f10", "out"],
])
def test_invalid_command_line(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _options.parser().parse_args(argv)
    assert e.value.code == 2


def test_upload_options(tmp_path: Any) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"")
    args = _options.parser().parse_args(
        ["upload-disk", "-s", "sd1", "--preallocated", "-f", "raw",
         "--disk-id", "6B1D1A7C-0A8F-4BD4-9E7B-2B8B4C2D4F10", "--name", "n",
         "--buffer-size", "16m", str(image)])
    assert args.storage_domain == "sd1"
    assert args.sparse is False
    assert args.format == "raw"
    # Normalised, as the engine spells ids.
    assert args.disk_id == "6b1d1a7c-0a8f-4bd4-9e7b-2b8b4c2d4f10"
    assert args.name == "n"
    assert args.buffer_size == 16 * 1024**2
    assert args.filename == str(image)


def test_is_iso(tmp_path: Any) -> None:
    iso = tmp_path / "a.iso"
    iso.write_bytes(b"\0" * 0x8000 + b"\x01CD001\x01\x00" + b"\0" * 100)
    assert _engine.is_iso(str(iso))
    # Version 2 of the descriptor, or one byte off: not an ISO.
    iso.write_bytes(b"\0" * 0x8000 + b"\x01CD001\x02\x00")
    assert not _engine.is_iso(str(iso))
    iso.write_bytes(b"\0" * 0x8001 + b"\x01CD001\x01\x00")
    assert not _engine.is_iso(str(iso))
    short = tmp_path / "short"
    short.write_bytes(b"\0" * 100)
    assert not _engine.is_iso(str(short))
