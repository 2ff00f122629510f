# SPDX-License-Identifier: GPL-2.0-or-later
"""``python -m ovirt_imageio.client``: run ovirt-img."""

import sys

from ._tool import main

sys.exit(main())
