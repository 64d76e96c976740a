"""The command line: `switchman --version`, and help text on every option of every subcommand."""

from __future__ import annotations

import argparse
import subprocess
from importlib import metadata

import pytest

from services.__main__ import parser
from tests.gateway import ROOT, switchman_cmd


def _subcommands(p: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))


def test_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"switchman {metadata.version('switchman')}"


def test_version_from_the_installed_command():
    r = subprocess.run(switchman_cmd("--version"), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == f"switchman {metadata.version('switchman')}"


def test_every_subcommand_and_option_has_help():
    subs = _subcommands(parser())
    assert {"up", "run", "check-config", "sim-upstream"} <= set(subs.choices)
    listed = {c.dest: c.help for c in subs._choices_actions}
    assert set(listed) == set(subs.choices) and all(listed.values()), listed
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help and action.help.strip(), f"`switchman {name}` {action.dest}: no help text"


@pytest.mark.parametrize("cmd", ["up", "run", "check-config", "sim-upstream"])
def test_help_text_renders(cmd, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([cmd, "--help"])
    out = capsys.readouterr().out
    assert "usage: switchman " + cmd in out
