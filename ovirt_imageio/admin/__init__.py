# SPDX-License-Identifier: GPL-2.0-or-later
"""
Administration library: manage the daemon's tickets through its control
service. ``ovirt-imageioctl`` is a thin command line over it.

Example::

    from ovirt_imageio import admin

    cfg = admin.load_config(admin.DEFAULT_CONF_DIR)
    with admin.Client(cfg) as c:
        c.add_ticket(ticket)
        print(c.get_ticket(ticket["uuid"]))
"""

from __future__ import annotations

from ._client import (
                      DEFAULT_CONF_DIR,
                      AdminError,
                      Client,
                      ClientError,
                      Error,
                      ServerError,
                      load_config,
)

# Error is AdminError's older name, kept for upstream compatibility.
__all__ = ["AdminError", "Client", "ClientError", "DEFAULT_CONF_DIR", "Error",
           "ServerError", "load_config"]
