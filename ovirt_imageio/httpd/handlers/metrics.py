# SPDX-License-Identifier: GPL-2.0-or-later
"""/metrics on the control service: the daemon's metrics for Prometheus."""

from __future__ import annotations

from ..message import Request, Response
from ..metrics import CONTENT_TYPE, Metrics


class MetricsHandler:
    """``GET /metrics``: the text format of ``metrics.CONTENT_TYPE``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def get(self, req: Request, resp: Response) -> None:
        resp.send(self._metrics.render().encode("utf-8"), CONTENT_TYPE)
