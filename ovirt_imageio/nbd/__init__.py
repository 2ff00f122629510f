# SPDX-License-Identifier: GPL-2.0-or-later
"""
Sans-IO NBD (Network Block Device) server protocol: the wire constants,
the fixed newstyle handshake state machine, request parsing and
validation, and reply encoding. Nothing here touches a socket, a thread
or a clock, so all of it is tested with tables and hypothesis; the door
that serves tickets over it is ``nbdd/``.
"""
