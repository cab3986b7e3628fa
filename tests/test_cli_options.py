"""Every command offers the options it offered when the list was recorded.

``tests/data/cli_options.json`` was written from the parser on main at 2f309d1, before the
package moved into layers (issue #30), by the ``describe`` below. The options are now generated
from dataclasses (``minift/run/options.py``); this test holds the generated parser to the record:
the same flags, defaults, types, choices, required-ness and arity for every subcommand. A change
to the command line is made on purpose by regenerating the record:

    python -c "from tests.test_cli_options import record; record()"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from minift.run.cli import build_parser

RECORD = Path(__file__).parent / "data" / "cli_options.json"
COMPARED = ("flags", "default", "type", "choices", "required", "nargs")


def describe(parser: argparse.ArgumentParser) -> dict:
    rows = {}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction,
                               argparse._VersionAction)):
            continue
        default = action.default
        if not isinstance(default, (int, float, str, bool, type(None), list)):
            default = repr(default)
        rows[action.option_strings[0] if action.option_strings else action.dest] = {
            "flags": list(action.option_strings), "dest": action.dest, "default": default,
            "type": getattr(action.type, "__name__", None) if action.type else None,
            "choices": list(action.choices) if action.choices else None,
            "required": action.required, "nargs": action.nargs, "kind": type(action).__name__,
        }
    return rows


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                path = f"{prefix} {name}".strip()
                found[path] = describe(sub)
                found.update(commands(sub, path))
    return found


def record() -> None:
    RECORD.write_text(json.dumps(commands(build_parser()), indent=1, sort_keys=True) + "\n")


RECORDED = json.loads(RECORD.read_text())
LIVE = commands(build_parser())


def test_the_same_commands():
    assert sorted(LIVE) == sorted(RECORDED)


@pytest.mark.parametrize("command", sorted(RECORDED))
def test_a_command_offers_the_recorded_options(command):
    live, recorded = LIVE.get(command, {}), RECORDED[command]
    assert sorted(live) == sorted(recorded), (
        f"{command}: missing {sorted(set(recorded) - set(live))}, "
        f"new {sorted(set(live) - set(recorded))}")
    for flag, was in recorded.items():
        now = {key: live[flag][key] for key in COMPARED}
        assert now == {key: was[key] for key in COMPARED}, f"{command} {flag}"
