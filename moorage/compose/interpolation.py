"""``${VAR}`` interpolation of a loaded Compose file (Compose specification, stricter).

Variables come only from the caller, never from the server's environment; a value interpolation
produces is converted at the keys that are typed, like Compose does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from moorage.compose.errors import MAX_INTERPOLATED_BYTES, MAX_INTERPOLATED_VALUES, ComposeError
from moorage.compose.values import YamlWord

_VARIABLE_RE = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*)|\{(?P<braced>[^}]*)\}|(?P<invalid>))"
)
BRACED_RE = re.compile(
    r"(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL
)
"""What goes between ``${`` and ``}``: a name, and an operator with its text (also .env files)."""
_TRUE_WORDS = frozenset({"y", "yes", "true", "on"})
_FALSE_WORDS = frozenset({"n", "no", "false", "off"})


def _to_bool(text: str) -> Any:
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    return text


def _to_int(text: str) -> Any:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        return text
    try:
        return int(text)
    except ValueError:  # over 4,300 digits: left a string, which the key refuses by name
        return text


def _to_float(text: str) -> Any:
    try:
        return float(text)
    except ValueError:
        return text


# A value that interpolation produced is a string even where the key wants a boolean or a number;
# like Compose, convert it at the keys that are typed. A string written in the file stays a string
# (and is refused where a boolean or number is expected).
_TYPED_KEYS: tuple[tuple[tuple[str, ...], Callable[[str], Any]], ...] = (
    (("services", "*", "privileged"), _to_bool),
    (("services", "*", "cpus"), _to_float),
    (("services", "*", "pids_limit"), _to_int),
    (("services", "*", "deploy", "replicas"), _to_int),
    (("services", "*", "deploy", "resources", "limits", "cpus"), _to_float),
    (("services", "*", "deploy", "resources", "limits", "pids"), _to_int),
    (("services", "*", "healthcheck", "retries"), _to_int),
    (("services", "*", "healthcheck", "disable"), _to_bool),
    (("services", "*", "volumes", "[]", "read_only"), _to_bool),
    (("services", "*", "volumes", "[]", "volume", "nocopy"), _to_bool),
    (("services", "*", "x-moorage", "probe", "port"), _to_int),
    (("services", "*", "x-moorage", "probe", "status"), _to_int),
    (("volumes", "*", "external"), _to_bool),
    (("networks", "*", "external"), _to_bool),
)

_KeyPath = tuple[str | int, ...]


def _shape(path: _KeyPath) -> tuple[str, ...]:
    """A value's path with list positions as ``[]``: what a typed key's pattern matches."""
    return tuple("[]" if isinstance(p, int) else p for p in path)


def _location(path: _KeyPath) -> tuple[str | None, str | None]:
    """(service, dotted key) of a value's path; list positions are left out, as elsewhere."""
    service: str | None = None
    rest = path
    if len(path) >= 2 and path[0] == "services":
        service, rest = str(path[1]), path[2:]
    key = ".".join(p for p in rest if isinstance(p, str))
    return service, key or None


