# SPDX-License-Identifier: GPL-2.0-or-later
"""
The benchmark's target checks (bench/report.py) on made-up results: each
check reports ok or MISS on the right side of its threshold, and the
per-row transport ratios are listed with the ones under target marked.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from support import TOP  # noqa: E402

sys.path.insert(0, os.path.join(TOP, "bench"))

import nbd_door  # noqa: E402
import report  # noqa: E402

GiB = 1024**3


def transfer(impl: str, variant: str, op: str, fmt: str, mib_s: float,
             backend: str = "file", conns: int = 4,
             cpu: float = 0.2) -> dict[str, Any]:
    return {"impl": impl, "variant": variant, "op": op, "fmt": fmt,
            "backend": backend, "conns": conns,
            "name": f"{op} {fmt} {backend} {variant} x{conns}",
            "seconds": 2048 / mib_s, "mib_s": mib_s,
            "daemon_cpu_per_gib": cpu, "client_cpu_per_gib": cpu}


def data(results: list[dict[str, Any]],
         refs: dict[str, float] | None = None) -> dict[str, Any]:
    return {"results": results, "references": refs or {},
            "peak_rss": {}, "size": 2 * GiB}


def lines_about(out: list[str], text: str) -> list[str]:
    return [line for line in out if text in line]


@pytest.mark.parametrize("tls, unix, tls_row, unix_row", [
    (800, 1000, "tls 0.800", "unix 1.000"),
    (799, 999, "tls 0.799*", "unix 0.999*"),
    (1200, 1500, "tls 1.200", "unix 1.500"),
])
def test_transport_rows(tls: float, unix: float, tls_row: str,
                        unix_row: str) -> None:
    # Each row is listed with its ratios to TCP; a ratio under its target
    # is marked, never rounded up to the target.
    out = report.targets(data([
        transfer("ours", "tcp", "upload", "raw", 1000),
        transfer("ours", "tls", "upload", "raw", tls),
        transfer("ours", "unix", "upload", "raw", unix),
    ]))
    [row] = lines_about(out, "upload raw file x4 ")
    assert row.split()[4:] == f"{unix_row} {tls_row}".split()


@pytest.mark.parametrize("variant, upload, download, label, status, shown", [
    # Rows at 0.72 and 0.9 of TCP: one row is under, the mean (0.805)
    # holds.
    ("tls", 720, 900, "80% tcp", "[ok]",
     "0.80 (rows 0.72-0.90, 1 under 0.80)"),
    # Rows at 0.99 and 1.0: the mean is under too.
    ("unix", 990, 1000, "tcp", "[MISS]",
     "0.99 (rows 0.99-1.00, 1 under 1.00)"),
    # Both rows above.
    ("unix", 1010, 1200, "tcp", "[ok]",
     "1.10 (rows 1.01-1.20, 0 under 1.00)"),
])
def test_transport_geometric_mean(variant: str, upload: float,
                                  download: float, label: str, status: str,
                                  shown: str) -> None:
    out = report.targets(data([
        transfer("ours", "tcp", "upload", "raw", 1000),
        transfer("ours", variant, "upload", "raw", upload),
        transfer("ours", "tcp", "download", "raw", 1000),
        transfer("ours", variant, "download", "raw", download),
    ]))
    [mean] = lines_about(out, f"{variant} >= {label}, geometric mean of 2")
    assert mean.lstrip().startswith(status)
    assert shown in mean
    # Verdicts are only the path-wide ones; rows are listed, not judged.
    checks = [line for line in out if line.lstrip().startswith("[")]
    assert checks == [mean]


@pytest.mark.parametrize("ours, ok", [(1500, True), (1499, False)])
def test_upstream_ratio(ours: float, ok: bool) -> None:
    out = report.targets(data([
        transfer("ours", "tls", "download", "qcow2", ours),
        transfer("upstream", "tls", "download", "qcow2", 1000),
    ]))
    [line] = lines_about(out, ">= 1.5x upstream")
    assert line.lstrip().startswith("[ok]" if ok else "[MISS]")


@pytest.mark.parametrize("name, ref", [
    ("upload raw", "qemu-img convert raw"),
    ("upload qcow2", "qemu-img convert qcow2"),
    ("download raw", "qemu-img convert raw"),
    ("download qcow2", "qemu-img convert raw->qcow2"),
])
def test_qemu_img_reference(name: str, ref: str) -> None:
    op, fmt = name.split()
    refs = {"qemu-img convert raw": 1000.0, "qemu-img convert qcow2": 1000.0,
            "qemu-img convert raw->qcow2": 1000.0}
    # Only the matching reference is at 2000, so 85% of it is a miss.
    refs[ref] = 2000.0
    out = report.targets(data([transfer("ours", "tcp", op, fmt, 1000)],
                              refs))
    [line] = lines_about(out, ">= 85% qemu-img")
    assert line.lstrip().startswith("[MISS]")
    assert "50%" in line


def test_only_file_tickets_with_4_connections_are_targets() -> None:
    out = report.targets(data([
        transfer("ours", "tcp", "upload", "raw", 100, conns=1),
        transfer("upstream", "tcp", "upload", "raw", 1000, conns=1),
        transfer("ours", "tcp", "upload", "raw", 100, backend="nbd"),
        transfer("upstream", "tcp", "upload", "raw", 1000, backend="nbd"),
    ], {"qemu-img convert raw": 1000.0}))
    assert lines_about(out, ">= 1.5x upstream") == []
    assert lines_about(out, "qemu-img") == []


def test_daemon_cpu() -> None:
    # The verdict takes file tickets; all tickets are shown after it.
    out = report.targets(data([
        transfer("ours", "tcp", "upload", "raw", 1000, cpu=0.25),
        transfer("upstream", "tcp", "upload", "raw", 1000, cpu=0.5),
        transfer("ours", "tcp", "upload", "raw", 1000, cpu=0.45,
                 backend="nbd"),
        transfer("upstream", "tcp", "upload", "raw", 1000, cpu=0.5,
                 backend="nbd"),
    ]))
    [line] = lines_about(out, "daemon CPU/GiB on file tickets <= 0.6x")
    assert line.lstrip().startswith("[ok]")
    assert "0.25 vs 0.50 s/GiB (0.50x)" in line
    [line] = lines_about(out, "daemon CPU/GiB on all tickets")
    assert "0.35 vs 0.50 s/GiB (0.70x)" in line


def test_daemon_cpu_over_target() -> None:
    out = report.targets(data([
        transfer("ours", "tcp", "upload", "raw", 1000, cpu=0.31),
        transfer("upstream", "tcp", "upload", "raw", 1000, cpu=0.5),
    ]))
    [line] = lines_about(out, "daemon CPU/GiB on file tickets <= 0.6x")
    assert line.lstrip().startswith("[MISS]")


def test_sparse_rows_have_no_qemu_img_ratio() -> None:
    refs = {"qemu-img convert raw": 1000.0}
    assert report._ref_for("upload empty 1 TiB", refs) is None
    assert report._ref_for("upload raw file tcp x4", refs) == 1000.0


def test_rows_of_one_transport_are_not_compared() -> None:
    # With TCP as the first transport, the 1 TiB rows and the checksum
    # are TCP rows with no counterpart; they must not be compared with
    # themselves.
    sparse = transfer("ours", "tcp", "upload", "raw", 1000, backend="nbd")
    sparse["name"] = "upload empty 1 TiB"
    checksum = {"impl": "ours", "variant": "tcp", "name": "checksum",
                "seconds": 1.0, "mib_s": 2048.0}
    out = report.targets(data([sparse, checksum]))
    assert lines_about(out, ">= tcp") == []
    assert lines_about(out, "80% tcp") == []


def test_text_chart() -> None:
    # Bars share one scale (the largest figure, here the reference, is
    # the full width), and the reference is a column at its place.
    out = report.text_chart(data([
        transfer("ours", "tcp", "upload", "raw", 1000),
        transfer("upstream", "tcp", "upload", "raw", 600),
        transfer("ours", "tcp", "upload", "raw", 9, backend="nbd",
                 conns=1) | {"name": "upload empty 1 TiB"},
    ], refs={"qemu-img convert raw": 2000.0}), width=10).splitlines()
    assert out[0] == ("MiB/s of virtual size; # per 200 MiB/s; "
                      "| qemu-img convert raw (2000)")
    assert out[1:] == [
        f"{'upload raw file tcp x4':28} #####    |  1000",
        f"{'  upstream 2.5.1':28} ###      |   600",
    ]


def test_text_chart_without_transfers() -> None:
    assert report.text_chart(data([])) == ""


def rbd_data(upload: float, moved_pct: float = 1.0,
             start: float = 20.0, equal: bool = True) -> dict[str, Any]:
    """rbd.json rows: native uploads at upload times qemu-nbd's speed."""
    rows: list[dict[str, Any]] = [
        {"name": "rbd cluster start", "seconds": start},
        {"name": "rbd incremental 1% changed", "moved_pct": moved_pct,
         "equal": equal},
    ]
    for op in ("upload", "download"):
        for fmt in ("raw", "qcow2"):
            native = 300 * upload if op == "upload" else 400.0
            rows.append({"name": f"rbd {op} {fmt} native (4 conns)",
                         "mibs": native})
            rows.append({"name": f"rbd {op} {fmt} qemu-nbd (4 conns)",
                         "mibs": 300.0})
    return {"rows": rows}


