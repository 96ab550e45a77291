"""The proxy's loggers, in one place (aiohttp's ``log.py`` habit), and the one logging set-up.

Subsystems shared with the library (ACME, attestation, policy, TLS) log under the same
names as :mod:`certmgr.log`, whose logger objects are reused here. The access log
(``teeproxy.access``) records no request or response content, query strings or headers.
"""

from __future__ import annotations

import logging
import sys

from certmgr.log import acme_log, attest_log, cluster_log, policy_log, tls_log

__all__ = [
    "access_log",
    "acme_log",
    "admin_log",
    "attest_log",
    "cli_log",
    "cluster_log",
    "demo_log",
    "forward_log",
    "policy_log",
    "receipts_log",
    "server_log",
    "setup_logging",
    "tasks_log",
    "tls_log",
]

access_log = logging.getLogger("teeproxy.access")  # one line per request, no content
admin_log = logging.getLogger("teeproxy.admin")  # the admin listener
cli_log = logging.getLogger("teeproxy.cli")  # the teeproxy commands
demo_log = logging.getLogger("teeproxy.demo")  # the built-in demo model
forward_log = logging.getLogger("teeproxy.forward")  # relaying to the backend
receipts_log = logging.getLogger("teeproxy.receipts")  # signed receipts, their store
server_log = logging.getLogger("teeproxy.server")  # listeners, workers, the supervisor
tasks_log = logging.getLogger("teeproxy.tasks")  # background tasks that failed

_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


def setup_logging(level: str) -> None:
    """Log to stderr at ``level`` (``[logging] level``); every process calls this once."""
    logging.basicConfig(level=level.upper(), format=_FORMAT, stream=sys.stderr)
