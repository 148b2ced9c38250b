"""HAProxy backend of the traffic router.

Server changes (add, enable, weight, drain, delete) go through HAProxy's runtime API on its admin
socket: no reload, so no client connection is ever cut. Only a new listen port (a new route) needs
a reload; HAProxy runs in master-worker mode, where a reload hands the listening sockets over and
lets the old worker finish its connections. The config file is rewritten on every change, so a
restarted HAProxy comes back with the current routes.

Moorage's own HAProxy runs detached but in the foreground (not ``-D``, which sends its output to
/dev/null), its output appended to ``haproxy.log`` in the router directory, with its master CLI
on ``master.sock``: a start or reload that fails says why (HAProxy's ALERT lines).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NamedTuple, NoReturn

from activities import heartbeat, paced_heartbeat, poll_pauses
from activities.proxy import (
    TCP_IDLE,
    Drain,
    ListenPortTaken,
    ProxyBackend,
    ProxyUnavailable,
    RouterError,
    RouterState,
    RouteState,
    ServerState,
    backend_name,
    drain_deadline,
    live_processes,
    process_alive,
    replace_durably,
)
from moorage.net import port_free

HAPROXY = "haproxy"

SERVER_CHECK = "check inter 1s fall 3 rise 1"
"""Every server gets a TCP check: a replica that dies while routed is marked DOWN after three
failed checks (~3 s) and gets no more requests until it answers again. Three, so the ~0.25 s in
which a restarting dockerd refuses every published port never marks anything down."""

LOG_LIMIT = 1 << 20
"""``haproxy.log`` over this size is emptied before the next start or reload (HAProxy appends)."""

READY_TIMEOUT_S = 10.0
"""How long a start or reload may take to serve the new config (the heartbeat timeout)."""

SOCKET_PATH_MAX = 95
"""The longest UNIX socket path HAProxy surely binds: a socket address holds 108 bytes with its
NUL, and HAProxy binds at a temporary name first, the path and ``.<pid>.tmp`` (a pid of up to 7
digits: 95). ``haproxy -c`` refuses a path over 97 (its check counts a 5-digit pid)."""


MODE_FRONTEND = {
    "http": [],
    "tcp": [
        "    mode tcp",
        "    no option idle-close-on-response",  # an HTTP option: HAProxy warns of it here
        f"    timeout client {TCP_IDLE}",
    ],
}
"""What a route's frontend says beyond the defaults, by the route's mode."""

MODE_BACKEND = {"http": [], "tcp": ["    mode tcp", f"    timeout server {TCP_IDLE}"]}
"""What a route's backend says beyond the defaults, by the route's mode."""


def render_config(state: RouterState, directory: Path, bind: str) -> str:
    """The HAProxy config serving ``state``."""
    lines = [
        "global",
        f"    stats socket {directory / 'admin.sock'} mode 600 level admin",
        "    maxconn 4000",
        "    hard-stop-after 60s",
        "",
        "defaults",
        "    mode http",
        # On a reload, the old worker answers the next request of an idle keep-alive connection
        # (with Connection: close) instead of closing it under the client.
        "    option idle-close-on-response",
        "    timeout connect 3s",
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-keep-alive 10s",
        # A refused connection is retried on the same server after a 1 s turn-around: a dockerd
        # restarting re-creates its port rules and every published port refuses for ~0.25 s.
        # No `option redispatch`: with it HAProxy 2.6 retries round-robin backends at once (no
        # turn-around) and answers 503 within that window. Servers leave a route drained, so
        # only a container that dies while routed refuses connections for longer, until its
        # check marks it DOWN (SERVER_CHECK).
        "    retries 3",
        "    retry-on conn-failure empty-response response-timeout",
        "",
    ]
    for route in sorted(state.routes.values(), key=lambda r: r.port):
        lines += [
            f"frontend fe_{route.backend[3:]}",
            f"    bind {bind}:{route.port}",
            *MODE_FRONTEND[route.mode],
            f"    default_backend {route.backend}",
            "",
            f"backend {route.backend}",
            *MODE_BACKEND[route.mode],
            "    balance roundrobin",
        ]
        for name, server in sorted(route.servers.items()):
            lines.append(
                f"    server {name} {server.address} weight {server.weight} {SERVER_CHECK}"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def _stat_rows(text: str, *, frontends: bool = False) -> dict[str, dict[str, dict[str, str]]]:
    """``show stat``'s CSV: proxy → server name → row.

    BACKEND rows are left out; FRONTEND rows too, unless ``frontends``.
    """
    result: dict[str, dict[str, dict[str, str]]] = {}
    for row in csv.DictReader(io.StringIO(text.lstrip("# "))):
        name = row.get("svname")
        if name == "BACKEND" or (name == "FRONTEND" and not frontends) or name is None:
            continue
        result.setdefault(row.get("pxname") or "", {})[name] = row
    return result


def check_alerts(result: subprocess.CompletedProcess[str]) -> str:
    """Why ``haproxy -c`` refused a config: its ALERT lines (all it printed when there are none).

    Not ``-q``: it keeps the alerts back too, and the refusal would say nothing.
    """
    output = "\n".join((result.stderr, result.stdout)).strip()
    return alerts(output) or output or f"exit status {result.returncode}, nothing printed"


def alerts(text: str) -> str:
    """HAProxy's ALERT lines in ``text``, joined ("" when there are none)."""
    return " | ".join(line.strip() for line in text.splitlines() if "[ALERT]" in line)


