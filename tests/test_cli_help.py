"""`enn-nb COMMAND --help`: every subcommand says what it does in plain words and shows an example."""

from __future__ import annotations

import argparse

import pytest

from enn_nb.surfaces.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subcommands())


def test_the_expected_subcommands_exist():
    assert {"inspect", "convert", "backends", "export", "verify", "build-trt", "report", "demo"} <= set(SUBCOMMANDS)


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_has_a_description_and_an_example(name):
    sub = _subcommands()[name]
    text = sub.format_help()
    assert sub.description and len(sub.description.split()) >= 8, f"`enn-nb {name} --help` has no description"
    # an example: a line of the epilog that runs this very subcommand
    examples = [line.strip() for line in (sub.epilog or "").splitlines() if line.strip().startswith(f"enn-nb {name}")]
    assert examples, f"`enn-nb {name} --help` shows no example"
    assert all(example in text for example in examples)
    # plain words, not reStructuredText from a docstring
    assert "``" not in text and "::" not in text, text
