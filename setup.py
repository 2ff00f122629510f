# SPDX-License-Identifier: GPL-2.0-or-later
import re

from setuptools import find_packages, setup

with open("ovirt_imageio/__init__.py") as f:
    version = re.search(r'^__version__ = "(.+)"', f.read(), re.M).group(1)

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
    cffi_modules=["ext/build_ioutil.py:ffibuilder",
                  "ext/build_nbdrelay.py:ffibuilder"],
    entry_points={
        "console_scripts": [
            "ovirt-imageio = ovirt_imageio.server.main:main",
            "ovirt-imageioctl = ovirt_imageio.admin._tool:main",
            "ovirt-img = ovirt_imageio.client._tool:main",
        ],
    },
)
