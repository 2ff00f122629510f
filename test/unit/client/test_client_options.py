# SPDX-License-Identifier: GPL-2.0-or-later
"""ovirt-img command line parsing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.client._options import parse_size, parser


@pytest.mark.parametrize("text,value", [
    ("0", 0),
    ("512", 512),
    ("64k", 64 * 1024),
    ("64K", 64 * 1024),
    ("4m", 4 * 1024**2),
    ("4MiB", 4 * 1024**2),
    ("4mb", 4 * 1024**2),
    ("1g", 1024**3),
    ("2T", 2 * 1024**4),
    (" 8m ", 8 * 1024**2),
])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "m", "-1", "1.5m", "4x", "4 m",
                                  "4mm", "0x10"])
def test_parse_size_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@given(st.integers(0, 2**40), st.sampled_from(["", "k", "m", "g", "t"]),
       st.sampled_from(["", "b", "ib"]), st.booleans())
def test_parse_size_property(n: int, unit: str, suffix: str,
                             upper: bool) -> None:
    text = f"{n}{unit}{suffix if unit else ''}"
    if upper:
        text = text.upper()
    scale = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit]
    assert parse_size(text) == n * scale


def test_defaults() -> None:
    args = parser().parse_args(["upload", "disk.qcow2", "https://h/i/x"])
    # The client picks it from the number of connections.
    assert args.buffer_size is None
    assert args.max_workers == 4
    assert args.secure is True
    assert args.backing_chain is True
    assert args.output == "text"
    args = parser().parse_args(["download", "https://h/i/x", "out"])
    assert args.format == "qcow2"
    assert not args.incremental


@pytest.mark.parametrize("argv", [
    ["upload", "f", "u", "--buffer-size", "32k"],
    ["upload", "f", "u", "--buffer-size", "64m"],
    ["upload", "f", "u", "--buffer-size", "lots"],
    ["upload", "f", "u", "--max-workers", "0"],
    ["upload", "f", "u", "--max-workers", "9"],
    ["download", "u", "f", "--format", "vmdk"],
    ["checksum", "f", "--block-size", "512k"],
    ["upload", "f"],
    ["frobnicate"],
])
def test_usage_errors(argv: list[str],
                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parser().parse_args(argv)
    assert e.value.code == 2
