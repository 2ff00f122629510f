# SPDX-License-Identifier: GPL-2.0-or-later
"""
Generic HTTP range readers read a transfer URL directly: qemu's curl block
driver and nbdkit's curl plugin. They need HEAD with Content-Length,
"Accept-Ranges: bytes" and ranged GETs, and nbdkit asks for one byte past
the end on its last read, which the server clamps (RFC 7233 2.1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Callable

import pytest

from support.daemon_util import PKI, Daemon

MiB = 1024**2


def image_ticket(make_ticket: Callable[..., dict[str, Any]],
                 daemon: Daemon) -> tuple[dict[str, Any], bytes]:
    # Random data with a hole. The size is a multiple of 512 (qemu rounds
    # raw sizes up to whole sectors) but not of 4096 or of the readers'
    # request sizes, so their last request ends early.
    size = 3 * MiB + 7 * 512
    data = bytearray(size)
    data[:MiB] = os.urandom(MiB)
    data[2 * MiB:] = os.urandom(size - 2 * MiB)
    ticket = make_ticket(size=size, data=bytes(data), ops=["read"])
    daemon.add_ticket(ticket)
    return ticket, bytes(data)


def curl_json(daemon: Daemon, ticket: dict[str, Any]) -> str:
    return "json:" + json.dumps({
        "file.driver": "https",
        "file.url": f"https://localhost:{daemon.port}/images/"
                    f"{ticket['uuid']}",
        # libcurl-gnutls does not take a CA file through qemu options;
        # TLS is still used, the server identity is what is not checked.
        "file.sslverify": False,
    })


def test_qemu_img_convert(daemon: Daemon, tmp_path: Any,
                          make_ticket: Callable[..., dict[str, Any]]
                          ) -> None:
    ticket, data = image_ticket(make_ticket, daemon)
    out = tmp_path / "out.qcow2"
    p = subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2",
         curl_json(daemon, ticket), str(out)],
        capture_output=True, text=True, timeout=120)
    if p.returncode != 0 and "Unknown driver" in p.stderr:
        pytest.skip("qemu curl block driver missing (qemu-block-extra)")
    assert p.returncode == 0, p.stderr
    raw = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                    str(out), str(raw)], check=True)
    assert raw.read_bytes() == data


def test_qemu_img_info_size(daemon: Daemon,
                            make_ticket: Callable[..., dict[str, Any]]
                            ) -> None:
    ticket, data = image_ticket(make_ticket, daemon)
    p = subprocess.run(["qemu-img", "info", "--output", "json", "-f", "raw",
                        curl_json(daemon, ticket)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["virtual-size"] == len(data)


@pytest.mark.skipif(shutil.which("nbdkit") is None, reason="needs nbdkit")
def test_nbdkit_curl_plugin(daemon: Daemon, tmp_path: Any,
                            make_ticket: Callable[..., dict[str, Any]]
                            ) -> None:
    ticket, data = image_ticket(make_ticket, daemon)
    sock = tmp_path / "nbdkit.sock"
    out = tmp_path / "out.raw"
    url = f"https://localhost:{daemon.port}/images/{ticket['uuid']}"
    # nbdkit runs qemu-img as its captive process and exits with it, so
    # nothing is left running whatever happens.
    p = subprocess.run(
        ["nbdkit", "--exit-with-parent", "-U", str(sock), "--run",
         f"qemu-img convert -f raw -O raw $nbd {out}",
         "curl", f"url={url}", f"cainfo={PKI}/ca.pem"],
        capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == data
