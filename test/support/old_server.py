# SPDX-License-Identifier: GPL-2.0-or-later
"""
A daemon from the past on loopback: an HTTP server speaking only what old
imageio daemons did (GET and PUT, OPTIONS answered as it is told), for
tests of clients facing old or broken servers.
"""

from __future__ import annotations

import http.server
import threading
from typing import Any, Self


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """An HTTP/1.1 handler that logs nothing, with a one-call reply."""

    protocol_version = "HTTP/1.1"
    # Close after each reply without saying so, like a server timing out
    # an idle connection.
    close_after_reply = False

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: bytes = b"",
               headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.close_after_reply:
            self.close_connection = True


class LoopbackServer:
    """
    A threaded HTTP server on a loopback port serving ``handler``, for
    the ``with`` statement; ``url`` names its image at /images/x.
    """

    def __init__(self, handler: type[QuietHandler], name: str) -> None:
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                      handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}/images/x"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *args: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


class FakeServer(LoopbackServer):
    """
    A daemon from the past, serving one in-memory image at /images/x:
    OPTIONS answers with ``options_status`` and ``options_body``; GET and
    PUT work as they always did; anything else is 405. Requests are
    recorded as (method, path, headers) in ``requests``.
    """

    def __init__(self, size: int, options_status: int = 405,
                 options_body: bytes = b"",
                 close_after_response: bool = False) -> None:
        self.image = bytearray(size)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        server = self
        self.options_status = options_status
        self.options_body = options_body

        class Handler(QuietHandler):
            close_after_reply = close_after_response

            def _record(self) -> None:
                server.requests.append(
                    (self.command, self.path, dict(self.headers)))

            def do_OPTIONS(self) -> None:
                self._record()
                self._reply(server.options_status, server.options_body)

            def do_GET(self) -> None:
                self._record()
                rng = self.headers.get("Range")
                if rng is None:
                    self._reply(200, bytes(server.image))
                    return
                first, last = (int(n) for n in rng[6:].split("-"))
                last = min(last, len(server.image) - 1)
                self._reply(206, bytes(server.image[first:last + 1]), {
                    "Content-Range":
                        f"bytes {first}-{last}/{len(server.image)}"})

            def do_PUT(self) -> None:
                self._record()
                first = int(self.headers["Content-Range"][6:].split("-")[0])
                length = int(self.headers["Content-Length"])
                data = self.rfile.read(length)
                server.image[first:first + length] = data
                self._reply(200)

            def do_PATCH(self) -> None:
                self._record()
                self.rfile.read(int(self.headers["Content-Length"]))
                self._reply(405, b"Method not allowed\n")

        super().__init__(Handler, "fake-server")

    def methods(self) -> list[str]:
        return [method for method, _, _ in self.requests]
