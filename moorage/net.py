"""Small network checks shared by the dev launcher and the traffic router."""

from __future__ import annotations

import errno
import socket


def port_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host``:``port`` (this process could bind it).

    Raises:
        OSError: the address cannot be bound for another reason than a listener (not an
            address of this host, a privileged port): no port of it would be free.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True
