# SPDX-License-Identifier: GPL-2.0-or-later
"""/info/: server version, used to test connectivity."""

from __future__ import annotations

from ... import __version__
from .. import cors
from ..message import Request, Response


class Info:
    def get(self, req: Request, resp: Response) -> None:
        cors.apply(req, resp)
        resp.send_json({"version": __version__})
