"""Readiness probes Moorage runs itself (``x-moorage.probe``) through a published port."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

from activities import HEARTBEAT_EVERY_S
from moorage.compose import ProbeSpec


def published_address(info: dict[str, Any], port: int) -> tuple[str, int] | None:
    """Host and port where a container's ``port``/tcp is published (None if it is not)."""
    bindings = (info["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or []
    if not bindings:
        return None
    host = bindings[0]["HostIp"] or "127.0.0.1"
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(bindings[0]["HostPort"])


def probe(spec: ProbeSpec, info: dict[str, Any]) -> tuple[bool, str]:
    """Run one probe against a container; ``(ready, what was seen)``, within ``spec.timeout_s``."""
    address = published_address(info, spec.port)
    if address is None:
        return False, f"port {spec.port}/tcp is not published"
    host, port = address
    if spec.type == "tcp":
        try:
            with socket.create_connection((host, port), timeout=spec.timeout_s):
                return True, "tcp connect ok"
        except OSError as exc:
            return False, f"tcp connect: {exc}"
    try:
        status = _http_status(host, port, spec.path, spec.timeout_s)
    except TimeoutError:
        return False, f"GET {spec.path}: no answer within {spec.timeout_s:g}s"
    except (OSError, ValueError) as exc:
        return False, f"GET {spec.path}: {exc}"
    if status != spec.status:
        return False, f"GET {spec.path}: status {status}, expected {spec.status}"
    return True, f"GET {spec.path}: {status}"


HEAD_MAX = 8192
"""Bytes read at most for the final status line (with any 1xx interim responses before it)."""


def _http_status(host: str, port: int, path: str, timeout_s: float) -> int:
    """The final status code a ``GET path`` gets, read within ``timeout_s`` in all.

    Only the status line is read (after any interim 1xx responses, as RFC 9110 asks of every
    client: 100 Continue, 103 Early Hints): a path that streams its body passes on its status,
    and a server whose status line is not complete within ``timeout_s`` fails (a socket's
    timeout bounds each read, not the exchange: ``http.client`` waited on a server sending a byte
    at a time as long as it kept sending, and read a stream's body for ever).

    Raises:
        TimeoutError: no final status line within ``timeout_s``.
        OSError: the connection failed or closed before a final status line.
        ValueError: what came is no HTTP status line.
    """
    deadline = time.monotonic() + timeout_s
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: moorage-probe\r\n"
            "Accept-Encoding: identity\r\nConnection: close\r\n\r\n".encode("ascii")
        )
        data = bytearray()
        pos = 0

        def next_line() -> bytes:
            nonlocal pos
            while b"\n" not in data[pos:]:
                if len(data) >= HEAD_MAX:
                    raise ValueError(f"no final status line in the first {HEAD_MAX} bytes")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(1024)
                if not chunk:
                    raise ConnectionError("connection closed before a status line")
                data.extend(chunk)
            end = data.index(b"\n", pos)
            line = bytes(data[pos:end]).rstrip(b"\r")
            pos = end + 1
            return line

        while True:
            status = _status(next_line())
            if not 100 <= status < 200 or status == 101:
                return status
            while next_line():  # an interim response's headers, up to its blank line
                pass


def _status(line: bytes) -> int:
    """The code of an HTTP status line.

    Raises:
        ValueError: the line is no HTTP status line.
    """
    parts = line.split(None, 2)
    if (
        len(parts) < 2
        or not parts[0].startswith(b"HTTP/")
        or len(parts[1]) != 3
        or not parts[1].isdigit()
    ):
        raise ValueError(f"not an HTTP status line: {line[:80]!r}")
    return int(parts[1])


_PROBES = ThreadPoolExecutor(max_workers=32, thread_name_prefix="moorage-probe")
"""Probes of several replicas run side by side (a hung one costs its timeout once per check)."""


def probe_all(
    spec: ProbeSpec, infos: list[dict[str, Any]], beat: Callable[[], None]
) -> list[tuple[bool, str]]:
    """:func:`probe` of each container, side by side; ``beat`` every ``HEARTBEAT_EVERY_S``.

    One after another, three hung replicas held a check three probe timeouts long, without a
    heartbeat.
    """
    if not infos:
        return []
    # The first on this thread: when every replica answers at once, as usual, it is done with
    # the others by the time it is done with its own.
    others = [_PROBES.submit(probe, spec, info) for info in infos[1:]]
    first = probe(spec, infos[0])
    if others:
        beat()  # the first may have taken its whole timeout
    while others and wait(others, timeout=HEARTBEAT_EVERY_S).not_done:
        beat()
    return [first, *(f.result() for f in others)]
