"""Readiness probes Moorage runs itself (``x-moorage.probe``) through a published port."""

from __future__ import annotations

import http.client
import socket
from typing import Any

from moorage.compose import ProbeSpec


def published_address(info: dict[str, Any], port: int) -> tuple[str, int] | None:
    """Host and port where a container's ``port``/tcp is published (None if it is not)."""
    bindings = (info["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or []
    if not bindings:
        return None
    host = bindings[0]["HostIp"] or "127.0.0.1"
    return ("127.0.0.1" if host == "0.0.0.0" else host), int(bindings[0]["HostPort"])


def probe(spec: ProbeSpec, info: dict[str, Any]) -> tuple[bool, str]:
    """Run one probe against a container; ``(ready, what was seen)``."""
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
    try:
        conn.request(
            "GET", spec.path, headers={"Connection": "close", "User-Agent": "moorage-probe"}
        )
        resp = conn.getresponse()
        resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"GET {spec.path}: {exc}"
    finally:
        conn.close()
    if resp.status != spec.status:
        return False, f"GET {spec.path}: status {resp.status}, expected {spec.status}"
    return True, f"GET {spec.path}: {resp.status}"
