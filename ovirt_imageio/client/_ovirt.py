# SPDX-License-Identifier: GPL-2.0-or-later
"""
The oVirt engine side of ``upload-disk`` and ``download-disk``: disks,
hosts and image transfers through the oVirt Python SDK
(``ovirt-engine-sdk-python``, an optional dependency imported on first
use, so ``import ovirt_imageio.client`` works without it).

An image transfer moves through phases on the engine::

    INITIALIZING -> TRANSFERRING -> FINALIZING_SUCCESS -> FINISHED_SUCCESS
                         |      \\-> CANCELLED_* / FINALIZING_FAILURE
                         v                        -> FINISHED_FAILURE
                   PAUSED_SYSTEM / PAUSED_USER

Rules kept here, as upstream's client keeps them:
- Once a transfer exists it owns its disk: cancelling an upload transfer
  removes the disk, so a failed upload never leaves a half written disk.
- Any failure after a transfer was created ends it (cancel for uploads,
  finalize for downloads), so no transfer stays open on the engine.
- Waits are bounded: the new disk (``disk_timeout``, 120 s by default),
  the transfer becoming ready (60 s), finalizing (300 s). Old engines
  (< 4.4.7) remove a finalized transfer at once; then the disk's status
  tells the result.

Example::

    with Engine.connect(url, "admin@internal", password, cafile) as e:
        disk = e.find_disk(disk_id)
        transfer = e.create_transfer(disk, "download")
        ...
        e.finalize_transfer(transfer, disk)
"""

from __future__ import annotations

import importlib
import logging
import time
from types import ModuleType, TracebackType
from typing import Any, Callable, Iterator

log = logging.getLogger("client.ovirt")

ADD_DISK_TIMEOUT = 120
TRANSFER_TIMEOUT = 60
FINALIZE_TIMEOUT = 300

# Where an oVirt host keeps its hardware id (written by vdsm).
VDSM_ID = "/etc/vdsm/vdsm.id"

# Polling: engines move a transfer on within a second or two; start
# short so quick engines (and the tests' double) are not slowed down,
# and settle at upstream's one second.
_FIRST_POLL = 0.05
_MAX_POLL = 1.0


class EngineError(Exception):
    """The engine refused a request or a transfer failed."""


def sdk() -> ModuleType:
    """The ovirtsdk4 module, or EngineError saying how to get it."""
    try:
        return importlib.import_module("ovirtsdk4")
    except ImportError:
        raise EngineError(
            "This command needs the oVirt Python SDK: install "
            "ovirt-engine-sdk-python (pip install "
            "'ovirt-imageio[engine]')") from None


def _types() -> Any:
    return importlib.import_module("ovirtsdk4.types")


def _poll(timeout: float, sleep: Callable[[float], None] = time.sleep
          ) -> Iterator[None]:
    """Yield until timeout seconds passed, sleeping more each time."""
    deadline = time.monotonic() + timeout
    delay = _FIRST_POLL
    while True:
        yield
        if time.monotonic() >= deadline:
            return
        sleep(delay)
        delay = min(delay * 2, _MAX_POLL)


