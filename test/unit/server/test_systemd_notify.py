# SPDX-License-Identifier: GPL-2.0-or-later
"""
sd_notify without a notify socket: nothing is sent and the call says so.
The notify socket itself is tested in
test/integration/server/test_systemd.py.
"""

from __future__ import annotations

import pytest

from ovirt_imageio.server import systemd


@pytest.mark.parametrize("value", [None, ""])
def test_notify_without_socket(monkeypatch: pytest.MonkeyPatch,
                               value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert not systemd.notify("READY=1")

