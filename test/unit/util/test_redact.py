# SPDX-License-Identifier: GPL-2.0-or-later
"""util.redact: no ticket id reaches a log whole."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.util import redact

UUID = "8b3b9c2e-93bf-4d3e-a4c0-6b2f1d0e9a71"


@pytest.mark.parametrize("ticket_id, expected", [
    (UUID, "8b3b9c2e..."),
    ("0123456789abcdef", "01234567..."),
    # Shorter than 16: at most half.
    ("0123456789abcde", "0123456..."),
    ("secret", "sec..."),
    ("abcdefgh", "abcd..."),
    ("ab", "a..."),
    ("a", "..."),
    ("", "..."),
])
def test_short_id(ticket_id: str, expected: str) -> None:
    assert redact.short_id(ticket_id) == expected


@given(st.text())
def test_short_id_never_shows_an_id_whole(ticket_id: str) -> None:
    shown = redact.short_id(ticket_id).removesuffix("...")
    assert ticket_id.startswith(shown)
    assert len(shown) <= min(redact.PREFIX, len(ticket_id) // 2)


@pytest.mark.parametrize("path, expected", [
    ("/images/0123456789abcdef", "/images/01234567..."),
    ("/images/0123456789abcdef/extents", "/images/01234567.../extents"),
    ("/images/0123456789abcdef/checksum/algorithms",
     "/images/01234567.../checksum/algorithms"),
    ("/tickets/0123456789abcdef", "/tickets/01234567..."),
    ("/images/secret", "/images/sec..."),
    ("/images/", "/images/"),
    ("/tickets/", "/tickets/"),
    ("/info/", "/info/"),
    ("/metrics", "/metrics"),
    # Only a path that starts with a ticket path holds an id.
    ("/info/images/0123456789abcdef", "/info/images/0123456789abcdef"),
])
def test_path(path: str, expected: str) -> None:
    assert redact.path(path) == expected


@pytest.mark.parametrize("text, expected", [
    # Proxy ticket URLs.
    (f"https://host:54322/images/{UUID}",
     "https://host:54322/images/8b3b9c2e..."),
    (f"https://host:54322/images/{UUID}/extents",
     "https://host:54322/images/8b3b9c2e.../extents"),
    (f"https://host/images/{UUID}?flush=n",
     "https://host/images/8b3b9c2e...?flush=n"),
    # Other ticket URLs hold no ticket path.
    ("file:///var/tmp/disk.raw", "file:///var/tmp/disk.raw"),
    ("nbd:unix:/run/vdsm/nbd.sock:exportname=sda",
     "nbd:unix:/run/vdsm/nbd.sock:exportname=sda"),
    # Error messages quoting a request.
    (f"Invalid request target '/images/{UUID}'",
     "Invalid request target '/images/8b3b9c2e...'"),
    (f'Bad line "GET /tickets/{UUID} HTTP/1.1"',
     'Bad line "GET /tickets/8b3b9c2e... HTTP/1.1"'),
    (f"/images/{UUID} and /images/0123456789abcdef",
     "/images/8b3b9c2e... and /images/01234567..."),
    ("no ids here", "no ids here"),
])
def test_text(text: str, expected: str) -> None:
    assert redact.text(text) == expected