class Engine:
    """A connection to an engine's REST API (``<url>/ovirt-engine/api``)."""

    def __init__(self, connection: Any) -> None:
        self._con = connection
        self._sdk = sdk()
        self._types = _types()

    @classmethod
    def connect(cls, engine_url: str, username: str, password: str,
                cafile: str | None = None, secure: bool = True,
                debug: bool = False) -> Engine:
        """Log in to the engine at engine_url (its base URL)."""
        mod = sdk()
        con = mod.Connection(
            url=f"{engine_url.rstrip('/')}/ovirt-engine/api",
            username=username, password=password, ca_file=cafile,
            insecure=not secure, log=log, debug=debug)
        try:
            # The SDK logs in lazily; log in now so a wrong password is
            # reported as such, before anything else is attempted.
            con.authenticate()
        except mod.Error as e:
            con.close(logout=False)
            raise EngineError(
                f"Cannot log in to {engine_url} as {username}: "
                f"{_reason(e)}") from None
        return cls(con)

    def close(self) -> None:
        """Log out and release the connection."""
        try:
            self._con.close()
        except self._sdk.Error as e:
            # Logging out is courtesy; the work is done (or failed).
            log.warning("Cannot log out: %s", e)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # Services.

    def _system(self) -> Any:
        return self._con.system_service()

    def _disk_service(self, disk_id: str) -> Any:
        return self._system().disks_service().disk_service(disk_id)

    def _transfer_service(self, transfer_id: str) -> Any:
        return (self._system().image_transfers_service()
                .image_transfer_service(transfer_id))

    # Disks.

    def find_disk(self, disk_id: str) -> Any:
        """The disk with disk_id; EngineError if there is none."""
        try:
            return self._disk_service(disk_id).get()
        except self._sdk.NotFoundError:
            raise EngineError(f"Disk {disk_id} not found") from None

    def find_storage_domain_name(self, disk: Any) -> str:
        """Name of the storage domain holding disk."""
        sd_id = disk.storage_domains[0].id
        sd = (self._system().storage_domains_service()
              .storage_domain_service(sd_id).get())
        return str(sd.name)

    def add_disk(self, *, name: str, provisioned_size: int, sd_name: str,
                 fmt: str, sparse: bool, content_type: str,
                 description: str, initial_size: int | None = None,
                 disk_id: str | None = None, enable_backup: bool = False,
                 timeout: float = ADD_DISK_TIMEOUT) -> Any:
        """
        Create a disk on the storage domain sd_name and wait until it is
        ready (status OK). fmt is "raw" or "qcow2", content_type "data" or
        "iso".
        """
        t = self._types
        log.info("Adding disk name=%s size=%d sd=%s id=%s initial_size=%s "
                 "sparse=%s format=%s content=%s", name, provisioned_size,
                 sd_name, disk_id, initial_size, sparse, fmt, content_type)
        spec = t.Disk(
            id=disk_id, name=name, description=description,
            format=t.DiskFormat.COW if fmt == "qcow2" else t.DiskFormat.RAW,
            content_type=(t.DiskContentType.ISO if content_type == "iso"
                          else t.DiskContentType.DATA),
            provisioned_size=provisioned_size, initial_size=initial_size,
            sparse=sparse,
            backup=t.DiskBackup.INCREMENTAL if enable_backup else None,
            storage_domains=[t.StorageDomain(name=sd_name)])
        try:
            disk = self._system().disks_service().add(spec)
        except self._sdk.Error as e:
            raise EngineError(
                f"Cannot create disk on storage domain {sd_name}: "
                f"{_reason(e)}") from None
        service = self._disk_service(disk.id)
        for _ in _poll(timeout):
            disk = service.get()
            if disk.status == t.DiskStatus.OK:
                return disk
            if disk.status == t.DiskStatus.ILLEGAL:
                raise EngineError(f"Disk {disk.id} became ILLEGAL")
        raise EngineError(f"Timed out waiting for disk {disk.id}")

    def disk_snapshot(self, disk: Any, snapshot_id: str) -> Any:
        """The snapshot snapshot_id of disk's storage domain."""
        sd_id = disk.storage_domains[0].id
        service = (self._system().storage_domains_service()
                   .storage_domain_service(sd_id).disk_snapshots_service()
                   .snapshot_service(snapshot_id))
        try:
            return service.get()
        except self._sdk.NotFoundError:
            raise EngineError(
                f"Disk snapshot {snapshot_id} not found") from None

    # Hosts.

    def find_host(self, sd_name: str) -> Any | None:
        """
        This machine as a host for a transfer on storage domain sd_name:
        only if it is an oVirt host, Up, in the storage domain's data
        center (then the daemon's unix socket can be used). None lets the
        engine choose.
        """
        try:
            with open(VDSM_ID) as f:
                hw_id = f.readline().strip()
        except FileNotFoundError:
            log.debug("Not an oVirt host; the engine picks the host")
            return None
        except OSError as e:
            # Choosing the local host is an optimisation only.
            log.warning("Cannot read %s, the engine picks the host: %s",
                        VDSM_ID, e)
            return None
        dcs = self._system().data_centers_service().list(
            search=f"storage.name={sd_name}", case_sensitive=True)
        if not dcs:
            raise EngineError(
                f"Storage domain {sd_name} is not attached to a data "
                "center")
        dc = dcs[0]
        hosts = self._system().hosts_service().list(
            search=f"hw_id={hw_id} and datacenter={dc.name} and status=Up",
            case_sensitive=True)
        if not hosts:
            log.debug("Host %s is not Up in data center %s", hw_id, dc.name)
            return None
        log.debug("Using local host %s", hosts[0].id)
        return hosts[0]

    # Transfers.

    def create_transfer(self, image: Any, direction: str,
                        host: Any | None = None,
                        timeout: float | None = None) -> Any:
        """
        Create an image transfer of image (a disk or a disk snapshot) in
        direction "upload" or "download" and wait until it is
        TRANSFERRING, at most timeout seconds (TRANSFER_TIMEOUT). The
        transfer moves raw guest data (format RAW) and is cancelled by
        the engine if the client goes idle.
        """
        t = self._types
        spec = t.ImageTransfer(
            host=host,
            direction=(t.ImageTransferDirection.UPLOAD
                       if direction == "upload"
                       else t.ImageTransferDirection.DOWNLOAD),
            format=t.DiskFormat.RAW,
            timeout_policy=t.ImageTransferTimeoutPolicy.CANCEL)
        if isinstance(image, t.DiskSnapshot):
            spec.snapshot = t.DiskSnapshot(id=image.id)
        else:
            spec.disk = t.Disk(id=image.id)
        try:
            transfer = self._system().image_transfers_service().add(spec)
        except self._sdk.Error as e:
            raise EngineError(
                f"Cannot create {direction} transfer: {_reason(e)}"
            ) from None
        service = self._transfer_service(transfer.id)
        try:
            return self._wait_transferring(
                service, transfer.id,
                TRANSFER_TIMEOUT if timeout is None else timeout)
        except EngineError:
            raise
        except BaseException:
            # A signal, a lost connection: the new transfer owns the disk
            # and must not stay open.
            self._cancel_quietly(service)
            raise

    def _wait_transferring(self, service: Any, transfer_id: str,
                           timeout: float) -> Any:
        phases = self._types.ImageTransferPhase
        start = time.monotonic()
        for _ in _poll(timeout):
            try:
                transfer = service.get()
            except self._sdk.NotFoundError:
                raise EngineError(
                    f"Transfer {transfer_id} was removed") from None
            phase = transfer.phase
            if phase == phases.TRANSFERRING:
                log.info("Transfer %s ready in %.1f s", transfer_id,
                         time.monotonic() - start)
                return transfer
            if phase == phases.FINISHED_FAILURE:
                raise EngineError(f"Transfer {transfer_id} has failed")
            if phase != phases.INITIALIZING:
                self._cancel_quietly(service)
                what = ("was paused by the system"
                        if phase == phases.PAUSED_SYSTEM
                        else f"is in unexpected phase {_name(phase)}")
                raise EngineError(f"Transfer {transfer_id} {what}")
        self._cancel_quietly(service)
        raise EngineError(f"Timed out waiting for transfer {transfer_id}")

    def cancel_transfer(self, transfer: Any) -> None:
        """Cancel transfer; the engine removes an upload's disk."""
        log.info("Cancelling transfer %s", transfer.id)
        self._cancel_quietly(self._transfer_service(transfer.id))

    def _cancel_quietly(self, service: Any) -> None:
        # Cleanup while reporting another error: that error matters more.
        try:
            service.cancel()
        except self._sdk.Error as e:
            log.warning("Cannot cancel transfer: %s", e)

    def finalize_transfer(self, transfer: Any, disk: Any,
                          timeout: float = FINALIZE_TIMEOUT) -> None:
        """
        Finalize transfer and wait for FINISHED_SUCCESS; EngineError if
        the engine fails it (for an upload, the engine then removes the
        disk) or takes longer than timeout.
        """
        phases = self._types.ImageTransferPhase
        log.info("Finalizing transfer %s", transfer.id)
        service = self._transfer_service(transfer.id)
        try:
            service.finalize()
        except self._sdk.Error as e:
            raise EngineError(
                f"Cannot finalize transfer {transfer.id}: {_reason(e)}"
            ) from None
        start = time.monotonic()
        phase = None
        for _ in _poll(timeout):
            try:
                phase = service.get().phase
            except self._sdk.NotFoundError:
                self._check_disk_after_transfer(transfer, disk)
                return
            if phase == phases.FINISHED_SUCCESS:
                log.info("Transfer %s finalized in %.1f s", transfer.id,
                         time.monotonic() - start)
                return
            if phase == phases.FINISHED_FAILURE:
                raise EngineError(f"Transfer {transfer.id} failed")
        raise EngineError(
            f"Timed out waiting for transfer {transfer.id} to finalize, "
            f"transfer is {_name(phase)}")

    def _check_disk_after_transfer(self, transfer: Any, disk: Any) -> None:
        # Engines before 4.4.7 remove the transfer when it ends: the
        # disk's status is the only record of the result.
        try:
            status = self._disk_service(disk.id).get().status
        except self._sdk.NotFoundError:
            raise EngineError(
                f"Transfer {transfer.id} failed: disk {disk.id} was "
                "removed") from None
        if status != self._types.DiskStatus.OK:
            raise EngineError(
                f"Transfer {transfer.id} failed: disk {disk.id} is "
                f"{_name(status)}")


def _name(value: Any) -> str:
    return str(getattr(value, "name", value))


def _reason(e: BaseException) -> str:
    """The engine's own words (the fault detail) when there are some."""
    fault = getattr(e, "fault", None)
    if fault is not None and (fault.detail or fault.reason):
        return str(fault.detail or fault.reason).strip("[]")
    return " ".join(str(e).split())
