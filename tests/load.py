"""A bounded load generator for zero-downtime tests: a few threads, real HTTP, failures counted."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    """(time, version) of every successful request, in order of completion."""
    failures: list[tuple[float, str]] = field(default_factory=list)
    """(time, error) of every failed request."""


class Load:
    """``connections`` threads GET ``<url>version`` until stopped (keep-alive or not)."""

    def __init__(
        self, url: str, connections: int = 4, keepalive: bool = True, pause_s: float = 0.005
    ):
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.connections = connections
        self.keepalive = keepalive
        self.pause_s = pause_s
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _record(self, version: str | None, error: str | None) -> None:
        with self._lock:
            if error is None and version is not None:
                self.result.ok += 1
                self.result.versions[version] += 1
                self.result.timeline.append((time.monotonic(), version))
            else:
                self.result.failed += 1
                self.result.errors[error or "?"] += 1
                self.result.failures.append((time.monotonic(), error or "?"))

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {} if self.keepalive else {"Connection": "close"}
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("GET", "/version", headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode().strip()
                if resp.status != 200:
                    self._record(None, f"status {resp.status}")
                else:
                    self._record(body, None)
                if not self.keepalive or resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self._record(None, type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            time.sleep(self.pause_s)
        if conn is not None:
            conn.close()

    def __enter__(self) -> Load:
        for _ in range(self.connections):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    def last_versions(self, n: int) -> set[str]:
        with self._lock:
            return {v for _, v in self.result.timeline[-n:]}


def tcp_exchange(host: str, port: int, line: bytes = b"ping\n", timeout: float = 10) -> str:
    """One conversation with a TCP echo replica (:data:`tests.helpers.TCP_ECHO`): its greeting
    (the version it serves), then ``line`` sent and echoed back.

    Raises:
        OSError: the connection failed, or the replica did not echo ``line``.
    """
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        sock.makefile("rwb") as stream,
    ):
        version = stream.readline().decode().strip()
        stream.write(line)
        stream.flush()
        echoed = stream.readline()
    if not version or echoed != line:
        raise OSError(f"answered {version!r}, then {echoed!r}")
    return version


class TcpLoad(Load):
    """``connections`` threads talk to a TCP route (:func:`tcp_exchange`) until stopped: a new
    connection for each conversation."""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._record(tcp_exchange(self.host, self.port), None)
            except OSError as exc:
                self._record(None, f"{type(exc).__name__}: {exc}")
            time.sleep(self.pause_s)
