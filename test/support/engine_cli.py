# SPDX-License-Identifier: GPL-2.0-or-later
"""
Run the engine test double in front of the daemon configured in CONF_DIR,
for trying ovirt-img upload-disk/download-disk (ours or upstream's) by
hand:

    make run &                        # the daemon of conf/dev
    scripts/test-engine conf/dev      # runs this module in .venv
    {"engine_url": "https://localhost:40123", "cafile": ".../ca.pem",
     "username": "admin@internal", "password_file": "...",
     "storage_domain": "sd1"}
    ./ovirt-img upload-disk --engine-url https://localhost:40123 \\
        --username admin@internal --password-file ... --cafile ... \\
        -s sd1 disk.qcow2

The control socket, the data port and the CA come from the daemon's
configuration (relative paths in it are relative to the current
directory, as for the daemon); an ephemeral data port (0) is asked of the
running daemon. The double listens on a free loopback port and prints one
JSON line, then serves until SIGINT or SIGTERM, when it removes its
tickets and its storage (unless --storage-dir was given).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import threading

from ovirt_imageio import admin
from ovirt_imageio.config import Config
from ovirt_imageio.net.unixhttp import UnixHTTPConnection

from .engine import USERNAME, EngineDouble


def daemon_port(cfg: Config) -> int:
    """The daemon's data port, from its running config if ephemeral."""
    if cfg.remote.port != 0:
        return int(cfg.remote.port)
    conn: http.client.HTTPConnection
    if cfg.control.transport == "tcp":
        conn = http.client.HTTPConnection("127.0.0.1", cfg.control.port)
    else:
        conn = UnixHTTPConnection(cfg.control.socket)
    try:
        conn.request("GET", "/config/")
        running = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return int(running["remote"]["port"])


def main() -> int:
    p = argparse.ArgumentParser(
        prog="test-engine",
        description="Run the engine test double in front of the daemon "
                    "configured in CONF_DIR.")
    p.add_argument("conf_dir", metavar="CONF_DIR")
    p.add_argument("--storage-dir",
                   help="keep the disks here (default: a temporary "
                        "directory, removed on exit)")
    p.add_argument("--storage-domain", default="sd1",
                   help="name of the storage domain (default sd1)")
    p.add_argument("--password", default="secret",
                   help="password of admin@internal (default secret)")
    args = p.parse_args()

    cfg = admin.load_config(args.conf_dir)
    scheme = "https" if cfg.tls.enable else "http"
    daemon_url = f"{scheme}://localhost:{daemon_port(cfg)}"
    work = tempfile.mkdtemp(prefix="test-engine-")
    storage = args.storage_dir or os.path.join(work, "storage")
    password_file = os.path.join(work, "password")
    with open(password_file, "w") as f:
        f.write(args.password + "\n")

    # Either signal stops the double cleanly (tickets removed, qemu-nbd
    # stopped). Handlers, not a blocked mask: children (qemu-nbd) would
    # inherit the mask and ignore SIGTERM.
    stop = threading.Event()
    for signo in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signo, lambda *_: stop.set())
    engine = EngineDouble(args.conf_dir, daemon_url, storage,
                          password=args.password,
                          sd_name=args.storage_domain)
    try:
        engine.start()
        if cfg.tls.enable and os.path.realpath(cfg.tls.ca_file) != \
                os.path.realpath(engine.cafile):
            print(f"warning: the daemon's CA {cfg.tls.ca_file} is not the "
                  f"double's {engine.cafile}: clients may not verify both",
                  file=sys.stderr)
        print(json.dumps({
            "engine_url": engine.url, "cafile": engine.cafile,
            "username": USERNAME, "password_file": password_file,
            "storage_domain": args.storage_domain,
        }), flush=True)
        stop.wait()
    finally:
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
