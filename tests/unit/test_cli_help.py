"""What a user reads first: `llmpack --help` and each command's --help describe it in whole
sentences, as the installed command prints them (a real process, argparse's own formatting)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from llmpack.cli import DESCRIPTION, SUBCOMMANDS

# argparse's section headers ("options:", "positional arguments:"): where the description ends.
SECTION = re.compile(r"^[A-Za-z][\w -]*:$")


def help_text(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "llmpack.cli", *argv, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def description(text: str) -> str:
    """The paragraph(s) between the usage lines and the first section, as one line."""
    lines = text.splitlines()
    assert lines[0].startswith("usage: "), text
    start = next(i for i, line in enumerate(lines) if not line.strip())
    body = []
    for line in lines[start:]:
        if SECTION.match(line):
            break
        body.append(line.strip())
    return " ".join(" ".join(body).split())


def assert_sentence(text: str, where: str) -> None:
    assert text, f"{where}: no description"
    assert text[0].isupper(), f"{where}: description does not start a sentence: {text!r}"
    assert text.endswith("."), f"{where}: description stops mid-sentence: {text!r}"


def test_llmpack_help_says_what_it_is_in_whole_sentences():
    text = help_text()
    shown = description(text)
    assert_sentence(shown, "llmpack --help")
    assert shown == " ".join(DESCRIPTION.split())  # all of it, nothing cut
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", text, re.M), f"`{name}` is not listed with its help"


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_every_command_help_ends_its_description(command):
    assert_sentence(description(help_text(command)), f"llmpack {command} --help")
