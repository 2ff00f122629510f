# SPDX-License-Identifier: GPL-2.0-or-later
"""
The state of the engine test double: one data center with one host and
one file storage domain, disks made of volumes (files in a directory),
and image transfers that install real tickets on a real daemon.

Theory of operation (the part of oVirt's image transfer the clients
see):
- A new disk is LOCKED until the client looks at it once, then OK: the
  client must wait for it, as with a real engine.
- A transfer is INITIALIZING when created. The next look installs its
  ticket on the daemon (through the control socket, ``ovirt_imageio.admin``)
  and moves it to TRANSFERRING, or to PAUSED_SYSTEM when the double was
  told to fail that way.
- Finalize removes the ticket (and the qemu-nbd serving a qcow2 volume),
  checks an uploaded volume still has its format, then FINALIZING_SUCCESS
  and, at the next look, FINISHED_SUCCESS; or FINISHED_FAILURE (told to
  fail, or a bad volume), when an upload's disk is removed.
- Cancel removes the ticket, the transfer goes CANCELLED_USER then
  FINISHED_FAILURE, and an upload's disk is removed: the transfer owned it.

Failure modes, in ``Model.fail``: "pause" (transfers pause instead of
starting), "finalize" (finalizing fails), "host_url" (the host's
transfer URL does not answer, so clients must use the proxy URL),
"old_engine" (a finalized transfer vanishes at once, as before oVirt
4.4.7, so clients must look at the disk), "stay_initializing" (transfers
never start; ``Model.polled`` tells when a client waits for one).

All methods run under the caller's lock (the server holds one lock).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from ovirt_imageio import admin
from ovirt_imageio.tools import qemu_nbd

PHASES_DONE = ("finished_success", "finished_failure")


class NotFound(Exception):
    """No such entity (404 with a fault)."""


class BadRequest(Exception):
    """The engine refuses the request (400 with a fault)."""


@dataclass
class Volume:
    id: str
    path: str
    fmt: str  # "raw" or "qcow2", as qemu-img names them


@dataclass
class Disk:
    id: str
    name: str
    description: str | None
    fmt: str  # "raw" or "cow", as the engine names them
    sparse: bool
    content_type: str  # "data" or "iso"
    provisioned_size: int
    initial_size: int | None
    backup: str | None
    status: str = "locked"
    # Being created: the first look still sees it locked.
    creating: bool = False
    # Base first; the last one is the active layer.
    volumes: list[Volume] = field(default_factory=list)


@dataclass
class Transfer:
    id: str
    direction: str  # "upload" or "download"
    disk: Disk
    volume: Volume
    host_id: str
    phase: str = "initializing"
    ticket_id: str | None = None
    transfer_url: str | None = None
    proxy_url: str | None = None
    nbd: qemu_nbd.Server | None = None
    # What the client asked for, kept for the tests to check.
    spec: dict[str, Any] = field(default_factory=dict)


class Model:
    """Data center dc1, host host1 (Up), storage domain sd_name."""

    def __init__(self, daemon_conf_dir: str, daemon_url: str,
                 storage_dir: str, sd_name: str = "sd1",
                 proxy_url: str | None = None,
                 hw_id: str | None = None) -> None:
        self.daemon_cfg = admin.load_config(daemon_conf_dir)
        self.daemon_url = daemon_url.rstrip("/")
        self.proxy_base = (proxy_url or daemon_url).rstrip("/")
        self.storage_dir = storage_dir
        self.dc = {"id": str(uuid.uuid4()), "name": "dc1"}
        self.sd = {"id": str(uuid.uuid4()), "name": sd_name}
        self.host = {"id": str(uuid.uuid4()), "name": "host1",
                     "hw_id": hw_id or str(uuid.uuid4()), "status": "up"}
        self.disks: dict[str, Disk] = {}
        self.transfers: dict[str, Transfer] = {}
        self.fail: set[str] = set()
        # Set when a client polled an initializing transfer.
        self.polled = threading.Event()
        os.makedirs(storage_dir, exist_ok=True)

    # Disks.

    def get_disk(self, disk_id: str) -> Disk:
        disk = self.disks.get(disk_id)
        if disk is None:
            raise NotFound(f"Disk {disk_id} not found")
        if disk.creating:
            # Created "in the background": ready once somebody waits.
            disk.creating = False
            disk.status = "ok"
            return _locked_view(disk)
        return disk

    def add_disk(self, spec: dict[str, Any]) -> Disk:
        if spec.get("sd_name") != self.sd["name"]:
            raise NotFound(
                f"Entity not found: Storage domain: name="
                f"{spec.get('sd_name')}")
        size = spec.get("provisioned_size")
        if not isinstance(size, int) or size <= 0:
            raise BadRequest("provisioned_size is required")
        disk_id = spec.get("id") or str(uuid.uuid4())
        if disk_id in self.disks:
            raise BadRequest(f"Disk {disk_id} exists")
        fmt = spec.get("format") or "raw"
        disk = Disk(
            id=disk_id, name=spec.get("name") or disk_id,
            description=spec.get("description"), fmt=fmt,
            sparse=bool(spec.get("sparse", True)),
            content_type=spec.get("content_type") or "data",
            provisioned_size=size, initial_size=spec.get("initial_size"),
            backup=spec.get("backup"), creating=True)
        volume = self._new_volume(disk_id, "qcow2" if fmt == "cow"
                                  else "raw", size, disk.sparse)
        disk.volumes.append(volume)
        self.disks[disk_id] = disk
        return _locked_view(disk)

    def _new_volume(self, disk_id: str, fmt: str, size: int, sparse: bool,
                    backing: Volume | None = None) -> Volume:
        folder = os.path.join(self.storage_dir, disk_id)
        os.makedirs(folder, exist_ok=True)
        vol = Volume(str(uuid.uuid4()), "", fmt)
        vol.path = os.path.join(folder, vol.id)
        if fmt == "raw":
            with open(vol.path, "wb") as f:
                if sparse:
                    f.truncate(size)
                else:
                    os.posix_fallocate(f.fileno(), 0, size)
        else:
            cmd = ["qemu-img", "create", "-q", "-f", "qcow2"]
            if backing is not None:
                cmd += ["-b", backing.path, "-F", backing.fmt]
            subprocess.run([*cmd, vol.path, str(size)], check=True)
        return vol

    def import_disk(self, path: str, fmt: str, name: str = "imported",
                    sparse: bool = True) -> Disk:
        """A disk made of an existing image (moved into the storage)."""
        size = _virtual_size(path)
        disk = Disk(id=str(uuid.uuid4()), name=name, description=None,
                    fmt="cow" if fmt == "qcow2" else "raw", sparse=sparse,
                    content_type="data", provisioned_size=size,
                    initial_size=None, backup=None, status="ok")
        folder = os.path.join(self.storage_dir, disk.id)
        os.makedirs(folder)
        vol = Volume(str(uuid.uuid4()), "", fmt)
        vol.path = os.path.join(folder, vol.id)
        os.rename(path, vol.path)
        disk.volumes.append(vol)
        self.disks[disk.id] = disk
        return disk

    def snapshot(self, disk_id: str) -> Volume:
        """
        Take a snapshot: the active volume becomes the snapshot's (now
        read only) and a new qcow2 volume on top of it takes the writes.
        Returns the snapshot's volume; its id is the disk snapshot id.
        """
        disk = self.disks[disk_id]
        top = disk.volumes[-1]
        disk.volumes.append(self._new_volume(
            disk_id, "qcow2", disk.provisioned_size, True, backing=top))
        return top

    def disk_snapshot(self, snapshot_id: str) -> tuple[Disk, Volume]:
        for disk in self.disks.values():
            for vol in disk.volumes[:-1]:
                if vol.id == snapshot_id:
                    return disk, vol
        raise NotFound(f"Disk snapshot {snapshot_id} not found")

    def _remove_disk(self, disk: Disk) -> None:
        self.disks.pop(disk.id, None)
        for vol in disk.volumes:
            os.unlink(vol.path)
        os.rmdir(os.path.join(self.storage_dir, disk.id))

    # Transfers.

    def add_transfer(self, spec: dict[str, Any]) -> Transfer:
        direction = spec.get("direction") or "upload"
        disk: Disk | None
        if spec.get("snapshot_id"):
            disk, volume = self.disk_snapshot(spec["snapshot_id"])
            if direction != "download":
                raise BadRequest("Snapshots can only be downloaded")
        else:
            disk = self.disks.get(spec.get("disk_id") or "")
            if disk is None:
                raise NotFound(f"Disk {spec.get('disk_id')} not found")
            volume = disk.volumes[-1]
        if spec.get("format") != "raw":
            raise BadRequest("The double transfers guest data only "
                             "(format raw)")
        host_id = spec.get("host_id") or self.host["id"]
        if host_id != self.host["id"]:
            raise NotFound(f"Host {host_id} not found")
        busy = [t for t in self.transfers.values()
                if t.disk is disk and t.phase not in PHASES_DONE]
        if busy:
            raise BadRequest(f"Disk {disk.id} is locked by transfer "
                             f"{busy[0].id}")
        disk.status = "locked"
        t = Transfer(id=str(uuid.uuid4()), direction=direction, disk=disk,
                     volume=volume, host_id=host_id, spec=dict(spec))
        self.transfers[t.id] = t
        return t

    def get_transfer(self, transfer_id: str) -> Transfer:
        t = self.transfers.get(transfer_id)
        if t is None:
            raise NotFound(f"Image transfer {transfer_id} not found")
        if t.phase == "initializing":
            self.polled.set()
            if "stay_initializing" not in self.fail:
                self._start(t)
        elif t.phase == "finalizing_success":
            t.phase = "finished_success"
        elif t.phase in ("cancelled_user", "finalizing_failure"):
            t.phase = "finished_failure"
        return t

    def _start(self, t: Transfer) -> None:
        if "pause" in self.fail:
            t.phase = "paused_system"
            return
        if t.volume.fmt == "qcow2":
            # The client moves guest data; qemu-nbd turns it into qcow2,
            # as vdsm does on a host.
            sock = os.path.join(self.storage_dir, f"{t.id}.sock")
            t.nbd = qemu_nbd.Server(
                t.volume.path, "qcow2", sock,
                read_only=t.direction == "download")
            t.nbd.start()
            url = t.nbd.url
        else:
            url = f"file://{t.volume.path}"
        t.ticket_id = str(uuid.uuid4())
        ticket = {
            "uuid": t.ticket_id, "size": t.disk.provisioned_size,
            "url": url, "timeout": 300, "transfer_id": t.id,
            "ops": ["read", "write"] if t.direction == "upload"
            else ["read"],
            "sparse": t.disk.sparse, "dirty": False,
        }
        with admin.Client(self.daemon_cfg) as c:
            c.add_ticket(ticket)
        base = self.daemon_url
        if "host_url" in self.fail:
            # Nothing listens on port 1 of loopback.
            base = "https://localhost:1"
        t.transfer_url = f"{base}/images/{t.ticket_id}"
        t.proxy_url = f"{self.proxy_base}/images/{t.ticket_id}"
        t.phase = "transferring"

    def _end(self, t: Transfer) -> None:
        if t.ticket_id is not None:
            with admin.Client(self.daemon_cfg) as c:
                c.del_ticket(t.ticket_id)
            t.ticket_id = None
        if t.nbd is not None:
            t.nbd.stop()
            t.nbd = None

    def finalize(self, transfer_id: str) -> None:
        t = self._transferring(transfer_id)
        self._end(t)
        ok = "finalize" not in self.fail
        if ok and t.direction == "upload":
            # The engine checks the uploaded volume before using it.
            ok = _image_format(t.volume.path) == t.volume.fmt
        if ok:
            t.disk.status = "ok"
            t.phase = "finalizing_success"
        else:
            t.phase = "finalizing_failure"
            if t.direction == "upload":
                self._remove_disk(t.disk)
            else:
                t.disk.status = "ok"
        if "old_engine" in self.fail:
            del self.transfers[t.id]

    def cancel(self, transfer_id: str) -> None:
        t = self._transferring(transfer_id, paused_ok=True)
        self._end(t)
        t.phase = "cancelled_user"
        if t.direction == "upload":
            self._remove_disk(t.disk)
        else:
            t.disk.status = "ok"

    def _transferring(self, transfer_id: str, paused_ok: bool = False
                      ) -> Transfer:
        t = self.transfers.get(transfer_id)
        if t is None:
            raise NotFound(f"Image transfer {transfer_id} not found")
        allowed = ["transferring", "initializing"]
        if paused_ok:
            allowed += ["paused_system", "paused_user"]
        if t.phase not in allowed:
            raise BadRequest(f"Transfer {t.id} is {t.phase}")
        return t

    def open_transfers(self) -> list[str]:
        """Ids of transfers not finished (a client left them open)."""
        return [t.id for t in self.transfers.values()
                if t.phase not in PHASES_DONE + (
                    "finalizing_success", "finalizing_failure",
                    "cancelled_user")]

    def close(self) -> None:
        """Remove what open transfers hold (tickets, qemu-nbd)."""
        for t in self.transfers.values():
            self._end(t)


def _locked_view(disk: Disk) -> Disk:
    view = Disk(**{**disk.__dict__, "status": "locked"})
    return view


def _virtual_size(path: str) -> int:
    return int(_qemu_info(path)["virtual-size"])


def _image_format(path: str) -> str:
    return str(_qemu_info(path)["format"])


def _qemu_info(path: str) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output", "json", "-U",
                          path], check=True, capture_output=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result
