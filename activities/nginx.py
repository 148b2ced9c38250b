"""nginx backend of the traffic router: a generated config, ``nginx -t``, a graceful reload.

An invalid config is never applied: the candidate is checked with ``nginx -t`` first, and on
failure the old config keeps serving. Known limit (measured, see the README): a reload makes the
old workers close idle keep-alive client connections, so clients with keep-alive see a few errors
per reload; clients without keep-alive see none.
"""

from __future__ import annotations

import functools
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from activities import paced_heartbeat, poll_pauses
from activities.proxy import (
    TCP_IDLE,
    Drain,
    ListenPortTaken,
    ProxyBackend,
    ProxyUnavailable,
    RouterError,
    RouterState,
    RouteState,
    drain_deadline,
    live_processes,
    replace_durably,
)

NGINX = "nginx"
RELOAD_S = 10.0
"""How long nginx may take to start the workers of a new config after SIGHUP (a bind() that
fails is retried for ~2.5 s first)."""


def _upstream(route: RouteState, indent: str) -> list[str]:
    """A route's ``upstream`` block: its servers, those at weight 0 ``down``."""
    lines = [f"{indent}upstream {route.backend} {{"]
    servers = sorted(route.servers.items())
    for name, server in servers:
        if server.weight > 0:
            lines.append(f"{indent}    server {server.address} weight={server.weight};  # {name}")
        else:
            lines.append(f"{indent}    server {server.address} down;  # {name}")
    if not servers:
        lines.append(f"{indent}    server 127.0.0.1:9 down;  # no replica serves yet")
    return [*lines, f"{indent}}}"]


