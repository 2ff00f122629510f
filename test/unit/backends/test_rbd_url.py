# SPDX-License-Identifier: GPL-2.0-or-later
"""parse_url of the rbd backend: every accepted form and the rejects."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.backends import local_paths, scheme
from ovirt_imageio.backends.rbd_url import RBDAddress, parse_url


@pytest.mark.parametrize("url,address", [
    ("rbd:pool/disk", RBDAddress("pool", "disk")),
    ("rbd:pool/ns/disk", RBDAddress("pool", "disk", namespace="ns")),
    ("rbd:pool/disk@snap", RBDAddress("pool", "disk", snapshot="snap")),
    ("rbd:pool/ns/disk@snap",
     RBDAddress("pool", "disk", namespace="ns", snapshot="snap")),
    ("rbd:pool/disk:conf=/etc/ceph/a.conf",
     RBDAddress("pool", "disk", conf="/etc/ceph/a.conf")),
    ("rbd:pool/disk:id=backup", RBDAddress("pool", "disk", user="backup")),
    ("rbd:pool/disk:id=backup:keyring=/k/ceph.client.backup.keyring",
     RBDAddress("pool", "disk", user="backup",
                keyring="/k/ceph.client.backup.keyring")),
    ("rbd:pool/disk@s2:from-snap=s1:id=u:conf=/c",
     RBDAddress("pool", "disk", snapshot="s2", from_snap="s1", user="u",
                conf="/c")),
    # Escapes, as qemu reads them.
    (r"rbd:pool/a\:b", RBDAddress("pool", "a:b")),
    (r"rbd:pool/a\@b@c\:d", RBDAddress("pool", "a@b", snapshot="c:d")),
    (r"rbd:pool/disk:conf=/x\:y", RBDAddress("pool", "disk", conf="/x:y")),
    (r"rbd:pool/a\\b", RBDAddress("pool", "a\\b")),
    (r"rbd:p\/q/disk", RBDAddress("p/q", "disk")),
    # "@" is only special in the image part; option values keep it.
    ("rbd:pool/disk:from-snap=a@b", RBDAddress("pool", "disk",
                                               from_snap="a@b")),
])
def test_parse(url: str, address: RBDAddress) -> None:
    assert parse_url(url) == address
    assert scheme(url) == "rbd"


@pytest.mark.parametrize("url,reason", [
    ("rbd:", "POOL/IMAGE"),
    ("rbd:disk", "POOL/IMAGE"),
    ("rbd:a/b/c/d", "POOL/IMAGE"),
    ("rbd:/disk", "empty"),
    ("rbd:pool/", "empty"),
    ("rbd:pool//disk", "empty"),
    ("rbd:pool/disk@", "empty snapshot"),
    ("rbd:pool/disk@a@b", "more than one"),
    ("rbd:pool/disk:key=c2VjcmV0", "unsupported option 'key'"),
    ("rbd:pool/disk:mon_host=10.0.0.1", "unsupported option 'mon_host'"),
    ("rbd:pool/disk:conf", "'conf' has no value"),
    ("rbd:pool/disk:id=", "'id' has no value"),
    ("rbd:pool/disk:id=a:id=b", "'id' repeated"),
    ("rbd:pool/disk\\", "trailing backslash"),
    ("rbd:pool/di\0sk", "NUL"),
    ("file:///pool/disk", "expecting rbd:"),
])
def test_reject(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match="Invalid RBD URL") as e:
        parse_url(url)
    assert reason in str(e.value)


def test_reject_never_echoes_values() -> None:
    with pytest.raises(ValueError) as e:
        parse_url("rbd:pool/disk:key=c2VjcmV0")
    assert "c2VjcmV0" not in str(e.value)


def test_spec() -> None:
    assert parse_url("rbd:p/d").spec == "p/d"
    assert parse_url("rbd:p/n/d@s:conf=/c").spec == "p/n/d@s"


def test_local_paths_are_the_conf_and_keyring() -> None:
    # [daemon] allowed_paths applies to the ceph.conf and the keyring a
    # ticket names.
    assert local_paths("rbd:p/d:conf=/etc/ceph/x.conf") == (
        "/etc/ceph/x.conf",)
    assert local_paths("rbd:p/d:keyring=/k/c.keyring:conf=/etc/c.conf") == (
        "/etc/c.conf", "/k/c.keyring")
    assert local_paths("rbd:p/d") == ()


def test_client() -> None:
    assert parse_url("rbd:p/d").client == "client.admin"
    assert parse_url("rbd:p/d:id=imageio").client == "client.imageio"


name = st.text(st.characters(blacklist_characters="\0",
                             blacklist_categories=["Cs"]), min_size=1)


def escape(text: str) -> str:
    return "".join("\\" + c if c in "\\:@/" else c for c in text)


@given(pool=name, image=name, snap=st.one_of(st.just(""), name))
def test_escaped_names_round_trip(pool: str, image: str, snap: str) -> None:
    url = f"rbd:{escape(pool)}/{escape(image)}"
    if snap:
        url += f"@{escape(snap)}"
    assert parse_url(url) == RBDAddress(pool, image, snapshot=snap)