class MasterInfo(NamedTuple):
    """What HAProxy's master CLI says of the master (``show proc``)."""

    pid: int
    """In the master's pid namespace (another one for an HAProxy run in a container)."""
    reloads: int
    failed: int
    """Reloads whose new config did not load (the old one serves on)."""


def _daemonized(pid: int) -> bool:
    """True when master ``pid`` runs with ``-D``: an older Moorage started it (no master CLI)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"-D" in args


class HAProxyBackend(ProxyBackend):
    """HAProxy 2.6+, master-worker mode, admin socket in the router directory."""

    name = "haproxy"
    pidfile_name = "haproxy.pid"

    def __init__(
        self,
        directory: Path,
        bind: str = "127.0.0.1",
        drain_timeout_s: float = 10.0,
        managed: bool = True,
    ):
        super().__init__(directory, bind, drain_timeout_s, managed)
        self.config = directory / "haproxy.cfg"
        self.socket = directory / "admin.sock"
        self.master_socket = directory / "master.sock"
        """The master CLI (``-S``). An HAProxy run outside Moorage is reloaded through it."""
        self._launched: subprocess.Popen[bytes] | None = None
        self.log = directory / "haproxy.log"
        """Moorage's own HAProxy's output (its master's and workers' notices and alerts)."""
        longest = max((self.socket, self.master_socket), key=lambda p: len(str(p)))
        if len(str(longest)) > SOCKET_PATH_MAX:
            raise RouterError(
                f"MOORAGE_ROUTER_DIR {directory} is too long for HAProxy: its socket {longest} "
                f"has {len(str(longest))} characters, and HAProxy binds at most "
                f"{SOCKET_PATH_MAX}; choose a shorter directory"
            )

    # --- process -------------------------------------------------------------------------------

    def _pid(self) -> int | None:
        """The master's pid from its pid file, or else from ``/proc`` (its command line).

        A reloading master rewrites its pid file, which is missing for an instant (its CLI is
        silent then too: the master re-executes itself, keeping its pid). A step that read the
        file then would start a second HAProxy (soft-stopping the first) instead of reloading.
        """
        pid = super()._pid()
        if pid is not None or not self.managed:
            return pid
        return self._master_by_cmdline()

    def _master_by_cmdline(self) -> int | None:
        """The one live HAProxy run with ``-p <our pid file>`` whose parent is not.

        A worker's parent is its master. None when there is no such master, or more than one.
        """
        ours = str(self.pidfile).encode()
        parents: dict[int, int] = {}
        for pid, parent in live_processes().items():
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            named = any(a == b"-p" and b == ours for a, b in itertools.pairwise(args))
            if named and args[0].endswith(b"haproxy"):
                parents[pid] = parent
        masters = [pid for pid, parent in parents.items() if parent not in parents]
        return masters[0] if len(masters) == 1 else None

    def running(self) -> bool:
        """True when the admin socket answers (and, for Moorage's own HAProxy, its master lives)."""
        if self.managed and self._pid() is None:
            return False
        try:
            self.command("show info")
        except RouterError:
            return False
        return True

    def _write(self, state: RouterState, *, check: bool = True) -> None:
        """Write the config HAProxy starts from; ``haproxy -c`` checks it first when ``check``.

        A change of servers only (their ``server`` lines: names and addresses Moorage made) is
        written unchecked: the runtime API has just taken the same change, and ``haproxy -c``
        costs ~50 ms on every replica of a roll.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        text = render_config(state, self.dir, self.bind)
        tmp = self.config.with_suffix(".cfg.new")
        tmp.write_text(text)
        if check:
            result = subprocess.run(
                [HAPROXY, "-c", "-f", str(tmp)], capture_output=True, text=True, check=False
            )
            if result.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise RouterError(f"haproxy -c refused the config: {check_alerts(result)}")
        replace_durably(tmp, self.config)

    def start(self, state: RouterState) -> None:
        """Write the config and start HAProxy (master-worker) in a session of its own.

        Raises:
            ListenPortTaken: HAProxy could not bind a listen port.
            RouterError: HAProxy exited at its start (its ALERT lines say why).
            ProxyUnavailable: it did not serve in time (it is stopped again).
        """
        self._write(state)
        # A master may live on whose admin socket does not answer (its socket file removed, or
        # its worker stuck), or one of an older Moorage (no master CLI, output to /dev/null):
        # it is soft-stopped once the new one serves, or it would keep serving stale routes on
        # the same ports (SO_REUSEPORT) beside the new one.
        stale = self._pid()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        mark = self._log_mark()
        with self.log.open("ab") as log:
            # In the foreground (not -D, which sends its output to /dev/null), in a session of
            # its own: a signal to the worker's process group does not reach it, and it runs on
            # when the worker exits.
            launched = subprocess.Popen(
                [
                    HAPROXY,
                    "-W",
                    "-S",
                    f"{self.master_socket},mode,600",
                    "-f",
                    str(self.config),
                    "-p",
                    str(self.pidfile),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._launched = launched
        try:
            self._wait_ready(state, mark, launched=launched)
        except BaseException:
            # Not serving: it goes, its workers with it, and the pid file names the stale master
            # again (if one lives), which serves on and is found at the next step.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(launched.pid, signal.SIGKILL)
            launched.wait()
            if stale is not None and process_alive(stale):
                tmp = self.pidfile.with_suffix(".pid.new")
                tmp.write_text(f"{stale}\n")
                os.replace(tmp, self.pidfile)
            raise
        if stale is not None and stale != launched.pid:
            # SIGUSR1: stop listening, let the connections it has finish, exit.
            with contextlib.suppress(ProcessLookupError):
                os.kill(stale, signal.SIGUSR1)

    def publish(self, state: RouterState) -> None:
        """Write the (checked) config an HAProxy run outside Moorage starts from."""
        self._write(state)

    def _log_mark(self) -> int:
        """Where HAProxy's next output begins in ``haproxy.log`` (emptied first when too long)."""
        try:
            size = self.log.stat().st_size
        except FileNotFoundError:
            return 0
        if size > LOG_LIMIT:
            os.truncate(self.log, 0)  # HAProxy writes with O_APPEND: its next line lands at 0
            return 0
        return size

    def _said(self, mark: int | None, pid: int | None) -> list[str]:
        """The lines process ``pid`` wrote to ``haproxy.log`` since ``mark``.

        Every line names its process: ``[ALERT]    (1234) : ...``. Lines of other processes (a
        stale master, workers, old workers still draining) say nothing of this start or reload.
        """
        if mark is None or pid is None:
            return []
        try:
            with self.log.open("rb") as f:
                f.seek(mark)
                text = f.read().decode(errors="replace")
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if f"({pid}) :" in line]

    def _proc_counts(self) -> MasterInfo | None:
        """The master's pid, reloads and failed reloads (``show proc``), None if it is silent."""
        try:
            answer = self._talk(self.master_socket, "show proc", timeout=1.0)
        except RouterError:
            return None
        found = re.search(r"^(\d+)\s+master\s+(\d+) \[failed: (\d+)\]", answer, re.M)
        if not found:
            return None
        return MasterInfo(int(found.group(1)), int(found.group(2)), int(found.group(3)))

    def _wait_ready(
        self,
        state: RouterState,
        mark: int | None,
        *,
        launched: subprocess.Popen[bytes] | None = None,
        master: int | None = None,
        before: MasterInfo | None = None,
    ) -> None:
        """Wait until HAProxy serves exactly ``state``'s routes.

        For a start, ``launched`` is the new master: it must serve, answer on its CLI (a reload
        signal sent before the master handles signals would be lost) and own the pid file; it
        failed if it exited. For a reload, ``before`` is the master's (reloads, failed reloads)
        before it, when its CLI answered: the reload is done once the count went up and the new
        config serves (an earlier attempt's reload may serve the same routes already), and it
        failed once the failed count went up. ``master``: the pid whose lines in ``haproxy.log``
        since ``mark`` say why (None: an HAProxy run outside Moorage, whose output Moorage does
        not see).

        Raises:
            ListenPortTaken: HAProxy could not bind a listen port.
            RouterError: HAProxy could not load the config; the old one (if any) keeps serving.
            ProxyUnavailable: it did not serve the config in time and said nothing why.
        """
        deadline = time.monotonic() + READY_TIMEOUT_S
        wanted = {r.backend for r in state.routes.values()}
        pauses = poll_pauses()
        if launched is not None:
            master = launched.pid
        while True:
            heartbeat("waiting for haproxy's new config")  # up to 10 s: the heartbeat timeout
            counts = self._proc_counts() if launched is not None or before is not None else None
            try:
                # Exactly: a reload that deleted a route is done once its backend is gone too.
                serving = {b for b in self.served_backends() if b.startswith("be_")} == wanted
            except RouterError:
                serving = False
            if launched is not None:
                # Its own CLI (until it binds master.sock, the path may be a stale master's).
                done = (
                    serving
                    and counts is not None
                    and counts.pid == launched.pid
                    and self._pid() == launched.pid
                )
                failed = launched.poll() is not None
            elif before is not None:
                done = serving and counts is not None and counts.reloads > before.reloads
                failed = counts is not None and counts.failed > before.failed
            else:
                done, failed = serving, False
            if master is not None and launched is None and not process_alive(master):
                raise ProxyUnavailable("haproxy's master exited during the reload")
            said = self._said(mark, master)
            failed = failed or any("Loading failure" in line for line in said)
            if done and not failed:
                return
            if failed:
                self._refused(mark, master, launched is not None)
            if time.monotonic() > deadline:
                raise ProxyUnavailable(
                    f"haproxy did not serve the new config within {READY_TIMEOUT_S:.0f} s"
                    + (f"; it said: {' | '.join(said[-10:])}" if said else "")
                )
            time.sleep(next(pauses))

    def _refused(self, mark: int | None, master: int | None, start: bool) -> NoReturn:
        """Raise HAProxy's refusal of a start or reload, quoting its ALERT lines.

        A failed reload's count goes up before the master has said all: its lines are read
        again until its last one ("Loading failure!"), for up to a second.

        Raises:
            ListenPortTaken: HAProxy could not bind a listen port.
            RouterError: any other refusal.
        """
        until = time.monotonic() + 1.0
        said = self._said(mark, master)
        while (
            mark is not None
            and not start
            and not any("Loading failure" in line for line in said)
            and time.monotonic() < until
        ):
            time.sleep(0.02)
            said = self._said(mark, master)
        why = alerts("\n".join(said)) or "see its log"
        if "Address already in use" in why:
            raise ListenPortTaken(f"haproxy could not bind: {why}")
        raise RouterError(f"haproxy could not {'start' if start else 'load the new config'}: {why}")

    def reload(self, state: RouterState) -> None:
        """Graceful reload (master-worker): listening sockets handed over, old worker drains.

        Moorage's own HAProxy gets SIGUSR2; one run outside Moorage gets ``reload`` on its master
        CLI (it may live in another pid namespace, a container's). One an older Moorage started
        (``-D``: no master CLI, its output lost) is replaced by a new one instead.

        Raises:
            ListenPortTaken: HAProxy could not bind a listen port; the old config keeps serving.
            RouterError: HAProxy could not load the new config; the old one keeps serving.
            ProxyUnavailable: the master CLI of an HAProxy run outside Moorage does not answer,
                or the new config did not serve in time.
        """
        before = self._proc_counts()
        if not self.managed:
            self._talk(self.master_socket, "reload")
            self._wait_ready(state, None, before=before)
            return
        pid = self._pid()
        if pid is None or (before is None and _daemonized(pid)):
            self.start(state)
            return
        mark = self._log_mark()
        try:
            os.kill(pid, signal.SIGUSR2)
        except ProcessLookupError as exc:
            raise ProxyUnavailable("haproxy's master exited before its reload") from exc
        self._wait_ready(state, mark, master=pid, before=before)

    def stop(self) -> None:
        """Stop Moorage's own HAProxy (and reap it, when this process started it)."""
        super().stop()
        if self._launched is not None:
            self._launched.poll()

    # --- runtime API ---------------------------------------------------------------------------

    def command(self, cmd: str) -> str:
        """One runtime API command; returns HAProxy's answer.

        Raises:
            RouterError: the socket does not answer.
        """
        return self._talk(self.socket, cmd)

    @staticmethod
    def _talk(path: Path, cmd: str, timeout: float = 5.0) -> str:
        """One command on one of HAProxy's sockets (admin, or the master CLI); its answer.

        Raises:
            ProxyUnavailable: the socket does not answer.
        """
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(path))
                s.sendall(cmd.encode() + b"\n")
                s.shutdown(socket.SHUT_WR)  # the master CLI answers, then waits for more
                chunks = []
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    chunks.append(chunk)
        except OSError as exc:
            raise ProxyUnavailable(f"haproxy socket {path.name}: {exc}") from exc
        return b"".join(chunks).decode(errors="replace")

    def _ok(self, cmd: str, *accept: str) -> str:
        answer = self.command(cmd).strip()
        if answer and not any(a in answer for a in accept):
            raise RouterError(f"{cmd!r}: {answer}")
        return answer

    def _all_stats(self) -> dict[str, dict[str, dict[str, str]]]:
        """``show stat``: backend → server name → row (FRONTEND and BACKEND rows left out)."""
        return _stat_rows(self.command("show stat"))

    def _old_workers(self) -> list[int]:
        """The pids of HAProxy's old workers ([] when the master CLI does not answer).

        A reload's old worker serves on the connections it had: an in-flight request, the next
        request of an idle keep-alive connection.
        """
        try:
            answer = self._talk(self.master_socket, "show proc", timeout=1.0)
        except RouterError:
            return []
        section = answer.partition("# old workers")[2].partition("#")[0]
        words = (line.split() for line in section.splitlines())
        return [int(w[0]) for w in words if w and w[0].isdigit()]

    def _held_by_old_workers(
        self, servers: list[tuple[str, str]], pids: list[int]
    ) -> set[tuple[str, str]]:
        """Servers (``(backend, server)``) an old worker may still send a request to.

        An old worker runs the config of before its reload: runtime changes since (a drain, a
        deletion) reach only the current worker, and the old one refuses them ("Proxy is
        disabled"). It may send to a server it has while its route's frontend holds a
        connection; once it holds none, it sends nothing more.
        """
        held: set[tuple[str, str]] = set()
        for pid in pids:
            try:
                rows = _stat_rows(
                    self._talk(self.master_socket, f"@!{pid} show stat", timeout=1.0),
                    frontends=True,
                )
            except RouterError:  # exited meanwhile
                continue
            for be, name in servers:
                front = rows.get(f"fe_{be[3:]}", {}).get("FRONTEND", {})
                if name in rows.get(be, {}) and int(front.get("scur") or 0) > 0:
                    held.add((be, name))
        return held

    def _stats(self, backend: str) -> dict[str, dict[str, str]]:
        return self._all_stats().get(backend, {})

    def configured_port(self, backend: str) -> int | None:
        """The ``bind`` port of the route's frontend in the config file."""
        text = self.config.read_text() if self.config.exists() else ""
        found = re.search(rf"^frontend fe_{re.escape(backend[3:])}\n\s+bind \S+:(\d+)$", text, re.M)
        return int(found.group(1)) if found else None

    def configured_backends(self) -> set[str]:
        """The ``backend`` sections of the config file."""
        text = self.config.read_text() if self.config.exists() else ""
        return set(re.findall(r"^backend (\S+)$", text, re.M))

    def known_servers(self, route: RouteState) -> set[str]:
        """Every server of the route's backend, whatever its state."""
        return set(self._stats(route.backend))

    def live_servers(self, route: RouteState) -> dict[str, int]:
        """Servers HAProxy routes to for ``route`` (name → weight; draining ones weigh 0).

        A server its check marked DOWN is left out: HAProxy sends it nothing.
        """
        result = {}
        for name, row in self._stats(route.backend).items():
            if row.get("status", "").startswith(("MAINT", "DOWN")):
                continue
            weight = 0 if row.get("status", "").startswith("DRAIN") else int(row.get("weight") or 0)
            result[name] = weight
        return result

    def _refuse_taken_ports(self, old: RouterState, new: RouterState) -> None:
        """Refuse, before the reload, a route's port another process listens on.

        A reload HAProxy cannot bind pauses every frontend it runs while it tries (~2 s of
        refused connections on every route, measured) before it gives up. The router found a
        new route's port free, but the port of a route a killed attempt got into the config is
        taken as it is, and another process may have bound one since. A port is fine when it
        is free or HAProxy serves its route already.

        Raises:
            ListenPortTaken: a route's port is taken and HAProxy does not serve that route.
        """
        served: set[str] | None = None
        for route in new.routes.values():
            if port_free(self.bind, route.port):
                continue
            if served is None:
                served = self.served_backends()
            # HAProxy's own: the port of a route it serves, here given to another of the
            # project's services (a swap or a hand-over of published ports).
            ours = any(r.port == route.port and r.backend in served for r in old.routes.values())
            if route.backend not in served and not ours:
                raise ListenPortTaken(
                    f"port {route.port} on {self.bind} is taken by another process "
                    "(HAProxy was not reloaded)"
                )

    def served_backends(self) -> set[str]:
        """The backends HAProxy runs (its routes)."""
        lines = self.command("show backend").splitlines()  # "# name", then one per line
        return {line.strip() for line in lines if line.strip() and not line.startswith("#")}

    def serves(self, backend: str) -> bool:
        """True when HAProxy runs the route of ``backend``."""
        return backend in self.served_backends()

    def change(self, old: RouterState, new: RouterState, draining: dict[str, list[str]]) -> Drain:
        """Runtime changes for servers; a graceful reload when routes come, go, move or change mode.

        Servers are compared with what HAProxy runs, not with ``old``: an attempt killed between
        its runtime commands and the save of the state leaves HAProxy ahead of (or, for a drain,
        apart from) the state on disk, and the next change sets it right. A wanted server that
        is missing is added, one left drained or in maintenance is made ready again, and one
        HAProxy has but ``new`` does not is drained (unless another change drains it now: see
        :attr:`RouterState.draining`). New servers go in before old ones go out; the servers
        taken out are left draining, for :class:`HAProxyDrain` to wait for and delete.

        Raises:
            RouterError: HAProxy refused a change or the config.
        """
        old_ports = {k: (r.port, r.mode) for k, r in old.routes.items()}
        new_ports = {k: (r.port, r.mode) for k, r in new.routes.items()}
        if old_ports != new_ports:
            self._refuse_taken_ports(old, new)
            # Servers a change takes out while routes come or go (another route brought back
            # with it, see TrafficRouter._view) drain too: in DRAIN before the reload, the
            # worker that becomes the old one sends them nothing new, and the drain waits for
            # what it holds.
            try:
                leaving = self._take_out(self._all_stats(), new, draining)
            except ProxyUnavailable:
                leaving = {}  # not answering: the reload starts it, from the config
            previous = self.config.read_text() if self.config.exists() else None
            self._write(new)
            try:
                self.reload(new)
            except ProxyUnavailable:
                raise  # not known to have failed: the retry reloads the same config
            except RouterError:
                # The old config keeps serving, and is what a restart comes back with (a route
                # it lacks must not be taken for one a killed attempt got into HAProxy).
                if previous is not None:
                    tmp = self.config.with_suffix(".cfg.new")
                    tmp.write_text(previous)
                    replace_durably(tmp, self.config)
                raise
            return HAProxyDrain(self, leaving)
        stats = self._all_stats()
        for route in new.routes.values():
            be = route.backend
            live = stats.get(be, {})
            for name, server in route.servers.items():
                row = live.get(name)
                if row is None:
                    row = self._add(be, name, server)
                self._converge(be, name, server, row)
        leaving = self._take_out(stats, new, draining)
        self._write(new, check=False)
        if self.managed:
            self._log_mark()  # its servers' state changes add to it between reloads
        return HAProxyDrain(self, leaving)

    def _take_out(
        self,
        stats: dict[str, dict[str, dict[str, str]]],
        new: RouterState,
        draining: dict[str, list[str]],
    ) -> dict[str, list[str]]:
        """Put in DRAIN the servers of ``new``'s routes HAProxy has and ``new`` does not list.

        Those ``draining`` names, and those a killed attempt left (unless another change drains
        them now); only servers HAProxy has (one a killed attempt deleted is gone).

        Returns:
            Route key -> the servers put in DRAIN.
        """
        leaving: dict[str, list[str]] = {}
        for key, route in new.routes.items():
            be = route.backend
            live = stats.get(be, {})
            extra = {
                n for n in live if n not in route.servers and not new.drained_by_another(key, n)
            }
            out = sorted(n for n in extra | set(draining.get(key, [])) if n in live)
            for name in out:
                self._ok(f"set server {be}/{name} state drain")
            if out:
                leaving[key] = out
        return leaving

    def _add(self, be: str, name: str, server: ServerState) -> dict[str, str]:
        """Register a server (it starts in maintenance); returns its stats row."""
        answer = self.command(
            f"add server {be}/{name} {server.address} weight {server.weight} {SERVER_CHECK}"
        ).strip()
        # "Already exists a server with the same name in backend.": another attempt got there.
        if (
            answer
            and "New server registered" not in answer
            and "already exists" not in answer.lower()
        ):
            raise RouterError(f"add server {be}/{name}: {answer}")
        row = self._stats(be).get(name)
        if row is None:
            raise RouterError(f"add server {be}/{name}: HAProxy does not list it afterwards")
        return row

    def _converge(self, be: str, name: str, server: ServerState, row: dict[str, str]) -> None:
        """Bring one running server to ``server``: address, weight, checked and ready."""
        if row.get("addr") != server.address:
            host, port = server.address.rsplit(":", 1)
            # "IP changed from ...", "port changed from ...", "no need to change the addr".
            self._ok(f"set server {be}/{name} addr {host} port {port}", "changed", "no need")
        if row.get("uweight") != str(server.weight):
            self._ok(f"set weight {be}/{name} {server.weight}")
        if row.get("status", "").startswith(("MAINT", "DRAIN")):
            # A server added at runtime starts with its check off and in maintenance; one a
            # killed attempt drained is in DRAIN or MAINT. A server from a config written before
            # checks existed answers "not configured" and stays unchecked until HAProxy restarts.
            self._ok(f"enable health {be}/{name}", "not configured")
            self._ok(f"set server {be}/{name} state ready")

    def _delete(self, be: str, name: str) -> None:
        """Take a drained server out of HAProxy (maintenance, its sessions shut, deleted)."""
        heartbeat(f"deleting {name}")
        self._ok(f"set server {be}/{name} state maint")
        for _ in range(20):
            self.command(f"shutdown sessions server {be}/{name}")
            answer = self.command(f"del server {be}/{name}").strip()
            if "Server deleted" in answer or "No such server" in answer or not answer:
                return
            time.sleep(0.05)
        # "Server still has connections attached to it": HAProxy 2.6 with `retry-on
        # empty-response` does not cut a stream that waits for its answer. In maintenance the
        # server gets no new request; the stop of its container ends the one in flight (within
        # the grace period), and a later router change deletes the server (change() drains
        # what HAProxy has and the state does not).


