# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon: tickets, the IO pool, the routers and the services, wired from
a Config. ``Daemon.start()`` binds every socket (so privileged ports and
paths are bound before privileges are dropped), writes ephemeral ports
and random socket names back into the running config, calls its
``prepare`` hook (the privilege drop), and starts serving.
``Daemon.stop()`` stops every service from accepting first, then drains
them all against one deadline.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from typing import Any, Callable, Protocol

from .. import __version__
from ..config import Config
from ..httpd import metrics, services
from ..httpd.handlers import checksum, extents, images, info, profile
from ..httpd.handlers import tickets as tickets_handler
from ..httpd.handlers.metrics import MetricsHandler
from ..httpd.message import Request, Response
from ..httpd.router import Router
from ..native import blake2b, tlsio
from ..nbdd import buffers as nbd_buffers
from ..nbdd import connection as nbd_connection
from ..nbdd import services as nbd_services
from ..nbdd import slots as nbd_slots
from ..transfer import buffers, listen
from ..transfer.ledger import LedgerFiles
from ..transfer.service import DRAIN_TIMEOUT
from ..transfer.store import TicketStore
from ..util import blkhash
from . import tls

log = logging.getLogger("daemon")

# Hash-on-write and the checksum endpoint hash whole images with the
# default algorithm: libsodium's BLAKE2b (same digests, faster).
blkhash.use("blake2b", blake2b.block_hash)


class StartupError(Exception):
    """The daemon cannot start; the message names what and why."""


def make_run_dir(path: str) -> None:
    """
    Create the run directory if it is missing (mode 0755), as a
    ``--conf-dir`` of one's own expects; the privilege drop then hands it
    to the service user with what root bound in it.
    """
    if os.path.isdir(path):
        return
    try:
        os.makedirs(path, 0o755)
    except OSError as e:
        raise StartupError(
            f"Cannot create the run directory {path} ([daemon] run_dir): "
            f"{e.strerror or e}") from e
    # mkdir's mode is filtered by the umask.
    os.chmod(path, 0o755)
    log.info("Created run directory %s", path)


def _listen(service: str, kind: str, where: str,
            bind: Callable[[], socket.socket]) -> socket.socket:
    """Bind a service's socket, naming the service and address on error."""
    try:
        return bind()
    except OSError as e:
        raise StartupError(
            f"{service} cannot listen on {kind} {where}: "
            f"{e.strerror or e}") from e


