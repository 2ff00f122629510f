# SPDX-License-Identifier: GPL-2.0-or-later
"""
The documentation keeps up with the code: every configuration option,
route, metric and make target that exists is described.
"""

from __future__ import annotations

import dataclasses
import os
import re

import pytest

from ovirt_imageio import config
from ovirt_imageio.httpd.metrics import Metrics
from ovirt_imageio.server.daemon import Daemon

from support import TOP

DOCS = os.path.join(TOP, "docs")


def read(name: str) -> str:
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def documented_options() -> set[tuple[str, str]]:
    """(section, option) pairs in the tables of configuration.md."""
    found: set[tuple[str, str]] = set()
    sections: list[str] = []
    for line in read("configuration.md").splitlines():
        if line.startswith("#"):
            sections = re.findall(r"`\[(\w+)\]`", line)
            continue
        m = re.match(r"\| `([\w.]+)` \|", line)
        if m is None:
            continue
        name = m.group(1)
        if "." in name:
            section, option = name.split(".", 1)
            found.add((section, option))
        else:
            found.update((section, name) for section in sections)
    return found


def config_options() -> list[tuple[str, str]]:
    cfg = config.Config()
    return [(section, option)
            for section, options in cfg.to_dict().items()
            for option in options]


@pytest.mark.parametrize("section,option", config_options())
def test_every_option_documented(section: str, option: str) -> None:
    assert (section, option) in documented_options(), \
        f"[{section}] {option} is missing from docs/configuration.md"


def test_documented_defaults_match() -> None:
    # Spot check simple defaults in the tables against the dataclasses.
    text = read("configuration.md")
    cfg = config.Config().to_dict()
    for section, option in config_options():
        value = cfg[section][option]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        assert re.search(
            rf"\| `({section}\.)?{option}` \| `{re.escape(str(value))}` \|",
            text), (section, option, value)


def test_config_sections_are_dataclasses() -> None:
    # The test above relies on to_dict() covering every field.
    cfg = config.Config()
    for f in dataclasses.fields(cfg):
        if f.name != "logging_extra":
            assert dataclasses.is_dataclass(getattr(cfg, f.name))


@pytest.mark.parametrize("option", ["connect_timeout", "op_timeout"])
def test_rbd_timeouts_match(option: str) -> None:
    # rbd.md repeats these defaults beside the Ceph options they set.
    value = getattr(config.RBDBackend(), option)
    assert f"| `{option}` | `{value:g}` s |" in read("rbd.md")


def routes() -> list[tuple[str, str]]:
    """(doc file, route as documented) for every route of the daemon."""
    d = Daemon(config.Config())
    try:
        result = []
        for pattern, _ in d._image_routes(remote=True):
            result.append(("http-api.md", pattern))
        for pattern, _ in d._control_routes():
            result.append(("control-api.md", pattern))
    finally:
        d.pool.shutdown()
    return [(doc, re.sub(r"\([^)]*\)", "{ticket-id}", pattern))
            for doc, pattern in result]


@pytest.mark.parametrize("doc,route", routes())
def test_every_route_documented(doc: str, route: str) -> None:
    assert route in read(doc), f"{route} is missing from docs/{doc}"


def metric_names() -> list[str]:
    return [line.split()[2] for line in Metrics().render().splitlines()
            if line.startswith("# TYPE ")]


@pytest.mark.parametrize("name", metric_names())
def test_every_metric_documented(name: str) -> None:
    assert f"`{name}`" in read("metrics.md")


def make_targets() -> list[str]:
    with open(os.path.join(TOP, "Makefile")) as f:
        makefile = f.read()
    phony = set()
    for line in re.findall(r"^\.PHONY:(.*)$", makefile, re.M):
        phony.update(line.split())
    defined = set(re.findall(r"^([\w-]+):", makefile, re.M))
    return sorted(phony & defined)


@pytest.mark.parametrize("target", make_targets())
def test_every_make_target_documented(target: str) -> None:
    assert f"`make {target}`" in read("development.md")


@pytest.mark.parametrize("name", [
    "install.md", "configuration.md", "http-api.md", "control-api.md",
    "client.md", "development.md", "architecture.md", "metrics.md",
])
def test_doc_links_resolve(name: str) -> None:
    for target in re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]+)?\)", read(name)):
        assert os.path.exists(os.path.join(DOCS, target)), (name, target)