class _Interpolator:
    """Substitutes ``${VAR}`` in every string value of a loaded Compose file.

    Forms (Compose specification): ``$VAR``, ``${VAR}``, ``${VAR:-default}`` (unset or empty),
    ``${VAR-default}`` (unset), ``${VAR:?message}`` / ``${VAR?message}`` (an error),
    ``${VAR:+other}`` / ``${VAR+other}`` (``other`` when set), ``$$`` (a literal ``$``). Unlike
    Compose, a variable that is not set and has no default is an error, and a default or message
    may not itself hold ``$`` (no nested interpolation). The result is never interpolated again.
    """

    def __init__(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            try:
                value.encode()
            except UnicodeEncodeError as exc:
                # JSON may escape a lone surrogate ("\ud800"); a shell may pass bytes that are
                # not UTF-8. Neither is text a container's environment can hold.
                raise ComposeError(
                    f"variable {name!r} is not valid Unicode text (at character {exc.start})"
                ) from exc
        self._variables = variables
        self._has_dollar: dict[int, bool] = {}
        self._done: dict[tuple[int, tuple[str, ...]], Any] = {}
        """Mappings and lists already interpolated, by identity and the shape of their path: a
        node YAML aliases repeat is interpolated once where it means the same (its copies stay
        one object, and dump as aliases again)."""
        self._size = 0
        self._values = 0

    def _contains_dollar(self, node: Any, active: set[int]) -> bool:
        """Whether a string below ``node`` holds ``$``; memoised, so aliases cost nothing."""
        if isinstance(node, str):
            return "$" in node
        if not isinstance(node, dict | list):
            return False
        ident = id(node)
        if ident in self._has_dollar:
            return self._has_dollar[ident]
        if ident in active:
            raise ComposeError("a YAML alias refers to itself")
        active.add(ident)
        children = node.values() if isinstance(node, dict) else node
        found = any(self._contains_dollar(child, active) for child in children)
        active.discard(ident)
        self._has_dollar[ident] = found
        return found

    def walk(self, node: Any, path: _KeyPath, active: set[int]) -> Any:
        """``node`` with every string below it interpolated (subtrees without ``$`` are kept)."""
        if isinstance(node, str):
            return self._string(node, path) if "$" in node else node
        if not isinstance(node, dict | list) or not self._contains_dollar(node, set()):
            return node
        ident = id(node)
        done = (ident, _shape(path))
        if done in self._done:
            return self._done[done]
        self._count(path)
        if ident in active:
            raise ComposeError("a YAML alias refers to itself")
        active.add(ident)
        result: Any
        if isinstance(node, dict):
            result = {k: self.walk(v, (*path, str(k)), active) for k, v in node.items()}
        else:
            result = [self.walk(v, (*path, i), active) for i, v in enumerate(node)]
        active.discard(ident)
        self._done[done] = result
        return result

    def _count(self, path: _KeyPath) -> None:
        self._values += 1
        if self._values > MAX_INTERPOLATED_VALUES:
            service, key = _location(path)
            raise ComposeError(
                f"interpolation would visit more than {MAX_INTERPOLATED_VALUES} values "
                "(YAML aliases repeat them)",
                service=service,
                key=key,
            )

    def _string(self, value: str, path: _KeyPath) -> Any:
        self._count(path)
        substituted = False

        def replace(match: re.Match[str]) -> str:
            nonlocal substituted
            if match["escaped"] is not None:
                return "$"
            substituted = True
            if match["named"] is not None:
                return self._lookup(match["named"], None, "", path)
            braced = BRACED_RE.fullmatch(match["braced"] or "")
            if match["braced"] is None or braced is None:
                service, key = _location(path)
                raise ComposeError(
                    f"invalid interpolation in {value!r}: write ${{NAME}}, ${{NAME:-default}}, "
                    "or $$ for a literal $",
                    service=service,
                    key=key,
                )
            arg = braced["arg"] or ""
            if "$" in arg:
                service, key = _location(path)
                raise ComposeError(
                    f"in {value!r}: a default or message may not hold '$' "
                    "(nested interpolation is not supported)",
                    service=service,
                    key=key,
                )
            return self._lookup(braced["name"], braced["op"], arg, path)

        result = _VARIABLE_RE.sub(replace, value)
        self._size += len(result.encode())
        if self._size > MAX_INTERPOLATED_BYTES:
            service, key = _location(path)
            raise ComposeError(
                f"interpolation produces more than {MAX_INTERPOLATED_BYTES} bytes",
                service=service,
                key=key,
            )
        if substituted:
            shape = _shape(path)
            for pattern, cast in _TYPED_KEYS:
                if len(pattern) == len(shape) and all(
                    want in ("*", got) for want, got in zip(pattern, shape, strict=True)
                ):
                    return cast(result)
        return result

    def _lookup(self, name: str, op: str | None, arg: str, path: _KeyPath) -> str:
        found = reference_value(op, self._variables.get(name), lambda: arg)
        if found is not None:
            return found
        service, key = _location(path)
        if op in (":?", "?"):
            detail = f": {arg}" if arg else ""
            message = f"variable {name!r} is required{detail}"
        else:
            message = (
                f"variable {name!r} is not set (pass it in the variables, or give it a default: "
                f"${{{name}:-default}})"
            )
        raise ComposeError(message, service=service, key=key)


def reference_value(op: str | None, value: str | None, arg: Callable[[], str]) -> str | None:
    """What ``${NAME<op><arg>}`` stands for when NAME is ``value`` (None: not set), as Compose.

    ``arg``: the text after the operator, asked for only where it is used. None: the reference
    fails (not set and no default, or required by ``?`` / ``:?``); the caller says why.
    """
    if op == ":-":
        return value or arg()
    if op == "-":
        return arg() if value is None else value
    if op == ":+":
        return arg() if value else ""
    if op == "+":
        return "" if value is None else arg()
    if value is not None and (value or op != ":?"):
        return value
    return None


def _interpolate(raw: dict[str, Any], variables: Mapping[str, str] | None) -> dict[str, Any]:
    try:
        result: dict[str, Any] = _Interpolator(variables or {}).walk(raw, (), set())
    except RecursionError as exc:  # chained YAML aliases nest deeper than the text does
        raise ComposeError("the YAML is nested too deeply") from exc
    return result


def _escape_dollars(node: Any, done: dict[int, Any] | None = None) -> Any:
    """``node`` with every ``$`` written ``$$``.

    A mapping or list YAML aliases repeat is escaped once, and the copy repeated: the result
    dumps with aliases again, not expanded (a few hundred bytes of aliases would expand to GB).
    """
    if isinstance(node, YamlWord):  # no "$" in it; kept a word, not made plain text
        return node
    if isinstance(node, str):
        return node.replace("$", "$$")
    if not isinstance(node, dict | list):
        return node
    done = {} if done is None else done
    if id(node) not in done:
        if isinstance(node, dict):
            done[id(node)] = {k: _escape_dollars(v, done) for k, v in node.items()}
        else:
            done[id(node)] = [_escape_dollars(v, done) for v in node]
    return done[id(node)]
