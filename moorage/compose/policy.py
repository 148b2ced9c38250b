"""What a tenant may use beyond the safe default: :class:`ComposePolicy` and its helpers."""

from __future__ import annotations

import posixpath
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

SAFE_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SYS_CHROOT",
        "MKNOD",
        "AUDIT_WRITE",
        "SETFCAP",
    }
)
"""Capabilities ``cap_add`` may always name: Docker grants them by default, so re-adding one (after
a ``cap_drop: [ALL]``) gives nothing a default container does not have."""
POLICY_HINT = "allowed per tenant with MOORAGE_TENANT_POLICIES"

_CAPABILITY_RE = re.compile(r"^[A-Z][A-Z0-9_]*$")


class ComposePolicy(BaseModel):
    """What an operator allows one tenant beyond the safe default.

    The default policy refuses everything that could hand a container the host.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    privileged: bool = False
    """Allow ``privileged: true`` (root on the host)."""
    cap_add: list[str] = Field(default_factory=list)
    """Capabilities ``cap_add`` may name beyond :data:`SAFE_CAPABILITIES` (e.g. ``NET_ADMIN``)."""
    bind_paths: list[str] = Field(default_factory=list)
    """Absolute host path prefixes that may be bind-mounted: a path is allowed when it equals a
    prefix or lies below one once normalised; ``/`` allows every path."""
    devices: list[str] = Field(default_factory=list)
    """Host device paths ``devices`` may name (e.g. ``/dev/fuse``)."""
    unrestricted: bool = False
    """Allow everything above (a fully trusted tenant). The project workflow parses with it:
    the text it holds was checked against the tenant's policy when it was submitted."""

    @field_validator("cap_add")
    @classmethod
    def _normalise_capabilities(cls, value: list[str]) -> list[str]:
        names = []
        for item in value:
            name = normalise_capability(item)
            if name is None:
                raise ValueError(f"{item!r} is not a capability name")
            names.append(name)
        return names

    @field_validator("bind_paths", "devices")
    @classmethod
    def _normalise_paths(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.startswith("/"):
                raise ValueError(f"{item!r} is not an absolute path")
        return [normalise_host_path(item) for item in value]

    def allows_path(self, path: str) -> bool:
        """Whether ``path`` (normalised) is equal to or below one of ``bind_paths``."""
        return self.unrestricted or any(
            prefix == "/" or path == prefix or path.startswith(prefix + "/")
            for prefix in self.bind_paths
        )


def normalise_capability(name: str) -> str | None:
    """``cap_chown`` / ``CAP_CHOWN`` / ``chown`` → ``CHOWN``; None when not a capability name."""
    upper = name.strip().upper()
    upper = upper.removeprefix("CAP_")
    return upper if _CAPABILITY_RE.match(upper) else None


def normalise_host_path(path: str) -> str:
    """Collapse ``.``, ``..`` and repeated slashes of an absolute host path.

    ``..`` cannot climb above ``/``, so ``/srv/data/../../etc`` is ``/etc``.
    """
    norm = posixpath.normpath(path)
    # POSIX lets normpath keep a leading '//'; the kernel (and Docker) read it as '/'.
    return "/" + norm.lstrip("/")


UNRESTRICTED = ComposePolicy(unrestricted=True)
"""The policy of text that was already checked against its tenant's policy."""