@pytest.mark.parametrize("upload,ok", [(0.99, False), (1.0, True)])
def test_rbd_speed_targets(upload: float, ok: bool) -> None:
    checks = {t: (m, good) for t, _, m, good in
              report.rbd_targets(rbd_data(upload))}
    assert checks["rbd upload raw native / qemu-nbd rbd:"] == (
        f"{upload:.2f}x", ok)
    assert checks["rbd upload qcow2 native / qemu-nbd rbd:"][1] == ok
    assert checks["rbd download raw native / qemu-nbd rbd:"] == (
        "1.33x", True)
    line = next(line for line in report.rbd_table(
        rbd_data(upload)).splitlines() if "upload raw" in line)
    assert line.endswith("ok" if ok else "MISS")


@pytest.mark.parametrize("moved,start,equal,ok", [
    (1.5, 59.9, True, (True, True)),
    (1.51, 60.0, True, (False, False)),
    (1.0, 10.0, False, (False, True)),
])
def test_rbd_incremental_and_start_targets(
        moved: float, start: float, equal: bool,
        ok: tuple[bool, bool]) -> None:
    checks = {t: good for t, _, _, good in
              report.rbd_targets(rbd_data(1.0, moved, start, equal))}
    assert (checks["rbd incremental backup, 1% changed: bytes moved"],
            checks["rbd test cluster up"]) == ok


