# SPDX-License-Identifier: GPL-2.0-or-later
"""ProgressBar drawing rules and formats."""

from __future__ import annotations

import io
import json
import threading

import pytest

from ovirt_imageio.client import ProgressBar
from ovirt_imageio.client._ui import humansize


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().replace("\r", "\n").splitlines()


@pytest.mark.parametrize("n,text", [
    (0, "0 bytes"),
    (1023, "1023 bytes"),
    (1024, "1.00 KiB"),
    (1536, "1.50 KiB"),
    (5 * 1024**2, "5.00 MiB"),
    (3 * 1024**4, "3.00 TiB"),
    (1024**7, "1024.00 EiB"),
])
def test_humansize(n: int, text: str) -> None:
    assert humansize(n) == text


def test_text_lines() -> None:
    out = io.StringIO()
    clock = Clock()
    pb = ProgressBar(phase="uploading", size=1000, output=out, now=clock,
                     width=60)
    clock.now = 2.0
    pb.update(500)
    pb.phase = "done"
    pb.close()
    text = out.getvalue()
    drawn = lines(out)
    assert drawn[0].startswith("[   0% ] 0 bytes, 0.00 s")
    assert drawn[1].startswith(
        "[  50% ] 500 bytes, 2.00 s, 250 bytes/s, eta 2 s | uploading")
    assert drawn[-1].startswith("[  50% ] 500 bytes, 2.00 s") \
        and drawn[-1].rstrip().endswith("| done")
    # Every draw but the last overwrites the line.
    assert text.count("\n") == 1 and text.endswith("\n")
    assert all(len(line) == 60 for line in drawn)


def test_unknown_size() -> None:
    out = io.StringIO()
    with ProgressBar(output=out) as pb:
        pb.update(10)
    assert lines(out)[0].startswith("[ ---- ] 0 bytes")


def test_redraw_only_on_percent_change() -> None:
    out = io.StringIO()
    pb = ProgressBar(size=1000, output=out, now=Clock())
    for _ in range(100):
        pb.update(1)
    # 0% initially, then 1%..10%: one draw per percent.
    assert len(lines(out)) == 11
    pb.size = 2000
    assert len(lines(out)) == 12


def test_close_is_final() -> None:
    out = io.StringIO()
    pb = ProgressBar(size=10, output=out)
    pb.close()
    pb.close()
    pb.update(10)
    assert out.getvalue().count("\n") == 1
    assert len(lines(out)) == 2


def test_error_phase() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError):
        with ProgressBar(phase="uploading", error_phase="upload failed",
                         output=out):
            raise RuntimeError
    assert lines(out)[-1].rstrip().endswith("| upload failed")


def test_json() -> None:
    out = io.StringIO()
    clock = Clock()
    with ProgressBar(phase="downloading", output=out, format="json",
                     now=clock) as pb:
        pb.size = 100
        clock.now = 1.5
        pb.update(100)
        pb.phase = "download completed"
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0] == {"transferred": 0, "elapsed": 0.0,
                          "description": "downloading"}
    assert records[-1] == {"transferred": 100, "elapsed": 1.5,
                           "description": "download completed", "size": 100}


def test_invalid_format() -> None:
    with pytest.raises(ValueError):
        ProgressBar(format="xml")  # type: ignore[arg-type]


def test_update_thread_safe() -> None:
    pb = ProgressBar(size=400_000, output=io.StringIO())

    def work() -> None:
        for _ in range(100_000):
            pb.update(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pb.transferred == 400_000
