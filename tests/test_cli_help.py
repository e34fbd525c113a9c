"""Every command's ``--help`` is whole and says its exit codes.

The commands are found by walking the click command tree, so a command added
later is held to the same rule without touching this file; each help is
printed by the console script in a subprocess, as an operator sees it.
"""

from __future__ import annotations

import click
import pytest

from persistkit._cli.app import cli
from test_cli import run_cli


def command_paths(group: click.Group = cli, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """``()`` for ``persistkit`` itself, then every command and subcommand below it."""
    paths = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


def test_the_tree_holds_every_command() -> None:
    paths = {" ".join(path) for path in command_paths()}
    assert {"inspect", "import", "migrate", "quarantine restore", "journal salvage"} <= paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda path: " ".join(path) or "persistkit")
def test_every_help_is_whole_and_says_its_exit_codes(path: tuple[str, ...]) -> None:
    result = run_cli(*path, "--help")
    assert result.returncode == 0, result
    text = result.stdout
    paragraphs = [" ".join(block.split()) for block in text.strip().split("\n\n")]
    assert paragraphs[0].startswith("Usage: persistkit"), text
    options = next(i for i, block in enumerate(paragraphs) if block.startswith("Options:"))
    description, epilog = paragraphs[1:options], paragraphs[-1]
    assert description, f"no description:\n{text}"
    for paragraph in [*description, epilog]:
        assert paragraph.endswith("."), f"ends mid-sentence: {paragraph!r}"
    assert epilog.startswith("Exit codes: "), f"the last paragraph names no exit codes:\n{text}"
    # click cuts a short help that does not fit its column with "..." (its usage
    # line's "[ARGS]..." is no cut).
    cut = [line for line in text.splitlines()[1:] if line.rstrip().endswith("...")]
    assert not cut, text
    for parameter in command_at(path).params:
        if isinstance(parameter, click.Option) and parameter.help:
            assert parameter.help.endswith("."), f"{parameter.opts}: {parameter.help!r}"