def stream_module(built: str | None = None) -> str | None:
    """The ``load_module`` path of nginx's stream module (TCP routes); None when built in.

    ``built``: what ``nginx -V`` says (default: asked).

    Raises:
        RouterError: this nginx has no stream module (Debian ships it apart:
            ``libnginx-mod-stream``).
    """
    if built is None:
        try:
            asked = subprocess.run([NGINX, "-V"], capture_output=True, text=True, check=False)
        except OSError as exc:
            raise RouterError(f"nginx -V: {exc}") from exc
        built = asked.stderr
    if re.search(r"--with-stream(\s|$)", built):
        return None
    found = re.search(r"--modules-path=(\S+)", built)
    path = Path(found.group(1) if found else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    if "--with-stream=dynamic" in built and path.exists():
        return str(path)
    raise RouterError(
        "nginx has no stream module, which TCP routes (x-moorage: {route: tcp}) need: install "
        f"it (Debian: apt-get install libnginx-mod-stream; looked for {path})"
    )


@functools.cache
def installed_stream_module() -> str | None:
    """:func:`stream_module` of the nginx installed here, asked once (a refusal is not kept)."""
    return stream_module()


def render_config(
    state: RouterState,
    directory: Path,
    bind: str,
    extra_http: str = "",
    shutdown_s: float = 10.0,
    stream: str | None = None,
) -> str:
    """The nginx config serving ``state``.

    Requests reach the replicas as HAProxy passes them: the client's ``Host`` (nginx sent the
    upstream's name, ``be_<tenant>_<project>_<service>``, which Django, for one, refuses) and any
    body size (nginx refused bodies over 1 MB). Old workers end at most 60 s (or ``shutdown_s``,
    the drain timeout, if longer) after a reload, as HAProxy's ``hard-stop-after 60s``: one long
    response kept one alive for ever, and every later change waited on it. TCP routes go in a
    ``stream`` block (``stream``: the module to load for it, see :func:`stream_module`).
    """
    routes = sorted(state.routes.values(), key=lambda r: r.port)
    tcp = [r for r in routes if r.mode == "tcp"]
    lines = [f"load_module {stream};"] if tcp and stream else []
    lines += [
        "worker_processes 1;",
        f"worker_shutdown_timeout {max(60, math.ceil(shutdown_s))}s;",
        f"pid {directory / 'nginx.pid'};",
        f"error_log {directory / 'error.log'} warn;",
        "events { worker_connections 4096; }",
        "http {",
        "    access_log off;",
        f"    client_body_temp_path {directory / 'tmp'};",
        f"    proxy_temp_path {directory / 'tmp'};",
        f"    fastcgi_temp_path {directory / 'tmp'};",
        f"    uwsgi_temp_path {directory / 'tmp'};",
        f"    scgi_temp_path {directory / 'tmp'};",
        "    keepalive_timeout 10s;",
        "    client_max_body_size 0;",
    ]
    if extra_http.strip():
        lines.append(f"    {extra_http.strip()}")
    for route in (r for r in routes if r.mode == "http"):
        lines += _upstream(route, "    ")
        lines += [
            "    server {",
            f"        listen {bind}:{route.port};",
            "        location / {",
            f"            proxy_pass http://{route.backend};",
            "            proxy_set_header Host $http_host;",
            # Streamed both ways, as HAProxy does: no temp file (its directory may be one the
            # workers, user nobody, cannot enter: a body over 16 KB answered 500).
            "            proxy_request_buffering off;",
            "            proxy_http_version 1.1;",  # else a chunked body is buffered all the same
            "            proxy_max_temp_file_size 0;",
            "            proxy_next_upstream error timeout http_502 http_503;",
            "            proxy_connect_timeout 3s;",
            "        }",
            "    }",
        ]
    lines.append("}")
    if tcp:
        lines.append("stream {")
        for route in tcp:
            lines += _upstream(route, "    ")
            lines += [
                "    server {",
                f"        listen {bind}:{route.port};",
                f"        proxy_pass {route.backend};",
                "        proxy_connect_timeout 3s;",
                f"        proxy_timeout {TCP_IDLE};",  # idle time, as HAProxy's
                "    }",
            ]
        lines.append("}")
    return "\n".join(lines) + "\n"


class NginxBackend(ProxyBackend):
    """nginx run as its own master process with a prefix in the router directory."""

    name = "nginx"
    pidfile_name = "nginx.pid"

    def __init__(self, directory: Path, bind: str = "127.0.0.1", drain_timeout_s: float = 10.0):
        super().__init__(directory, bind, drain_timeout_s)
        self.config = directory / "nginx.conf"
        self.extra_http = ""
        """Operator-provided directives for the ``http`` block (e.g. logging)."""

    def _render(self, state: RouterState) -> str:
        tcp = any(r.mode == "tcp" for r in state.routes.values())
        stream = installed_stream_module() if tcp else None
        return render_config(
            state, self.dir, self.bind, self.extra_http, self.drain_timeout_s, stream
        )

    def running(self) -> bool:
        """True when the nginx master is alive."""
        return self._pid() is not None

    def _write_checked(self, state: RouterState) -> None:
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        candidate = self.dir / "nginx.conf.new"
        candidate.write_text(self._render(state))
        check = subprocess.run(
            [NGINX, "-t", "-q", "-p", str(self.dir), "-c", str(candidate)],
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            candidate.unlink(missing_ok=True)
            raise RouterError(f"nginx -t refused the config: {check.stderr.strip()}")
        replace_durably(candidate, self.config)

    def start(self, state: RouterState) -> None:
        """Write the config and start nginx.

        Raises:
            RouterError: the config is invalid or nginx did not start.
        """
        self._write_checked(state)
        result = subprocess.run(
            [NGINX, "-p", str(self.dir), "-c", str(self.config)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RouterError(f"nginx did not start: {result.stderr.strip()}")
        for _ in range(100):
            if self.running():
                return
            time.sleep(0.05)
        raise RouterError("nginx did not write its pid file")

    def _workers(self, master: int) -> list[int]:
        """The master's children: its workers, and those of earlier configs still finishing."""
        return [pid for pid, parent in live_processes().items() if parent == master]

    @staticmethod
    def _finishing(pid: int) -> bool:
        """True for a worker of an earlier config, or one gone.

        A retired worker's title says "worker process is shutting down".
        """
        try:
            return b"shutting down" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True

    def change(self, old: RouterState, new: RouterState, draining: dict[str, list[str]]) -> Drain:
        """Check and write the new config and reload; the drain is the old workers' end.

        Raises:
            RouterError: ``nginx -t`` refused the config, or nginx gave the reload up (the old
                config keeps serving).
        """
        # What the config nginx runs sends to, before it is replaced: a killed attempt may have
        # left it ahead of the state.
        whole = takes_out(old, new, draining, self._configured_servers())
        self._write_checked(new)
        master = self._pid()
        if master is None:
            self.start(new)
            return Drain()
        before = set(self._workers(master))
        log = self.dir / "error.log"
        offset = log.stat().st_size if log.exists() else 0
        try:
            os.kill(master, signal.SIGHUP)
        except ProcessLookupError as exc:
            raise ProxyUnavailable(f"nginx master {master} is gone") from exc
        self._wait_reloaded(master, before, log, offset, old)
        # A change that takes a server out waits for every worker of an earlier config, those
        # of earlier reloads too: a change that took none out (a route_add, a weight set to 0,
        # another project's) did not wait for its own, which may still hold requests to it.
        # One that takes none out waits only until they stop taking connections (the old
        # config's), not until they have finished what they hold: a client holding a TCP
        # route's connection keeps one up to its shutdown timeout, and every change on the
        # host waited the drain timeout on it.
        return NginxDrain(self, master, before, whole=whole)

    def _wait_reloaded(
        self, master: int, before: set[int], log: Path, offset: int, old: RouterState
    ) -> None:
        """Wait until nginx runs workers of the new config.

        ``nginx -t`` cannot catch everything: a listen port another process took since is found
        only by the reload, which nginx then gives up, keeping the old workers and config. The
        config file is put back to what nginx runs.

        Raises:
            ListenPortTaken: nginx gave the reload up because a listen port was taken (a retry
                picks another).
            RouterError: nginx gave the reload up for another reason (its error log says why).
            ProxyUnavailable: no worker of the new config within :data:`RELOAD_S`.
        """
        sent = time.monotonic()
        pauses = poll_pauses()
        while True:
            if set(self._workers(master)) - before:
                return
            failure = _emerg_since(log, offset)
            # A bind() nginx gave up ends "still could not bind()"; one it retried may succeed
            # still, and so may anything else until the wait is over.
            if failure and ("still could not" in failure or time.monotonic() - sent >= RELOAD_S):
                self._put_back(old)
                if "Address already in use" in failure:
                    raise ListenPortTaken(f"nginx gave the reload up: {failure}")
                raise RouterError(f"nginx gave the reload up: {failure}")
            if time.monotonic() - sent >= RELOAD_S:
                raise ProxyUnavailable(
                    f"nginx started no worker of the new config in {RELOAD_S:g}s"
                )
            time.sleep(next(pauses))

    def _put_back(self, state: RouterState) -> None:
        """Write the config of ``state`` (what nginx still runs) unchecked: it ran before."""
        tmp = self.dir / "nginx.conf.back"
        tmp.write_text(self._render(state))
        replace_durably(tmp, self.config)

    def configured_port(self, backend: str) -> int | None:
        """The ``listen`` port of the server block that follows the route's upstream."""
        text = self.config.read_text() if self.config.exists() else ""
        found = re.search(rf"upstream {re.escape(backend)} {{.*?listen \S+:(\d+);", text, re.S)
        return int(found.group(1)) if found else None

    def configured_backends(self) -> set[str]:
        """The ``upstream`` blocks of the config file."""
        text = self.config.read_text() if self.config.exists() else ""
        return set(re.findall(r"^\s*upstream (\S+) \{$", text, re.M))

    def serves(self, backend: str) -> bool:
        """True when the config nginx runs has the route of ``backend``."""
        return backend in self.configured_backends()

    def live_servers(self, route: RouteState) -> dict[str, int]:
        """Servers in the config nginx runs (nginx has no runtime API to ask)."""
        return self._configured_servers().get(route.backend, {})

    def _configured_servers(self) -> dict[str, dict[str, int]]:
        """Upstream (backend) -> server -> weight, in the config file (``down``: 0)."""
        text = self.config.read_text() if self.config.exists() else ""
        result: dict[str, dict[str, int]] = {}
        upstream: dict[str, int] | None = None
        for line in text.splitlines():
            stripped = line.strip()
            found = re.fullmatch(r"upstream (\S+) \{", stripped)
            if found:
                upstream = result.setdefault(found.group(1), {})
                continue
            if upstream is not None and stripped == "}":
                upstream = None
            elif upstream is not None and "#" in stripped and "no replica" not in stripped:
                name = stripped.split("#", 1)[1].strip()
                weight = (
                    0 if " down;" in stripped else int(stripped.split("weight=")[1].split(";")[0])
                )
                upstream[name] = weight
        return result


def _emerg_since(log: Path, offset: int) -> str | None:
    """What nginx wrote to ``log`` as ``[emerg]`` past ``offset`` (each message once), if any."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    # "2026/11/26 16:17:53 [emerg] 9324#9324: bind() to 127.0.0.1:1 failed (98: ...)"
    said = [
        line.split("[emerg]", 1)[1].split(": ", 1)[-1].strip()
        for line in text.splitlines()
        if "[emerg]" in line
    ]
    return "; ".join(dict.fromkeys(said)) or None


def takes_out(
    old: RouterState,
    new: RouterState,
    draining: dict[str, list[str]],
    running: dict[str, dict[str, int]],
) -> bool:
    """True when a change takes a server out of the proxy's routes (or moves one elsewhere).

    Its requests in flight must end before its container stops: the drain waits for them.
    ``running``: backend -> servers of the config nginx runs (it may list one the state lacks).
    """
    if any(draining.values()):
        return True
    wanted = {r.backend: r for r in new.routes.values()}
    for backend, names in running.items():
        after = wanted.get(backend)
        if any(after is None or name not in after.servers for name in names):
            return True
    for key, route in old.routes.items():
        after = new.routes.get(key)
        for name, server in route.servers.items():
            kept = after.servers.get(name) if after is not None else None
            if kept is None or kept.address != server.address:
                return True
    return False


class NginxDrain(Drain):
    """The workers of earlier configs: they finish their in-flight requests, then exit.

    The config names no server taken out, so there is nothing to record or delete; only the
    wait, for the workers that ran when the change reloaded nginx (``retired``; a reload since
    retires workers of its own, which the wait does not need).
    """

    def __init__(self, nginx: NginxBackend, master: int, retired: set[int], whole: bool = True):
        super().__init__()
        self.nginx = nginx
        self.master = master
        self.retired = retired
        self.whole = whole
        """False: only until the old workers stop taking connections (they are shutting down)."""

    def wait(self) -> None:
        """Until none of the old workers is left, or the drain timeout is over (heartbeating)."""
        deadline = drain_deadline(self.nginx.drain_timeout_s)
        beat = paced_heartbeat()  # the drain may outlast the heartbeat timeout
        pauses = poll_pauses()
        while time.monotonic() < deadline:
            current = set(self.nginx._workers(self.master))
            if current and not (current & self.retired):
                return
            if not self.whole and all(self.nginx._finishing(pid) for pid in self.retired):
                return
            beat("draining: old nginx workers still finish requests")
            time.sleep(next(pauses))
