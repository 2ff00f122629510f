# SPDX-License-Identifier: GPL-2.0-or-later
"""
The [daemon] limits against hostile clients (header_timeout,
max_client_connections, max_buffer_memory) reject values that would
disable them, and their defaults.
"""

from __future__ import annotations

import pytest

from ovirt_imageio.config import Config, ConfigError, loads


@pytest.mark.parametrize("option", ["header_timeout",
                                    "max_client_connections",
                                    "max_buffer_memory"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_new_daemon_limits_validated(option: str, value: str) -> None:
    with pytest.raises(ConfigError) as e:
        loads(f"[tls]\nenable = false\n[daemon]\n{option} = {value}\n")
    assert option in str(e.value)


def test_new_daemon_options_defaults() -> None:
    d = Config().daemon
    assert (d.header_timeout, d.max_client_connections, d.allowed_paths,
            d.max_buffer_memory) == (60, 128, "", 128 * 1024**2)

