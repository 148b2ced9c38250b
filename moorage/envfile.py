r"""``--env-file``: a ``.env`` file read as Docker Compose reads one.

``NAME=value`` per line; blank lines and ``#`` comments skipped; ``export NAME=value`` too. Like
Compose (compose-go's dotenv):

- an unquoted value is trimmed, and ends at `` #`` (``TAG=v2 # prod`` is ``v2``);
- a single-quoted value is taken as written, over several lines if need be;
- a double-quoted value may span lines and knows the escapes ``\n``, ``\r``, ``\t``, ``\f``,
  ``\v``, ``\a``, ``\b``, ``\"``, ``\\`` and ``\$``, replaced before the references;
- an unquoted or double-quoted value has ``$NAME``, ``${NAME}`` and ``${NAME:-default}``,
  ``-default``, ``:+alt``, ``+alt``, ``:?error``, ``?error`` substituted, ``$$`` for ``$``.

Unlike Compose, no value is read from the environment of the process: a ``${NAME}`` that neither
the file has set above nor a ``--var`` sets (and that gives no default) is refused, naming its
line, rather than read from the operator's shell or left empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from moorage.compose.interpolation import BRACED_RE, reference_value

VARIABLE_NAME_RE = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
"""A variable's name, as Compose takes it."""

_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "f": "\f",
    "v": "\v",
    "a": "\a",
    "b": "\b",
    '"': '"',
    "\\": "\\",
}
"""The escapes of a double-quoted value (another backslash stays as written)."""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class EnvFileError(ValueError):
    """A line that is not ``NAME=value``, an unclosed quote, or a name not set above."""


def parse_env_file(text: str, environment: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables ``text`` sets, in order; a name set twice keeps its last value.

    ``environment``: what a ``${NAME}`` the file has not set above reads (``--var`` pairs); never
    the process's own environment.

    Raises:
        EnvFileError: naming the line (``line N: ...``).
    """
    variables: dict[str, str] = {}
    # Lines end at "\n" alone (str.splitlines also splits at form feeds and U+2028).
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].lstrip()
        index += 1
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not VARIABLE_NAME_RE.fullmatch(name):
            raise EnvFileError(f"line {number}: {line.strip()!r} is not NAME=value")
        where = f"line {number}: {name}"

        def lookup(ref: str) -> str | None:
            return variables[ref] if ref in variables else (environment or {}).get(ref)

        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            body = rest[1:]
            while (end := _closing(body, quote)) is None:
                if index >= len(lines):
                    raise EnvFileError(f"{where}: the {quote} is never closed")
                body += "\n" + lines[index]
                index += 1
            after = body[end + 1 :].strip()
            if after and not after.startswith("#"):
                raise EnvFileError(
                    f"{where}: {after!r} follows the closing {quote} (a comment starts with #)"
                )
            value = body[:end]
            if quote == '"':
                # Escapes first (``\$`` apart, which the expansion keeps a ``$``), then the
                # references, as Compose: a default's ``\\`` is one backslash.
                value = _expand(_unescape(value), lookup, where)
        else:
            # Compose cuts an unquoted value at " #", then trims it.
            value = _expand(rest.partition(" #")[0].strip(), lookup, where)
        variables[name] = value
    return variables


def _closing(body: str, quote: str) -> int | None:
    """Where the quote that closes ``body`` is (a double quote may be escaped), None: not yet."""
    position = 0
    while position < len(body):
        char = body[position]
        if quote == '"' and char == "\\":
            position += 2
            continue
        if char == quote:
            return position
        position += 1
    return None


def _unescape(value: str) -> str:
    """A double-quoted value with its escapes replaced (see ``_ESCAPES``).

    A backslash before a dollar is kept, for ``_expand``; before another character it stays.
    """
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(0)), value, flags=re.S)


def _expand(value: str, lookup: Callable[[str], str | None], where: str) -> str:
    r"""``value`` with ``\$`` and ``$$`` made ``$`` and its references replaced, as Compose."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        char = value[i]
        following = value[i + 1] if i + 1 < n else ""
        if following == "$" and char in "\\$":  # an escaped dollar, or "$$"
            out.append("$")
            i += 2
        elif char == "$" and following == "{":
            depth, j = 1, i + 2
            while j < n and depth:
                depth += {"{": 1, "}": -1}.get(value[j], 0)
                j += 1
            if depth:
                raise EnvFileError(f"{where}: '${{' is never closed")
            out.append(_braced(value[i + 2 : j - 1], lookup, where))
            i = j
        elif char == "$" and (match := _NAME.match(value, i + 1)):
            out.append(_braced(match.group(), lookup, where))
            i = match.end()
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _braced(inner: str, lookup: Callable[[str], str | None], where: str) -> str:
    """What ``${inner}`` stands for.

    ``NAME``, or ``NAME`` with ``:-``, ``-``, ``:+``, ``+``, ``:?`` or ``?`` and its text (expanded
    in turn).
    """
    match = BRACED_RE.fullmatch(inner)
    if match is None:
        raise EnvFileError(f"{where}: '${{{inner}}}' is no variable reference")
    name, op, arg = match.group("name"), match.group("op"), match.group("arg") or ""
    found = reference_value(op, lookup(name), lambda: _expand(arg, lookup, where))
    if found is not None:
        return found
    if op in (":?", "?"):
        raise EnvFileError(f"{where}: {name}: {_expand(arg, lookup, where) or 'not set'}")
    raise EnvFileError(
        f"{where}: ${{{name}}} is not set above it in the file, nor by --var (Moorage reads no "
        f"environment; set {name} first, or give a default: ${{{name}:-value}}; $$ is a $)"
    )
