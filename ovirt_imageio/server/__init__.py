# SPDX-License-Identifier: GPL-2.0-or-later
"""
The daemon process: command line, start-up and shutdown, privileges,
systemd readiness, the TLS context of the services. It wires the
protocol doors (``httpd``) to the transfer core (``transfer``); nothing
below imports it.
"""
