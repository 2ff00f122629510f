# SPDX-License-Identifier: GPL-2.0-or-later

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ovirt_imageio.transfer import ticketspec
from ovirt_imageio.transfer.errors import InvalidTicket
from ovirt_imageio.transfer.ticketspec import TicketSpec

UUID = "2d5f4bf0-3e63-4bd5-9a4c-5f1f39c1e6a4"


def minimal(**changes: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "uuid": UUID,
        "size": 1073741824,
        "ops": ["read"],
        "timeout": 300,
        "url": "file:///var/tmp/disk.img",
    }
    d.update(changes)
    return d


def without(key: str) -> dict[str, Any]:
    d = minimal()
    del d[key]
    return d


def test_minimal_defaults() -> None:
    spec = ticketspec.parse(minimal())
    assert spec == TicketSpec(
        uuid=UUID,
        size=1073741824,
        ops=("read",),
        timeout=300,
        url="file:///var/tmp/disk.img",
        inactivity_timeout=60,
        transfer_id="(ticket/2d5f4bf0-3e63-4bd5)",
        filename=None,
        sparse=False,
        dirty=False,
    )


def test_all_fields() -> None:
    spec = ticketspec.parse(minimal(
        ops=["read", "write"],
        url="nbd:unix:/run/vdsm/nbd/x.sock",
        inactivity_timeout=3600,
        transfer_id="transfer-1",
        filename="disk.qcow2",
        sparse=True,
        dirty=True,
        unknown_key={"ignored": True},
    ))
    assert spec.ops == ("read", "write")
    assert spec.url == "nbd:unix:/run/vdsm/nbd/x.sock"
    assert spec.scheme == "nbd"
    assert spec.inactivity_timeout == 3600
    assert spec.transfer_id == "transfer-1"
    assert spec.filename == "disk.qcow2"
    assert spec.sparse is True
    assert spec.dirty is True


def test_default_inactivity_timeout_from_config() -> None:
    spec = ticketspec.parse(minimal(), default_inactivity_timeout=120)
    assert spec.inactivity_timeout == 120
    spec = ticketspec.parse(minimal(inactivity_timeout=5),
                            default_inactivity_timeout=120)
    assert spec.inactivity_timeout == 5


@pytest.mark.parametrize("uuid,transfer_id", [
    # Half of a short id at most: it is logged and must not be whole.
    ("abcd", "(ticket/ab)"),
    ("abc", "(ticket/a)"),
    ("a", "(ticket/)"),
    # Like upstream for real uuids.
    ("8b3b9c2e-93bf-4d3e-a4c0-6b2f1d0e9a71", "(ticket/8b3b9c2e-93bf-4d3e)"),
])
def test_short_uuid_transfer_id(uuid: str, transfer_id: str) -> None:
    spec = ticketspec.parse(minimal(uuid=uuid))
    assert spec.transfer_id == transfer_id


def test_bool_accepted_as_int() -> None:
    # Like upstream (isinstance check); stored as a real int.
    spec = ticketspec.parse(minimal(size=True, timeout=False))
    assert spec.size == 1 and type(spec.size) is int
    assert spec.timeout == 0 and type(spec.timeout) is int


def test_ops_contents_not_validated() -> None:
    spec = ticketspec.parse(minimal(ops=["fly", "read"]))
    assert spec.ops == ("fly", "read")
    assert ticketspec.parse(minimal(ops=[])).ops == ()


@pytest.mark.parametrize("url", [
    "file:///var/tmp/disk.img",
    "FILE:///var/tmp/disk.img",
    "nbd:unix:/run/nbd.sock",
    "nbd:unix:/run/nbd.sock:exportname=sda",
    "nbd:localhost:10809",
    "nbd:localhost:10809:exportname=sda",
    "nbd://localhost:10809/sda",
    "http://localhost:54322/images/abc",
    "https://host.example.com:54322/images/abc",
    "rbd:pool/disk",
    "rbd:pool/disk@snap:conf=/etc/ceph/ceph.conf:id=backup",
])
def test_valid_urls(url: str) -> None:
    assert ticketspec.parse(minimal(url=url)).url == url


