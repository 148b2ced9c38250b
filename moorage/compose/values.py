"""Scalar values of a Compose file: durations, memory sizes, CPUs, pids, strings, mappings.

Also the resource limits of a service (``mem_limit``, ``cpus``, ``pids_limit`` and
``deploy.resources.limits``), which are made of these values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Set
from typing import Any

from moorage.compose.errors import (
    MAX_CPUS,
    MAX_DURATION_S,
    MAX_MEMORY_BYTES,
    MAX_PIDS,
    MIN_MEMORY_BYTES,
    ComposeError,
    strict,
)
from moorage.compose.models import ServiceSpec

_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_MEMORY_RE = re.compile(r"(\d+(?:\.\d+)?) ?(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
_MEMORY_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_MAX_FLOAT_SECONDS = 10**300
"""Integers above this are no duration worth converting (every cap is far below it)."""


class YamlWord(str):
    """A plain ``yes``/``no``/``on``/``off`` (any case): a boolean in YAML 1.1, text in YAML 1.2.

    PyYAML reads YAML 1.1; Docker Compose (go-yaml v3) reads YAML 1.2, where these are text:
    ``command: [echo, yes]`` runs ``echo yes`` and ``DEBUG: on`` sets ``on``. Where a key wants
    a boolean, Compose converts them (``privileged: yes`` is true): :func:`boolean`.
    """

    __slots__ = ()


_YAML_TRUE = frozenset({"yes", "on"})


def yaml_bool(value: Any) -> bool | None:
    """``value`` as the boolean a key that wants one reads; None if it is none."""
    if isinstance(value, bool):
        return value
    if isinstance(value, YamlWord):
        return value.lower() in _YAML_TRUE
    return None


def boolean(value: Any, *, service: str | None, key: str) -> bool:
    """A key's boolean: ``true``/``false``, or a YAML 1.1 word (:class:`YamlWord`).

    Raises:
        ComposeError: anything else, naming the key.
    """
    result = yaml_bool(value)
    if result is None:
        raise ComposeError("must be true or false", service=service, key=key)
    return result


def _shown(value: Any, limit: int = 40) -> str:
    """``repr(value)``, shortened: an error must not quote a value of thousands of digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"a number of over {limit} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def _duration_text(seconds: float) -> str:
    """``3600`` → ``1h``, ``0.01`` → ``10ms``: a cap as a Compose duration."""
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0), ("ms", 1e-3)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds / 1e-6:g}us"


def parse_duration(
    value: Any,
    *,
    service: str,
    key: str,
    maximum: float,
    minimum: float = 0.0,
    zero: bool = True,
) -> float:
    """Parse a Compose duration (``1m30s``, ``500ms``, ``10``) into seconds.

    Args:
        value: the value from the Compose file.
        service: the service it belongs to.
        key: the key it was given under, for the error.
        maximum: the largest duration the key takes, in seconds (every key has one: a larger
            value would only fail inside the deployment's workflow).
        minimum: the smallest duration other than 0 the key takes.
        zero: whether the key takes 0.

    Raises:
        ComposeError: not a duration, 0 where the key needs more, or outside the key's bounds.
    """
    seconds: float | None = None
    if isinstance(value, bool):
        raise ComposeError(f"{value!r} is not a duration", service=service, key=key)
    if isinstance(value, int | float):
        # YAML's .inf / .nan are floats too; they would crash the Docker call much later.
        if (isinstance(value, float) and not math.isfinite(value)) or value < 0:
            raise ComposeError(
                "a duration must be a finite, non-negative number", service=service, key=key
            )
        # An integer of hundreds of digits does not fit in a float (OverflowError).
        seconds = float(value) if value <= _MAX_FLOAT_SECONDS else math.inf
    elif isinstance(value, str):
        text = value.strip()
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            # float() of hundreds of digits is inf, not an error.
            seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if seconds is None:
        raise ComposeError(
            f"{_shown(value)} is not a duration like '10s' or '1m30s'", service=service, key=key
        )
    if not strict():  # a stored revision's: bounds added since must not refuse it
        if not math.isfinite(seconds):
            raise ComposeError(f"{_shown(value)} is too long", service=service, key=key)
        return seconds
    maximum = min(maximum, MAX_DURATION_S)
    if seconds > maximum:  # inf too
        raise ComposeError(
            f"{_shown(value)} is too long: at most {_duration_text(maximum)}",
            service=service,
            key=key,
        )
    if seconds == 0 and not zero:
        raise ComposeError(
            f"must be more than 0 (at least {_duration_text(minimum)})", service=service, key=key
        )
    if 0 < seconds < minimum:
        raise ComposeError(
            f"{_shown(value)} is too short: 0 or at least {_duration_text(minimum)}"
            if zero
            else f"{_shown(value)} is too short: at least {_duration_text(minimum)}",
            service=service,
            key=key,
        )
    return seconds


def _memory_bytes(value: Any, *, service: str | None, key: str) -> int:
    """A Docker memory size (``512m``, ``1g``, ``1.5GiB``, bytes as an integer) in bytes."""
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _MEMORY_RE.fullmatch(value.strip())):
        number, unit = match[1], _MEMORY_UNITS[(match[2] or "").lower()]
        whole, _, fraction = number.partition(".")
        whole = whole.lstrip("0") or "0"  # int() refuses over 4,300 digits, zeros too
        if len(whole) > len(str(MAX_MEMORY_BYTES)):
            size = MAX_MEMORY_BYTES + 1  # too large whatever the unit (float() would be inf)
        elif not fraction:
            size = int(whole) * unit  # whole numbers stay exact; Docker's units are binary
        else:
            size = int(float(number) * unit)
    if size is None:
        raise ComposeError(
            f"{_shown(value)} is not a memory size like '512m' or '1g'", service=service, key=key
        )
    if size > MAX_MEMORY_BYTES:
        raise ComposeError(f"{_shown(value)} is too large", service=service, key=key)
    return size