class ConfigHandler:
    """GET /config/ on the control service: the running configuration."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def get(self, req: Request, resp: Response) -> None:
        resp.send_json(self._daemon.config.to_dict())


class _Service(Protocol):
    """What the daemon needs of a service, HTTP or NBD."""

    name: str

    @property
    def address(self) -> Any: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def request_drain(self) -> None: ...

    def drain(self, deadline: float) -> bool: ...


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.config = cfg
        # Durable written ranges of tickets survive a restart in the run
        # directory (see transfer/ledger.py).
        self.tickets = TicketStore(
            ledgers=LedgerFiles(cfg.daemon.run_dir),
            checkpoint=cfg.daemon.checkpoint_size)
        # Storage side of pipelined transfers: each busy connection uses
        # at most one worker at a time.
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, 4 * cfg.daemon.max_connections),
            thread_name_prefix="io")
        # Bounded: however many connections, the data path's memory is
        # at most this (transfer/buffers.py).
        self.buffers = buffers.BufferPool(
            limit=cfg.daemon.max_buffer_memory)
        # The NBD connections' idle arenas (nbdd/buffers.py, rule 6).
        self.arenas = nbd_buffers.Arenas()
        self.services: dict[str, _Service] = {}
        self._stopped = threading.Event()
        self.metrics = metrics.Metrics()
        self.metrics.watch_tickets(self.tickets)
        self.metrics.watch_buffers(self.buffers)

    def _image_routes(self, remote: bool) -> list[tuple[str, object]]:
        cfg = self.config
        routes: list[tuple[str, object]] = [
            (r"/images/(.*)/extents", extents.Extents(cfg, self.tickets)),
            (r"/images/(.*)/checksum/algorithms", checksum.Algorithms()),
            (r"/images/(.*)/checksum",
             checksum.Checksum(cfg, self.tickets, self.pool,
                               self.buffers)),
            (r"/images/(.*)", images.Images(cfg, self.tickets, self.pool,
                                          self.buffers)),
        ]
        if remote:
            routes.append((r"/info/", info.Info()))
        return routes

    def _control_routes(self) -> list[tuple[str, object]]:
        return [
            (r"/tickets/(.*)",
             tickets_handler.Tickets(self.config, self.tickets)),
            (r"/config/", ConfigHandler(self)),
            (r"/metrics", MetricsHandler(self.metrics)),
            (r"/profile/", profile.Profile(self.config)),
        ]

    def _service(self, key: str, name: str, sock: Any,
                 routes: list[tuple[str, object]],
                 ssl_ctx: Any = None) -> None:
        self.metrics.add_routes(name, [pattern for pattern, _ in routes])
        daemon_cfg = self.config.daemon
        self.services[key] = services.Service(
            name, sock, Router(routes), ssl_ctx, observer=self.metrics,
            max_connections=daemon_cfg.max_client_connections,
            header_timeout=daemon_cfg.header_timeout)

    def start(self, prepare: Callable[[Daemon], object] | None = None
              ) -> None:
        """
        Bind and start every service. ``prepare`` runs after binding and
        before serving (the privilege drop needs exactly that moment).
        """
        cfg = self.config
        log.info("Starting (pid=%s, version=%s)", os.getpid(), __version__)
        make_run_dir(cfg.daemon.run_dir)

        if cfg.local.enable:
            sock = _listen("local.service", "unix socket", cfg.local.socket,
                           lambda: listen.unix_socket(cfg.local.socket))
            name = sock.getsockname()
            if isinstance(name, bytes):
                name = name.decode("utf-8", "surrogateescape")
            cfg = cfg.replace("local", socket=name)
            self.config = cfg

        ssl_ctx = tls.server_context(cfg.tls) if cfg.tls.enable else None
        if ssl_ctx is not None:
            log.info("TLS fast path %s", tlsio.STATUS)
        remote_sock = _listen(
            "remote.service", "port", f"{cfg.remote.host}:{cfg.remote.port}",
            lambda: listen.tcp_socket(cfg.remote.host, cfg.remote.port))
        cfg = cfg.replace("remote", port=remote_sock.getsockname()[1])

        control_sock = None
        if cfg.control.enable:
            if cfg.control.transport == "tcp":
                control_sock = _listen(
                    "control.service", "port",
                    f"localhost:{cfg.control.port}",
                    lambda: listen.tcp_socket(
                        "localhost", cfg.control.port,
                        prefer_ipv4=cfg.control.prefer_ipv4))
                cfg = cfg.replace("control",
                                  port=control_sock.getsockname()[1])
            else:
                control_sock = _listen(
                    "control.service", "unix socket", cfg.control.socket,
                    lambda: listen.unix_socket(cfg.control.socket,
                                                 mode=0o660))
        self.config = cfg
        nbd_socks = self._bind_nbd()
        cfg = self.config

        # Routers are built after the config is final, so OPTIONS reports
        # the real unix socket name.
        self._service("remote", "remote.service", remote_sock,
                      self._image_routes(remote=True), ssl_ctx)
        if cfg.local.enable:
            self._service("local", "local.service", sock,
                          self._image_routes(False))
        if control_sock is not None:
            self._service("control", "control.service", control_sock,
                          self._control_routes())
        self._nbd_services(nbd_socks, ssl_ctx)
        if prepare is not None:
            prepare(self)
        for service in self.services.values():
            service.start()

    def _bind_nbd(self) -> dict[str, Any]:
        """Bind the NBD sockets ([nbd]), writing names back."""
        cfg = self.config
        if not cfg.nbd.enable:
            return {}
        socks: dict[str, Any] = {}
        path = cfg.nbd.socket or os.path.join(cfg.daemon.run_dir,
                                              "nbd.sock")
        # Anyone on the host may connect, as to the local HTTP service's
        # abstract socket: the ticket id, a secret, is the authorization.
        socks["nbd_local"] = _listen(
            "nbd.local.service", "unix socket", path,
            lambda: listen.unix_socket(path, mode=0o666))
        name = socks["nbd_local"].getsockname()
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        cfg = cfg.replace("nbd", socket=name)
        if cfg.nbd.port != -1:
            host, port = cfg.nbd.host, cfg.nbd.port
            socks["nbd_remote"] = _listen(
                "nbd.remote.service", "port", f"{host}:{port}",
                lambda: listen.tcp_socket(host, port))
            cfg = cfg.replace("nbd",
                              port=socks["nbd_remote"].getsockname()[1])
        self.config = cfg
        return socks

    def _nbd_services(self, socks: dict[str, Any], ssl_ctx: Any) -> None:
        daemon_cfg = self.config.daemon
        slots = nbd_slots.Slots()
        for key, sock in socks.items():
            remote = key == "nbd_remote"
            door = nbd_connection.Door(
                self.config, self.tickets, self.pool, self.buffers,
                ssl_context=ssl_ctx if remote else None,
                observer=self.metrics,
                handshake_timeout=daemon_cfg.header_timeout,
                slots=slots, arenas=self.arenas)
            name = "nbd.remote.service" if remote else "nbd.local.service"
            self.services[key] = nbd_services.Service(
                name, sock, door,
                max_connections=daemon_cfg.max_client_connections)

    def stop(self, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """
        Stop accepting on every service, let running requests finish for
        up to ``drain_timeout`` seconds in all, then close the rest.
        """
        for service in self.services.values():
            service.close()
        # Idle connections of every service end now, not after the busy
        # ones of the services drained before.
        for service in self.services.values():
            service.request_drain()
        deadline = time.monotonic() + drain_timeout
        for service in self.services.values():
            service.drain(deadline)
            log.info("%s stopped", service.name)
        self.services.clear()
        self.tickets.clear()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.buffers.close()
        self.arenas.close()
        log.info("Stopped")

    def status(self) -> dict[str, Any]:
        return {name: s.address for name, s in self.services.items()}
