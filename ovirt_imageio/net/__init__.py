# SPDX-License-Identifier: GPL-2.0-or-later
"""
Socket helpers shared by the libraries on the side (``admin``,
``client``), the backends and the transfer core: what ``util/`` may not
hold because it opens or configures sockets.
"""
