# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m ovirt_imageio.admin``: run ovirt-imageioctl."""

import sys

from ._tool import main

sys.exit(main())
