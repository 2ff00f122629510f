# SPDX-License-Identifier: GPL-2.0-or-later
"""The ovirt-imageio daemon: services, HTTP server, tickets, handlers."""