def test_rbd_partial_run_has_only_its_targets() -> None:
    partial = {"rows": [{"name": "rbd cluster start", "seconds": 5.0}]}
    assert [t for t, *_ in report.rbd_targets(partial)] == [
        "rbd test cluster up"]


@pytest.mark.parametrize("runs,ref,expected", [
    # The same ratio in every round: that ratio, however the rounds
    # drift.
    ([100, 50, 200], [100, 50, 200], 1.0),
    # A slow round of each, in different rounds: the ratio of the
    # medians (95 / 100) mixes them up, the rounds' ratios (1.0, 0.6,
    # 1.58) do not.
    ([100, 60, 95], [100, 100, 60], 1.0),
    ([90, 45, 180], [100, 50, 200], 0.9),
    ([110, 30, 120], [100, 100, 100], 1.1),
])
def test_nbd_targets_compare_rounds(runs: list[float], ref: list[float],
                                    expected: float) -> None:
    assert nbd_door.paired_ratio(runs, ref) == pytest.approx(expected)


def test_nbd_table_names_both_ratios() -> None:
    nbd = {"rows": {"door download unix": 90.0,
                    "qemu-nbd download unix": 100.0},
           "runs": {"door download unix": [90.0, 45.0, 180.0],
                    "qemu-nbd download unix": [100.0, 50.0, 200.0]},
           "daemon_cpu_per_gib": {}}
    text = nbd_door.table(nbd)
    assert ("[MISS] door download unix >= 1.0x qemu-nbd download unix: "
            "0.90x (0.90x)") in text
