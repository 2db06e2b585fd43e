"""Every command's --help works (a ParamType once broke `run --help` under click 8.2's get_metavar signature)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from qwenrecipes.cli import cli as group


def _commands() -> list[list[str]]:
    ctx = group.make_context("qwenrecipes", ["--help"], resilient_parsing=True)
    names = group.list_commands(ctx)
    found = []
    for name in names:
        found.append([name])
        command = group.get_command(ctx, name)
        for sub in getattr(command, "commands", {}):
            found.append([name, sub])
    return found


@pytest.mark.parametrize("argv", _commands(), ids=" ".join)
def test_help_of_every_command(argv: list[str]) -> None:
    result = CliRunner().invoke(group, [*argv, "--help"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "Usage:" in result.output