class HAProxyDrain(Drain):
    """Servers a change left draining in HAProxy: waited for side by side, then deleted.

    They drained one after the other, each up to the drain timeout: a switch that took out four
    replicas holding long requests waited four times as long.
    """

    def __init__(self, haproxy: HAProxyBackend, servers: dict[str, list[str]]):
        super().__init__()
        self.haproxy = haproxy
        self.servers = servers

    def wait(self) -> None:
        """Until no server has a session left (nor an old worker a connection that may use it)."""
        busy = [(backend_name(key), n) for key, names in self.servers.items() for n in names]
        if not busy:
            return
        haproxy = self.haproxy
        deadline = drain_deadline(haproxy.drain_timeout_s)
        beat = paced_heartbeat()  # the drain may outlast the heartbeat timeout
        pauses = poll_pauses()
        while busy and time.monotonic() < deadline:
            try:
                stats = haproxy._all_stats()
            except ProxyUnavailable:
                # Another change's reload: the new worker binds the admin socket in a moment.
                beat("draining: haproxy reloads")
                time.sleep(next(pauses))
                continue
            # A reload's old worker still sends to the servers it has; the container's stop
            # would cut what it sends (a request on an idle keep-alive connection it holds: 503).
            # Asked every time: another change may reload HAProxy during this drain (the new
            # worker lacks the servers; the old one holds their requests in flight).
            old = haproxy._old_workers()
            held = haproxy._held_by_old_workers(busy, old) if old else set()
            busy = [
                (be, name)
                for be, name in busy
                if int(stats.get(be, {}).get(name, {}).get("scur") or 0) > 0 or (be, name) in held
            ]
            if busy:
                beat(f"draining {', '.join(n for _, n in busy)}")
                time.sleep(next(pauses))

    def remove(self, servers: dict[str, list[str]]) -> None:
        """Delete those of ``servers`` HAProxy still has.

        A restart or a reload since dropped the others (the config does not name them).
        """
        known = self.haproxy._all_stats()
        for key, names in servers.items():
            be = backend_name(key)
            for name in names:
                if name in known.get(be, {}):
                    self.haproxy._delete(be, name)
