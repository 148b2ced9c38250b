"""Demo and test images that need no registry: a busybox-static rootfs, ``docker import``-ed.

``moorage-demo:<version>`` serves ``/`` with busybox httpd (the page says the version) and has a
1 s HEALTHCHECK. Variants: ``unhealthy`` (its health check always fails) and ``crash`` (exits at
once). A tiny ``sh`` init traps TERM, so ``docker stop`` takes ~0.2 s instead of the whole grace
period (busybox httpd as PID 1 ignores SIGTERM).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import tarfile
from pathlib import Path

import docker

REPOSITORY = "moorage-demo"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
APPLETS = (
    "sh",
    "httpd",
    "wget",
    "sleep",
    "cat",
    "echo",
    "kill",
    "true",
    "false",
    "ls",
    "nc",
    "hostname",
    "rm",
)

INIT = """#!/bin/sh
# PID 1: run httpd, exit promptly on TERM/INT.
trap 'kill $pid 2>/dev/null; exit 0' TERM INT
if [ "$MOORAGE_DEMO_MODE" = crash ]; then
  echo "demo: crashing on purpose" >&2
  exit 3
fi
if [ -n "$DEMO_FAIL_HOST" ] && [ "$(hostname)" = "$DEMO_FAIL_HOST" ]; then
  # A replica that never gets healthy (tests pick it by hostname, i.e. by slot).
  echo "demo: $(hostname) will never get healthy" >&2
  sleep 1000000 &
  pid=$!
  wait $pid
  exit 0
fi
if [ -n "$DEMO_FAIL_AFTER" ]; then
  # Healthy at first, unhealthy after N seconds (the page the health check reads goes away).
  (sleep "$DEMO_FAIL_AFTER"; rm -f /www/index.html; echo "demo: now failing on purpose" >&2) &
fi
echo "demo: serving version $(cat /www/version) on :80"
httpd -f -p 80 -h /www &
pid=$!
wait $pid
"""

HEALTHY = (
    "HEALTHCHECK --interval=1s --timeout=2s --retries=3 "
    "CMD wget -q -O /dev/null http://127.0.0.1/ || exit 1"
)
NEVER_HEALTHY = "HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD exit 1"


def find_busybox() -> Path:
    """The static busybox binary (Debian's ``busybox-static``).

    A dynamic one (Debian's ``busybox``, which ``initramfs-tools`` recommends) does not run in a
    demo image, which holds no C library: its containers never started.

    Raises:
        FileNotFoundError: no static busybox is installed.
    """
    found = shutil.which("busybox")
    for candidate in (*BUSYBOX_CANDIDATES, *([found] if found else [])):
        path = Path(candidate)
        if path.exists() and is_static(path):
            return path
    raise FileNotFoundError("no static busybox found: apt-get install busybox-static")


def is_static(path: Path) -> bool:
    """Whether an ELF executable needs no program interpreter (no ``PT_INTERP`` header)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF":
        return False
    wide = data[4] == 2  # ELFCLASS64
    order = "<" if data[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 0x2A)
    for i in range(phnum):
        (kind,) = struct.unpack_from(order + "I", data, phoff + i * phentsize)
        if kind == 3:  # PT_INTERP
            return False
    return True


def _rootfs_tar(version: str, mode: str) -> bytes:
    busybox = find_busybox().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode_bits: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode_bits
            tar.addfile(info, io.BytesIO(data))

        for d in ("bin", "www", "tmp", "etc"):
            add_dir(d)
        add_file("bin/busybox", busybox, 0o755)
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        add_file("init.sh", INIT.encode(), 0o755)
        add_file("www/version", f"{version}\n".encode())
        add_file("www/index.html", f"moorage-demo {version}\n".encode())
        add_file("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n")
    return buf.getvalue()


VARIANTS: dict[str, tuple[str, str]] = {
    # tag → (health check, mode)
    "v1": (HEALTHY, "serve"),
    "v2": (HEALTHY, "serve"),
    "v3": (HEALTHY, "serve"),
    "unhealthy": (NEVER_HEALTHY, "serve"),
    "crash": (HEALTHY, "crash"),
}


def build_id(tag: str) -> str:
    """A fingerprint of what goes into an image: a changed recipe rebuilds it."""
    health, mode = VARIANTS[tag]
    return hashlib.sha256(f"{INIT}|{health}|{mode}|{APPLETS}".encode()).hexdigest()[:16]


def build_image(client: docker.DockerClient, tag: str, health: str, mode: str) -> str:
    """Import one demo image; returns its reference."""
    ref = f"{REPOSITORY}:{tag}"
    changes = [
        f"LABEL moorage.demo-build={build_id(tag)}",
        'CMD ["/init.sh"]',
        "ENV PATH=/bin",
        f"ENV MOORAGE_DEMO_MODE={mode}",
        "EXPOSE 80",
        health,
    ]
    client.api.import_image_from_data(
        _rootfs_tar(tag, mode), repository=REPOSITORY, tag=tag, changes=changes
    )
    return ref


def build_all(client: docker.DockerClient | None = None, force: bool = False) -> list[str]:
    """Import every demo image that is not on the engine yet (all of them with ``force``)."""
    client = client or docker.from_env()
    built = []
    for tag, (health, mode) in VARIANTS.items():
        ref = f"{REPOSITORY}:{tag}"
        if not force:
            try:
                labels = client.images.get(ref).labels or {}
                if labels.get("moorage.demo-build") == build_id(tag):
                    continue
            except docker.errors.ImageNotFound:
                pass
        built.append(build_image(client, tag, health, mode))
    return built
