r"""``--env-file``: a ``.env`` file read as Docker Compose reads one.

``NAME=value`` per line; blank lines and ``#`` comments skipped; ``export NAME=value`` too. Like
Compose (compose-go's dotenv):

- an unquoted value is trimmed, and ends at a ``#`` that follows a blank (``TAG=v2 # prod`` is
  ``v2``);
- a single-quoted value is taken as written, over several lines if need be;
- a double-quoted value may span lines and knows the escapes ``\n``, ``\r``, ``\t``, ``\"``,
  ``\\`` and ``\$``;
- an unquoted or double-quoted value has ``${NAME}``, ``$NAME``, ``${NAME:-default}`` and
  ``${NAME-default}`` of the names set above it substituted.

Unlike Compose, no value is read from the environment of the process: a ``${NAME}`` that the file
has not set above (and gives no default for) is refused, naming its line, rather than read from
the operator's shell or left empty.
"""

from __future__ import annotations

import re

VARIABLE_NAME_RE = re.compile(r"^[_a-zA-Z][_a-zA-Z0-9]*$")
"""A variable's name, as Compose takes it."""

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$"}
"""The escapes of a double-quoted value (another backslash stays as written)."""

_REFERENCE = (
    r"\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
_DOUBLE_QUOTED = re.compile(r"\\(?P<escaped>.)|" + _REFERENCE, re.S)
_UNQUOTED = re.compile(r"\\(?P<escaped>\$)|" + _REFERENCE)


class EnvFileError(ValueError):
    """A line that is not ``NAME=value``, an unclosed quote, or a name not set above."""


def parse_env_file(text: str) -> dict[str, str]:
    """The variables ``text`` sets, in order; a name set twice keeps its last value.

    Raises:
        EnvFileError: naming the line (``line N: ...``).
    """
    variables: dict[str, str] = {}
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip()
        index += 1
        if not line or line.startswith("#"):
            continue
        if line.startswith("export ") or line.startswith("export\t"):
            line = line[len("export") :].lstrip()
        name, sep, rest = line.partition("=")
        name = name.strip()
        if not sep or not VARIABLE_NAME_RE.fullmatch(name):
            raise EnvFileError(f"line {number}: {line!r} is not NAME=value")
        rest = rest.lstrip()
        if rest[:1] in ("'", '"'):
            quote = rest[0]
            body = rest[1:]
            while (end := _closing(body, quote)) is None:
                if index >= len(lines):
                    raise EnvFileError(f"line {number}: {name}: the {quote} is never closed")
                body += "\n" + lines[index]
                index += 1
            after = body[end + 1 :].strip()
            if after and not after.startswith("#"):
                raise EnvFileError(
                    f"line {number}: {name}: {after!r} follows the closing {quote} "
                    "(a comment starts with #)"
                )
            value = body[:end]
            if quote == '"':
                value = _expand(_DOUBLE_QUOTED, value, variables, f"line {number}: {name}")
        else:
            value = _expand(_UNQUOTED, _uncommented(rest), variables, f"line {number}: {name}")
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


def _uncommented(value: str) -> str:
    """An unquoted value without its comment: from a ``#`` that follows a blank."""
    match = re.search(r"[ \t]#", value)
    return (value[: match.start()] if match else value).strip()


def _expand(pattern: re.Pattern[str], value: str, variables: dict[str, str], where: str) -> str:
    """``value`` with its escapes and its references to ``variables`` replaced."""

    def one(match: re.Match[str]) -> str:
        if match.group("escaped") is not None:
            return _ESCAPES.get(match.group("escaped"), match.group(0))
        ref = match.group("braced") or match.group("bare")
        found = variables.get(ref)
        op = match.group("op")
        if op is not None and (found is None or (op == ":-" and found == "")):
            return str(match.group("default"))
        if found is None:
            raise EnvFileError(
                f"{where}: ${{{ref}}} is not set above it in the file (Moorage reads no "
                f"environment; set {ref} first, or give a default: ${{{ref}:-value}})"
            )
        return found

    return pattern.sub(one, value)
