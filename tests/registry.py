"""A registry (Docker Registry HTTP API v2, pull only) the engine pulls a demo image from.

No registry is reachable here, and a test of a pull needs one: this serves one image, the demo
image's busybox rootfs as a gzipped layer with its config, under any name, on 127.0.0.1 (the
engine pulls from loopback over plain HTTP). It can answer a manifest with 500 a few times, 404,
or a refusal (401, 403), and trickle the layer out slowly.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moorage.images import HEALTHY, _rootfs_tar

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Behaviour:
    """How the registry answers."""

    manifest_errors: int = 0
    """Answer this many manifest requests with 500 first (a pull asks HEAD, and GET if that
    failed: two per failed pull)."""
    missing: bool = False
    """Answer every manifest request with 404 (MANIFEST_UNKNOWN)."""
    refuse: tuple[int, str, str] | None = None
    """Answer every manifest request with this status, error code and message (the registry
    will not give the image: ``(403, "DENIED", "requested access to the resource is denied")``)."""
    layer_seconds: float = 0.0
    """Send the layer over this long, in small pieces."""
    manifest_requests: list[str] = field(default_factory=list)
    """``METHOD path`` of every manifest request (the engine asks HEAD, then GET)."""


def _image(version: str) -> tuple[bytes, dict[str, bytes]]:
    """The manifest, and the blobs by digest, of the demo image ``version``."""
    # A layer of its own: one the engine has (the imported demo image's) is not downloaded.
    buf = io.BytesIO(_rootfs_tar(version, "serve"))
    with tarfile.open(fileobj=buf, mode="a") as tar:
        nonce = uuid.uuid4().hex.encode()
        info = tarfile.TarInfo("etc/registry-nonce")
        info.size = len(nonce)
        tar.addfile(info, io.BytesIO(nonce))
    layer = buf.getvalue()
    gz = gzip.compress(layer, compresslevel=1)
    health = HEALTHY.removeprefix("HEALTHCHECK ").split(" CMD ", 1)[1]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Cmd": ["/init.sh"],
                "Env": ["PATH=/bin", "MOORAGE_DEMO_MODE=serve"],
                "ExposedPorts": {"80/tcp": {}},
                "Healthcheck": {
                    "Test": ["CMD-SHELL", health],
                    "Interval": 1_000_000_000,
                    "Timeout": 2_000_000_000,
                    "Retries": 3,
                },
            },
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
            "history": [{"created_by": "tests/registry.py"}],
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(gz),
                    "digest": _digest(gz),
                }
            ],
        }
    ).encode()
    return manifest, {_digest(config): config, _digest(gz): gz}


class Registry:
    """Serve the demo image until closed: ``with Registry("v1") as reg: reg.ref("name", "tag")``."""

    def __init__(self, version: str = "v1", behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.manifest, self.blobs = _image(version)
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET(body=False)

            def do_GET(self, body: bool = True) -> None:
                registry.answer(self, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ref(self, name: str, tag: str = "latest") -> str:
        """The image reference the engine pulls."""
        return f"127.0.0.1:{self.port}/{name}:{tag}"

    def answer(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/v2/":
            return self._send(req, 200, b"{}", "application/json", body)
        if "/manifests/" in path:
            b = self.behaviour
            b.manifest_requests.append(f"{req.command} {path}")
            if b.refuse is not None:
                status, code, message = b.refuse
                error = {"errors": [{"code": code, "message": message}]}
                return self._send(req, status, json.dumps(error).encode(), "application/json", body)
            if b.missing:
                error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                return self._send(req, 404, json.dumps(error).encode(), "application/json", body)
            if b.manifest_errors > 0:
                b.manifest_errors -= 1
                return self._send(req, 500, b"overloaded", "text/plain", body)
            return self._send(req, 200, self.manifest, MANIFEST_TYPE, body, _digest(self.manifest))
        if "/blobs/" in path:
            digest = path.rsplit("/", 1)[1]
            blob = self.blobs.get(digest)
            if blob is None:
                return self._send(req, 404, b"", "text/plain", body)
            slow = self.behaviour.layer_seconds if len(blob) > 10_000 else 0.0
            return self._send(req, 200, blob, "application/octet-stream", body, digest, slow)
        return self._send(req, 404, b"", "text/plain", body)

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        status: int,
        data: bytes,
        content_type: str,
        body: bool,
        digest: str | None = None,
        over_s: float = 0.0,
    ) -> None:
        req.send_response(status)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(data)))
        req.send_header("Docker-Distribution-API-Version", "registry/2.0")
        if digest:
            req.send_header("Docker-Content-Digest", digest)
        req.end_headers()
        if not body:
            return
        if over_s <= 0:
            req.wfile.write(data)
            return
        pieces = 50
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            req.wfile.write(data[start : start + step])
            req.wfile.flush()
            time.sleep(over_s / pieces)

    def __enter__(self) -> Registry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