@pytest.mark.parametrize("url, message", [
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("/var/tmp/disk.img", "unsupported scheme ''"),
    ("", "unsupported scheme ''"),
    ("localhost:10809", "unsupported scheme 'localhost'"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("rbd:disk", "Invalid RBD URL"),
    ("rbd:pool/disk:key=c2VjcmV0", "unsupported option 'key'"),
])
def test_invalid_urls(url: str, message: str) -> None:
    with pytest.raises(InvalidTicket) as e:
        ticketspec.parse(minimal(url=url))
    assert e.value.message.startswith(
        "Invalid ticket: Invalid value for 'url': ")
    assert message in e.value.message


def test_invalid_rbd_url_hides_option_values() -> None:
    with pytest.raises(InvalidTicket) as e:
        ticketspec.parse(minimal(url="rbd:pool/disk:key=c2VjcmV0"))
    assert "c2VjcmV0" not in e.value.message


@pytest.mark.parametrize("url, ops, dirty, message", [
    ("rbd:pool/disk", ["read"], True, "'dirty' needs a from-snap"),
    ("rbd:pool/disk@s2", ["read"], True, "'dirty' needs a from-snap"),
    ("rbd:pool/disk@s", ["read", "write"], False, "snapshots are read-only"),
])
def test_invalid_rbd_tickets(url: str, ops: list[str], dirty: bool,
                             message: str) -> None:
    with pytest.raises(InvalidTicket, match=message):
        ticketspec.parse(minimal(url=url, ops=ops, dirty=dirty))


@pytest.mark.parametrize("url, ops", [
    ("rbd:pool/disk:from-snap=s1", ["read", "write"]),
    ("rbd:pool/disk@s2:from-snap=s1", ["read"]),
])
def test_rbd_dirty_tickets(url: str, ops: list[str]) -> None:
    assert ticketspec.parse(minimal(url=url, ops=ops, dirty=True)).dirty


@pytest.mark.parametrize("key", ["uuid", "size", "ops", "timeout", "url"])
def test_missing_required(key: str) -> None:
    with pytest.raises(InvalidTicket) as e:
        ticketspec.parse(without(key))
    assert e.value.message == (
        f"Invalid ticket: Required ticket parameter is missing: '{key}'")


@pytest.mark.parametrize("key, value, message", [
    ("uuid", 42, "Invalid value for 'uuid': 42 (expected str)"),
    ("uuid", None, "Invalid value for 'uuid': None (expected str)"),
    ("size", "x", "Invalid value for 'size': 'x' (expected int)"),
    ("size", 1.5, "Invalid value for 'size': 1.5 (expected int)"),
    ("size", -1, "Invalid value for 'size': -1 (expected non-negative int)"),
    ("ops", "read", "Invalid value for 'ops': 'read' (expected list)"),
    ("ops", {"read": 1},
     "Invalid value for 'ops': {'read': 1} (expected list)"),
    ("ops", ["read", 1],
     "Invalid value for 'ops': ['read', 1] (expected list of str)"),
    ("timeout", "300", "Invalid value for 'timeout': '300' (expected int)"),
    ("timeout", -5,
     "Invalid value for 'timeout': -5 (expected non-negative int)"),
    ("url", 1, "Invalid value for 'url': 1 (expected str)"),
    ("inactivity_timeout", "60",
     "Invalid value for 'inactivity_timeout': '60' (expected int)"),
    ("inactivity_timeout", -1,
     "Invalid value for 'inactivity_timeout': -1 "
     "(expected non-negative int)"),
    ("transfer_id", 7, "Invalid value for 'transfer_id': 7 (expected str)"),
    ("filename", None,
     "Invalid value for 'filename': None (expected str)"),
    ("sparse", 1, "Invalid value for 'sparse': 1 (expected bool)"),
    ("sparse", "true", "Invalid value for 'sparse': 'true' (expected bool)"),
    ("dirty", None, "Invalid value for 'dirty': None (expected bool)"),
    ("rate_limit", -1, "Invalid value for 'rate_limit': -1 (expected "
     "non-negative int, bytes per second)"),
    ("rate_limit", True, "Invalid value for 'rate_limit': True (expected "
     "non-negative int, bytes per second)"),
    ("rate_limit", 1.5, "Invalid value for 'rate_limit': 1.5 (expected "
     "non-negative int, bytes per second)"),
    ("rate_limit", "fast", "Invalid value for 'rate_limit': 'fast' "
     "(expected non-negative int, bytes per second)"),
    ("rate_limit", 2**50 + 1, "Invalid value for 'rate_limit': "
     "1125899906842625 (expected at most 1125899906842624 bytes per "
     "second)"),
    ("rate_limit", 10**400, "Invalid value for 'rate_limit': "
     "100000000000000000...0000000000000000000 (expected at most "
     "1125899906842624 bytes per second)"),
    ("checksum", "sha1", "Invalid value for 'checksum': 'sha1' (expected "
     "dict)"),
    ("checksum", {"block_size": "4"}, "Invalid value for 'checksum': "
     "{'block_size': '4'} (expected {\"algorithm\": str, \"block_size\": "
     "int})"),
    ("checksum", {"algorithm": "nope"}, "Invalid value for 'checksum': "
     "Unsupported algorithm 'nope'"),
    ("checksum", {"block_size": 4096}, "Invalid value for 'checksum': "
     "Invalid block_size 4096"),
])
def test_invalid_value(key: str, value: object, message: str) -> None:
    with pytest.raises(InvalidTicket) as e:
        ticketspec.parse(minimal(**{key: value}))
    assert e.value.message.startswith("Invalid ticket: " + message)


@pytest.mark.parametrize("fields, rate, checksum", [
    ({}, 0, None),
    ({"rate_limit": 0}, 0, None),
    ({"rate_limit": 128 * 1024**2}, 128 * 1024**2, None),
    ({"checksum": {}}, 0, ("blake2b", 4 * 1024**2)),
    ({"checksum": {"algorithm": "sha256", "block_size": 1024**2}}, 0,
     ("sha256", 1024**2)),
])
def test_rate_limit_and_checksum(fields: dict[str, Any], rate: int,
                                 checksum: tuple[str, int] | None) -> None:
    spec = ticketspec.parse(minimal(**fields))
    assert (spec.rate_limit, spec.checksum) == (rate, checksum)
    d = spec.to_dict()
    assert d["rate_limit"] == rate
    if checksum is None:
        assert "checksum" not in d
    else:
        assert d["checksum"] == {"algorithm": checksum[0],
                                 "block_size": checksum[1]}


def test_huge_value_is_truncated() -> None:
    with pytest.raises(InvalidTicket) as e:
        ticketspec.parse(minimal(size="x" * 100000))
    assert "Invalid value for 'size': 'xxx" in e.value.message
    assert len(e.value.message) < 200


@pytest.mark.parametrize("body", [
    None, [], [minimal()], "ticket", 42, True,
])
def test_not_an_object(body: object) -> None:
    with pytest.raises(InvalidTicket) as e:
        ticketspec.parse(body)
    assert e.value.message == "Invalid ticket: ticket must be a JSON object"


@pytest.mark.parametrize("changes, expected", [
    ({}, {
        "uuid": UUID, "size": 1073741824, "ops": ["read"], "timeout": 300,
        "url": "file:///var/tmp/disk.img", "inactivity_timeout": 60,
        "transfer_id": "(ticket/2d5f4bf0-3e63-4bd5)", "sparse": False,
        "dirty": False, "rate_limit": 0,
    }),
    ({"filename": "a.raw", "sparse": True, "transfer_id": "t"}, {
        "uuid": UUID, "size": 1073741824, "ops": ["read"], "timeout": 300,
        "url": "file:///var/tmp/disk.img", "inactivity_timeout": 60,
        "transfer_id": "t", "sparse": True, "dirty": False,
        "filename": "a.raw", "rate_limit": 0,
    }),
])
def test_to_dict(changes: dict[str, Any], expected: dict[str, Any]) -> None:
    d = ticketspec.parse(minimal(**changes)).to_dict()
    assert d == expected
    # The status JSON is serialized as is.
    assert json.loads(json.dumps(d)) == expected


@pytest.mark.parametrize("uuid, shown", [
    (UUID, "2d5f4bf0..."),
    # A short id too shows at most its first half.
    ("secret", "sec..."),
    ("abcdefgh", "abcd..."),
])
def test_repr_hides_uuid(uuid: str, shown: str) -> None:
    text = repr(ticketspec.parse(minimal(uuid=uuid)))
    assert uuid not in text
    assert f"uuid={shown!r}" in text


def test_frozen() -> None:
    spec = ticketspec.parse(minimal())
    with pytest.raises(AttributeError):
        spec.size = 0  # type: ignore[misc]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

field_names = st.sampled_from([
    "uuid", "size", "ops", "timeout", "url", "inactivity_timeout",
    "transfer_id", "filename", "sparse", "dirty", "rate_limit", "checksum",
    "other",
])


@given(json_values)
def test_arbitrary_json_raises_only_bad_request(value: object) -> None:
    try:
        ticketspec.parse(value)
    except InvalidTicket:
        pass


@given(st.dictionaries(field_names, json_values))
def test_arbitrary_fields_raise_only_bad_request(
        value: dict[str, Any]) -> None:
    try:
        spec = ticketspec.parse(value)
    except InvalidTicket as e:
        assert e.message.startswith("Invalid ticket: ")
    else:
        assert spec.size >= 0 and spec.timeout >= 0
        assert spec.scheme in ticketspec.URL_SCHEMES


valid_specs = st.builds(
    TicketSpec,
    uuid=st.text(min_size=1, max_size=40),
    size=st.integers(min_value=0, max_value=2**63),
    ops=st.lists(st.sampled_from(["read", "write"]), max_size=2).map(tuple),
    timeout=st.integers(min_value=0, max_value=2**31),
    url=st.sampled_from(["file:///a", "nbd:unix:/s", "https://h:1/images/x"]),
    inactivity_timeout=st.integers(min_value=0, max_value=2**31),
    transfer_id=st.text(max_size=20),
    filename=st.none() | st.text(max_size=20),
    sparse=st.booleans(),
    dirty=st.booleans(),
)


@given(valid_specs)
def test_to_dict_round_trip(spec: TicketSpec) -> None:
    assert ticketspec.parse(json.loads(json.dumps(spec.to_dict()))) == spec
