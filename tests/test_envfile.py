"""``--env-file`` read as Docker Compose reads a ``.env`` file (compose-go's dotenv)."""

from __future__ import annotations

import pytest

from moorage.envfile import EnvFileError, parse_env_file


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("TAG=v2", "v2"),
        ("TAG=v2 # prod", "v2"),  # a comment after a blank: Moorage kept "v2 # prod"
        ("TAG=v2\t# prod", "v2\t# prod"),  # Compose cuts at " #" only
        ("TAG=a#b", "a#b"),  # no blank before '#': part of the value
        ("TAG = v2 ", "v2"),  # Moorage kept " v2"
        ("TAG=", ""),
        ("export TAG=v2", "v2"),
        ("TAG='v2'", "v2"),
        ("TAG='v2' # prod", "v2"),  # Moorage kept the quotes: "'v2' # prod"
        ('TAG="v2" # prod', "v2"),
        ("TAG='a # b'", "a # b"),
        ('TAG="a\\nb"', "a\nb"),  # Moorage kept the backslash
        ("TAG='a\\nb'", "a\\nb"),  # single quotes: as written
        ('TAG="say \\"hi\\""', 'say "hi"'),
        ('TAG="a\\\\b"', "a\\b"),
        ('TAG="a\\qb"', "a\\qb"),  # no such escape: as written
        ('TAG="\\$HOST"', "$HOST"),
        ("TAG=\\$HOST", "$HOST"),
        ("TAG=${NOPE:-fallback}", "fallback"),
        ("TAG=${NOPE-fallback}", "fallback"),
        ("TAG=p$$A", "p$A"),  # $$ is a $
        ('TAG="p$$A"', "p$A"),
        ("TAG=${NOPE:+alt}", ""),
        ("TAG=${NOPE-${ALSO:-x}}", "x"),  # a default is expanded in turn
        ("TAG=a\x0cb", "a\x0cb"),  # a form feed ends no line
        ('TAG="${NOPE:-C:\\dir}"', "C:\\dir"),  # escapes first, then the default
        ('TAG="${NOPE:-a\tb}"', "a\tb"),
    ],
)
def test_a_line_reads_as_compose_reads_it(line: str, value: str) -> None:
    assert parse_env_file(line + "\n") == {"TAG": value}


def test_names_set_above_are_substituted() -> None:
    text = (
        "HOST=db\nPORT=5432\nEMPTY=\n"
        "URL=${HOST}:$PORT\n"
        'QUOTED="postgres://${HOST}:${PORT}/app"\n'
        "LITERAL='${HOST}'\n"
        "DEFAULTED=${EMPTY:-none}/${EMPTY-kept}\n"
    )
    got = parse_env_file(text)
    assert got["URL"] == "db:5432"  # Moorage sent "${HOST}:$PORT" to the container
    assert got["QUOTED"] == "postgres://db:5432/app"
    assert got["LITERAL"] == "${HOST}"
    assert got["DEFAULTED"] == "none/"


def test_the_other_forms_of_a_reference() -> None:
    text = (
        "SET=v\nEMPTY=\n"
        "PLUS=${SET:+alt}/${EMPTY:+alt}/${EMPTY+alt}\n"
        "DEFAULT=${EMPTY:-d}/${EMPTY-d}/${SET:-$SET$SET}\n"
        "REQUIRED=${SET:?needed}/${EMPTY?needed}\n"
    )
    got = parse_env_file(text)
    assert got["PLUS"] == "alt//alt"
    assert got["DEFAULT"] == "d//v"
    assert got["REQUIRED"] == "v/"
    with pytest.raises(EnvFileError, match="line 1: A: EMPTY: must be set"):
        parse_env_file("A=${EMPTY:?must be set}\n", {"EMPTY": ""})


def test_a_name_the_file_has_not_set_is_read_from_the_vars_given_beside_it() -> None:
    """``--env-file f --var HOST=db`` with ``URL=${HOST}`` in ``f``; the file's own come first."""
    text = "URL=${HOST}:80\nHOST=file\nAGAIN=${HOST}\n"
    got = parse_env_file(text, {"HOST": "db"})
    assert got == {"URL": "db:80", "HOST": "file", "AGAIN": "file"}


def test_a_quoted_value_keeps_its_blanks_across_lines() -> None:
    assert parse_env_file('KEY="a  \n  b  "\n') == {"KEY": "a  \n  b  "}


def test_a_quoted_value_may_span_lines_and_a_later_name_wins() -> None:
    text = '# keys\nKEY="-----BEGIN-----\nabc\n-----END-----"\n\nTAG=v1\nTAG=v2\n'
    assert parse_env_file(text) == {"KEY": "-----BEGIN-----\nabc\n-----END-----", "TAG": "v2"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("TAG\n", ["line 1", "'TAG' is not NAME=value"]),
        ("\n1X=v\n", ["line 2", "NAME=value"]),
        ('TAG="v2\n', ["line 1", "TAG", "never closed"]),
        ("TAG='v2' prod\n", ["line 1", "'prod' follows the closing '"]),
        # Compose would read the operator's shell, or leave it empty.
        ("A=1\nURL=${HOST}:80\n", ["line 2", "URL", "${HOST} is not set above", "${HOST:-value}"]),
        ("URL=$HOST\nHOST=db\n", ["line 1", "${HOST} is not set above", "--var", "$$ is a $"]),
        ("A=${B\n", ["line 1", "'${' is never closed"]),
        ("A=${B C}\n", ["line 1", "'${B C}' is no variable reference"]),
    ],
)
def test_a_line_compose_and_moorage_would_read_apart_is_refused(
    text: str, words: list[str]
) -> None:
    with pytest.raises(EnvFileError) as info:
        parse_env_file(text)
    for word in words:
        assert word in str(info.value)
