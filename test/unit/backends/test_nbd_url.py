# SPDX-License-Identifier: GPL-2.0-or-later
"""parse_url of the nbd backend: every accepted form and the rejects."""

from __future__ import annotations

import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends import scheme
from ovirt_imageio.backends.nbd_url import (
    DEFAULT_PORT,
    TCPAddress,
    UnixAddress,
    parse_url,
)


@pytest.mark.parametrize("url,address", [
    # qemu form, unix socket.
    ("nbd:unix:/run/vdsm/nbd/x.sock",
     UnixAddress("/run/vdsm/nbd/x.sock", "")),
    ("nbd:unix:/sock:exportname=", UnixAddress("/sock", "")),
    ("nbd:unix:/sock:exportname=sda", UnixAddress("/sock", "sda")),
    ("nbd:unix:/sock:exportname=a:b/c", UnixAddress("/sock", "a:b/c")),
    ("nbd:unix:relative/sock", UnixAddress("relative/sock", "")),
    # qemu form, TCP.
    ("nbd:localhost:10809", TCPAddress("localhost", 10809, "")),
    ("nbd:127.0.0.1:2000:exportname=sda",
     TCPAddress("127.0.0.1", 2000, "sda")),
    ("nbd:[::1]:2000:exportname=x", TCPAddress("::1", 2000, "x")),
    ("nbd:host:65535", TCPAddress("host", 65535, "")),
    # URI form, TCP.
    ("nbd://localhost", TCPAddress("localhost", DEFAULT_PORT, "")),
    ("nbd://localhost/", TCPAddress("localhost", DEFAULT_PORT, "")),
    ("nbd://localhost:2000/sda", TCPAddress("localhost", 2000, "sda")),
    ("nbd://[::1]:2000/sda", TCPAddress("::1", 2000, "sda")),
    ("nbd://host/a%20b%2Fc", TCPAddress("host", DEFAULT_PORT, "a b/c")),
    ("nbd://host//leading", TCPAddress("host", DEFAULT_PORT, "/leading")),
    # URI form, unix socket.
    ("nbd+unix:///?socket=/sock", UnixAddress("/sock", "")),
    ("nbd+unix:///sda?socket=/sock", UnixAddress("/sock", "sda")),
    ("nbd+unix:///sda?socket=/a%20b", UnixAddress("/a b", "sda")),
])
def test_parse_valid(url: str, address: object) -> None:
    assert parse_url(url) == address
    assert scheme(url) == "nbd"


@pytest.mark.parametrize("url", [
    "",
    "nbd:",
    "nbd:unix:",
    "nbd:unix::exportname=x",
    "nbd:localhost",
    "nbd:localhost:",
    "nbd::10809",
    "nbd:localhost:port",
    "nbd:localhost:0",
    "nbd:localhost:65536",
    "nbd:localhost:-1",
    "nbd://",
    "nbd:///sda",
    "nbd://host:port/sda",
    "nbd://host:99999/sda",
    "nbd://host/sda?socket=/sock",
    "nbd://host/sda#frag",
    "nbd+unix:///sda",
    "nbd+unix:///sda?socket=",
    "nbd+unix:///sda?socket=/a%00b",
    "nbd:unix:/a\0b",
    "nbd+unix:///sda?socket=/a&socket=/b",
    "nbd+unix:///sda?socket=/a&tls=on",
    "nbd+unix://host/sda?socket=/sock",
    "nbds://host/sda",
    "nbd+tcp://host/sda",
    "file:///path",
    "http://host/images/x",
])
def test_parse_invalid(url: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_url(url)
    assert repr(url) in str(e.value)


# Anything but the separators the forms rely on.
export_names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"],
                           blacklist_characters="\x00"),
    max_size=40)
paths = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"],
                           blacklist_characters="\x00:"),
    min_size=1, max_size=40)


@given(path=paths, export=export_names)
def test_qemu_unix_round_trip(path: str, export: str) -> None:
    url = f"nbd:unix:{path}:exportname={export}"
    assert parse_url(url) == UnixAddress(path, export)


@given(path=paths, export=export_names)
def test_uri_unix_round_trip(path: str, export: str) -> None:
    url = "nbd+unix:///{}?{}".format(
        urllib.parse.quote(export, safe=""),
        urllib.parse.urlencode({"socket": path}))
    assert parse_url(url) == UnixAddress(path, export)


@given(port=st.integers(1, 65535), export=export_names)
def test_uri_tcp_round_trip(port: int, export: str) -> None:
    url = f"nbd://example.com:{port}/{urllib.parse.quote(export, safe='')}"
    assert parse_url(url) == TCPAddress("example.com", port, export)


@given(port=st.integers(1, 65535), export=export_names)
def test_qemu_tcp_round_trip(port: int, export: str) -> None:
    url = f"nbd:example.com:{port}:exportname={export}"
    assert parse_url(url) == TCPAddress("example.com", port, export)


@given(text=st.text(max_size=60))
def test_parse_never_crashes(text: str) -> None:
    # Any string parses or raises ValueError, nothing else.
    try:
        parse_url("nbd:" + text)
    except ValueError:
        pass
