# SPDX-License-Identifier: GPL-2.0-or-later
"""
cephx through the real daemon and the client library: the test cluster
requires it, and these tests run tickets as ``client.imageio``, whose
caps allow RBD images of the test pool only (``support.ceph.USER``), the
way a host's daemon runs.

A ticket names its Ceph identity the way qemu does, ``id=`` (the key
then comes from the keyring the ceph.conf names) and optionally
``keyring=``. A wrong key, a missing keyring and caps without the image's
pool each fail the first request at once with the status and a message
naming the client and the problem; no key ever appears in an answer or
in a log, and the daemon goes on serving other tickets.
"""

from __future__ import annotations

import glob
import re
import shutil
import time
from typing import Any, Callable, Iterator

import pytest

from ovirt_imageio import client
from ovirt_imageio.backends.base import RemoteError
from ovirt_imageio.tools import qemu_img

from support import ceph
from support.daemon_util import Daemon, running
from support.rbd_util import (
    CA,
    RBD_CONF,
    SIZE,
    add_ticket,
    export,
    make_image,
    qemu_io,
    wrong_key,
)

Image = Callable[..., str]

# librados does not retry a refused or missing key: the failures come at
# once. The bound is for a loaded machine, below the connect timeout.
REFUSED_IN = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running(tmp_path_factory.mktemp("rbd-cephx"),
                 extra_conf=RBD_CONF) as d:
        yield d


def private_keyring(cluster: ceph.Cluster, tmp_path: Any) -> str:
    """client.imageio's keyring copied out of the cluster's folder."""
    path = tmp_path / "keys" / f"ceph.client.{ceph.USER}.keyring"
    path.parent.mkdir()
    shutil.copy(cluster.keyring(ceph.USER), path)
    return str(path)


def keys(*keyrings: str) -> list[str]:
    """The secrets in keyring files."""
    found = []
    for path in keyrings:
        with open(path) as f:
            found += re.findall(r"key = (\S+)", f.read())
    assert found
    return found


def ceph_logs(cluster: ceph.Cluster) -> str:
    """The cluster's logs: its daemons' and its clients' (librados)."""
    text = ""
    for path in glob.glob(f"{cluster.root}/log/*"):
        with open(path, errors="replace") as f:
            text += f.read()
    return text


@pytest.mark.parametrize("keyring", ["conf", "url"])
def test_round_trip_as_restricted_client(
        server: Daemon, ceph_cluster: ceph.Cluster, rbd_image: Image,
        tmp_path: Any, keyring: str) -> None:
    # The key from the keyring the ceph.conf names for client.imageio, or
    # from the URL's keyring= option.
    path = (private_keyring(ceph_cluster, tmp_path) if keyring == "url"
            else None)
    name = rbd_image(SIZE)
    rbd_url = ceph_cluster.url(name, user=ceph.USER, keyring=path)
    src = make_image(str(tmp_path / "src.qcow2"), "qcow2")
    client.upload(src, add_ticket(server, rbd_url, sparse=True), CA,
                  verify=True)
    assert qemu_img.compare(src, export(ceph_cluster, name,
                                        str(tmp_path / "exported.raw")))

    qemu_io(ceph_cluster.url(name), "raw", "write -P 0x44 9M 1M")
    out = str(tmp_path / "out.qcow2")
    client.download(add_ticket(server, rbd_url, ops=("read",)), out, CA,
                    verify=True)
    expected = export(ceph_cluster, name, str(tmp_path / "expected.raw"))
    assert qemu_img.compare(expected, out)


# The status and message of each refusal ({spec}: the image's name).
REFUSALS = {
    "wrong-key": (
        403, "Ceph cluster refused client.imageio for {spec}: "
             "authentication failed (wrong key or unknown client)"),
    "missing-keyring": (
        500, "No key for Ceph client.imageio to connect for {spec}: "
             "no keyring found with its name"),
    "caps-of-another-pool": (
        403, "{spec}: Operation not permitted for Ceph client.other-pool "
             "(see its caps)"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_refused(server: Daemon, ceph_cluster: ceph.Cluster,
                 rbd_image: Image, tmp_path: Any, case: str) -> None:
    name = rbd_image(SIZE)
    secrets = keys(ceph_cluster.keyring("admin"),
                   ceph_cluster.keyring(ceph.USER))
    if case == "wrong-key":
        keyring, secret = wrong_key(tmp_path)
        secrets.append(secret)
        url = ceph_cluster.url(name, user=ceph.USER, keyring=keyring)
    elif case == "missing-keyring":
        url = ceph_cluster.url(
            name, user=ceph.USER,
            keyring=str(tmp_path / "private" / "ceph.client.imageio.keyring"))
    else:
        secrets += keys(ceph_cluster.add_user("other-pool", "other"))
        url = ceph_cluster.url(name, user="other-pool")
    status, message = REFUSALS[case]
    message = message.format(spec=f"rbd/{name}")

    # The client fails on its first request, with the daemon's answer.
    out = tmp_path / "out.raw"
    start = time.monotonic()
    with pytest.raises(RemoteError) as e:
        client.download(add_ticket(server, url, ops=("read",)), str(out),
                        CA, fmt="raw")
    assert time.monotonic() - start < REFUSED_IN
    assert e.value.status == status
    assert e.value.message == message
    assert not out.exists()
    # The daemon's log has the reason, with the image's name.
    log = server.log()
    assert message in log
    # The local paths the URL names stay out of the answer.
    assert "private" not in e.value.message
    for secret in secrets:
        assert secret not in e.value.message
        assert secret not in log
        assert secret not in ceph_logs(ceph_cluster)

    # The daemon goes on serving other tickets of the same image.
    src = make_image(str(tmp_path / "src.raw"), "raw")
    client.upload(src, add_ticket(server, ceph_cluster.url(
        name, user=ceph.USER), sparse=True), CA)
    assert qemu_img.compare(src, export(ceph_cluster, name,
                                        str(tmp_path / "exported.raw")))