def parse_memory(value: Any, *, service: str | None, key: str) -> int:
    """Parse a memory limit the way Docker does, into bytes.

    Accepts an integer (bytes) or a number with a binary unit ``b``, ``k``, ``m``, ``g``, ``t``
    (case-insensitive, optionally followed by ``b`` or ``ib``: ``512m``, ``512MB``, ``512MiB``).

    Args:
        value: the value from the Compose file or a setting.
        service: the service it belongs to (None for a setting).
        key: the key it was given under, for the error.

    Returns:
        The size in bytes, at least :data:`MIN_MEMORY_BYTES`.

    Raises:
        ComposeError: not a memory size, or below Docker's 6 MiB minimum.
    """
    size = _memory_bytes(value, service=service, key=key)
    if size < MIN_MEMORY_BYTES:
        raise ComposeError(
            f"{value!r} is below Docker's minimum of 6 MiB ('6m')", service=service, key=key
        )
    return size


def _known_keys(
    value: Any,
    allowed: Set[str],
    *,
    service: str | None,
    key: str,
    refusal: str = "is not supported",
) -> dict[Any, Any]:
    """``value`` as a mapping whose keys are all in ``allowed``.

    Raises:
        ComposeError: not a mapping (at ``key``), or a key it does not allow (at ``key.k``).
    """
    if not isinstance(value, dict):
        raise ComposeError("must be a mapping", service=service, key=key)
    for k in value:
        if k not in allowed:
            raise ComposeError(refusal, service=service, key=f"{key}.{k}")
    return value


def _str_list(value: Any, *, service: str, key: str) -> list[str] | str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return [str(v) for v in value]
    raise ComposeError("must be a string or a list of strings", service=service, key=key)


def _mapping(value: Any, *, service: str | None, key: str) -> dict[str, str]:
    """Compose mapping-or-list (``environment``, ``labels``) → dict of strings."""
    result: dict[str, str] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None:
                raise ComposeError(
                    f"{k!r} has no value; Moorage does not read the server's environment",
                    service=service,
                    key=f"{key}.{k}",
                )
            if isinstance(v, dict | list):
                raise ComposeError("values must be strings", service=service, key=f"{key}.{k}")
            result[str(k)] = str(v).lower() if isinstance(v, bool) else str(v)
        return result
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                bare_name = isinstance(item, str) and item and "=" not in item
                raise ComposeError(
                    f"entry {item!r} must look like NAME=value; Moorage does not read the "
                    "server's environment",
                    service=service,
                    key=f"{key}.{item}" if bare_name else key,
                )
            k, v = item.split("=", 1)
            result[k] = v
        return result
    raise ComposeError("must be a mapping or a list of NAME=value", service=service, key=key)


def _cpus(value: Any, *, service: str, key: str) -> float:
    number: float | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        # float() of an integer of hundreds of digits raises OverflowError.
        number = float(value) if abs(value) <= MAX_CPUS else math.inf
    elif isinstance(value, float):
        number = value
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if number is None or not math.isfinite(number) or not 0.01 <= number <= MAX_CPUS:
        raise ComposeError(
            f"must be a number of CPUs from 0.01 to {MAX_CPUS:g}", service=service, key=key
        )
    return number


def _pids(value: Any, *, service: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_PIDS:
        raise ComposeError(f"must be an integer from 1 to {MAX_PIDS}", service=service, key=key)
    return value


def _parse_resources(raw: dict[str, Any], spec: ServiceSpec) -> None:
    """``mem_limit``, ``cpus``, ``pids_limit`` and ``deploy.resources.limits``."""
    name = spec.name
    if raw.get("mem_limit") is not None:
        spec.mem_limit_bytes = parse_memory(raw["mem_limit"], service=name, key="mem_limit")
    if raw.get("cpus") is not None:
        spec.cpus = _cpus(raw["cpus"], service=name, key="cpus")
    if raw.get("pids_limit") is not None:
        spec.pids_limit = _pids(raw["pids_limit"], service=name, key="pids_limit")
    deploy = raw.get("deploy")
    resources = deploy.get("resources") if isinstance(deploy, dict) else None
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise ComposeError("must be a mapping", service=name, key="deploy.resources")
    for k in resources:
        if k == "reservations":
            raise ComposeError(
                "is not supported: Moorage sets limits (deploy.resources.limits), not reservations",
                service=name,
                key="deploy.resources.reservations",
            )
        if k != "limits":
            raise ComposeError(
                "is not supported by Moorage", service=name, key=f"deploy.resources.{k}"
            )
    limits = resources.get("limits")
    if limits is None:
        return
    if not isinstance(limits, dict):
        raise ComposeError("must be a mapping", service=name, key="deploy.resources.limits")
    parsers: tuple[tuple[str, str, str, Callable[..., float]], ...] = (
        ("memory", "mem_limit", "mem_limit_bytes", parse_memory),
        ("cpus", "cpus", "cpus", _cpus),
        ("pids", "pids_limit", "pids_limit", _pids),
    )
    known = {p[0] for p in parsers}
    for k in limits:
        if k not in known:
            raise ComposeError(
                "is not supported by Moorage", service=name, key=f"deploy.resources.limits.{k}"
            )
    for limit, short_key, field, parse in parsers:
        if limits.get(limit) is None:
            continue
        key = f"deploy.resources.limits.{limit}"
        value = parse(limits[limit], service=name, key=key)
        current = getattr(spec, field)
        if current is not None and current != value:
            raise ComposeError(
                f"disagrees with {short_key!r}; give the limit once", service=name, key=key
            )
        setattr(spec, field, value)
