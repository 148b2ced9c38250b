"""Readiness probes Moorage runs itself (``x-moorage.probe``) through a published port."""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import suppress
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
    """Run one probe against a container; ``(ready, what was seen)``, within ``spec.timeout_s``.

    An HTTP probe decides on the status line and headers: it reads no body (a path that streams
    would hold it), and a server that answers a byte at a time is cut off at the timeout (the
    socket's timeout bounds each read, not the whole exchange).
    """
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
    conn = http.client.HTTPConnection(host, port, timeout=spec.timeout_s)
    cut = threading.Event()

    def cut_off() -> None:
        cut.set()
        sock = conn.sock  # once: the prober's thread sets it to None as it closes
        if sock is not None:
            with suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(spec.timeout_s, cut_off)
    timer.start()
    try:
        conn.request(
            "GET", spec.path, headers={"Connection": "close", "User-Agent": "moorage-probe"}
        )
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        if not cut.is_set():
            return False, f"GET {spec.path}: {exc}"
    finally:
        timer.cancel()
        conn.close()
    if cut.is_set():  # a response cut off may still parse (its headers end where it was cut)
        return False, f"GET {spec.path}: no answer within {spec.timeout_s:g}s"
    if status != spec.status:
        return False, f"GET {spec.path}: status {status}, expected {spec.status}"
    return True, f"GET {spec.path}: {status}"


_PROBES = ThreadPoolExecutor(max_workers=32, thread_name_prefix="moorage-probe")
"""Probes of several replicas run side by side (a hung one costs its timeout once per check)."""


def probe_all(
    spec: ProbeSpec, infos: list[dict[str, Any]], beat: Callable[[], None]
) -> list[tuple[bool, str]]:
    """:func:`probe` of each container, side by side; ``beat`` every ``HEARTBEAT_EVERY_S``.

    One after another, three hung replicas held a check three probe timeouts long, without a
    heartbeat.
    """
    if len(infos) <= 1:
        return [probe(spec, info) for info in infos]
    futures = [_PROBES.submit(probe, spec, info) for info in infos]
    while wait(futures, timeout=HEARTBEAT_EVERY_S).not_done:
        beat()
    return [f.result() for f in futures]
