# SPDX-License-Identifier: GPL-2.0-or-later
import os
import re
import shutil
import subprocess

from setuptools import find_packages, setup

with open("ovirt_imageio/__init__.py") as f:
    version = re.search(r'^__version__ = "(.+)"', f.read(), re.M).group(1)


def have_libnbd():
    """Whether libnbd's headers are there: the NBD door's relay loop
    (ext/nbdrelay.c) links libnbd, which a client-only build may lack;
    the door then relays in Python."""
    if shutil.which("pkg-config"):
        return subprocess.run(["pkg-config", "--exists", "libnbd"]
                              ).returncode == 0
    return os.path.exists("/usr/include/libnbd.h")


CFFI_MODULES = ["ext/build_ioutil.py:ffibuilder"]
if have_libnbd():
    CFFI_MODULES.append("ext/build_nbdrelay.py:ffibuilder")

setup(
    name="ovirt-imageio",
    version=version,
    description="Transfer disk images over HTTP(S) for oVirt",
    license="GPL-2.0-or-later",
    python_requires=">=3.9",
    packages=find_packages(include=["ovirt_imageio", "ovirt_imageio.*"]),
    package_data={"ovirt_imageio": ["py.typed"],
                  "ovirt_imageio.native": ["*.pyi"]},
    setup_requires=["cffi>=1.15"],
    install_requires=["cffi>=1.15", "prometheus_client>=0.26"],
    extras_require={
        # ovirt-img upload-disk and download-disk.
        "engine": ["ovirt-engine-sdk-python>=4.6"],
        # The daemon's /profile/ control API.
        "profile": ["yappi>=1.3"],
    },
    cffi_modules=CFFI_MODULES,
    entry_points={
        "console_scripts": [
            "ovirt-imageio = ovirt_imageio.server.main:main",
            "ovirt-imageioctl = ovirt_imageio.admin._tool:main",
            "ovirt-img = ovirt_imageio.client._tool:main",
        ],
    },
)
