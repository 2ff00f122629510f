# SPDX-License-Identifier: GPL-2.0-or-later
"""
The packaging files agree with the code, read without building anything:
the spec's version, the systemd unit, the make targets. Building the
tarball, RPMs and wheel is tested in
test/integration/project/test_packaging.py.
"""

from __future__ import annotations

import configparser
import os
import re

from ovirt_imageio import __version__

from support import TOP


def test_spec_version_matches_package() -> None:
    with open(os.path.join(TOP, "ovirt-imageio.spec")) as f:
        spec = f.read()
    match = re.search(r"^Version:\s*(\S+)$", spec, re.M)
    assert match is not None
    assert match.group(1) == __version__


def test_unit_file() -> None:
    parser = configparser.ConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(os.path.join(TOP, "data", "ovirt-imageio.service"))
    service = dict(parser["Service"])
    assert service == {
        "Type": "notify",
        "ExecStart": "/usr/bin/ovirt-imageio",
        "KillSignal": "SIGTERM",
        "KillMode": "mixed",
        "Restart": "always",
        "User": "root",
        "Group": "root",
        "RuntimeDirectory": "ovirt-imageio",
        "RuntimeDirectoryMode": "0750",
    }
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_make_targets_listed() -> None:
    with open(os.path.join(TOP, "Makefile")) as f:
        makefile = f.read()
    for target in ("dist", "wheel", "rpm"):
        assert re.search(rf"^{target}:", makefile, re.M), target

