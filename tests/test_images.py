"""The demo images' busybox: only a static one runs in them (they hold no C library)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from moorage import images


def test_only_a_static_busybox_is_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dynamic busybox (Debian's ``busybox``) was taken as well: the demo images got a binary
    that cannot run without its libraries, and every demo container failed to start."""
    static = images.find_busybox()
    assert images.is_static(static)
    dynamic = Path(shutil.which("sh") or "/bin/sh").resolve()
    assert not images.is_static(dynamic)
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    assert not images.is_static(text)
    # Only a dynamic one where busybox is looked for: refused, naming the package.
    fake = tmp_path / "busybox"
    shutil.copy(dynamic, fake)
    monkeypatch.setattr(images, "BUSYBOX_CANDIDATES", (str(fake),))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="apt-get install busybox-static"):
        images.find_busybox()
