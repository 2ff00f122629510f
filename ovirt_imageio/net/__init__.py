# SPDX-License-Identifier: GPL-2.0-or-later
"""
Client-side sockets shared by the libraries on the side (``admin``,
``client``) and the backends: what ``util/`` may not hold because it
opens sockets.
"""
