"""Every ``tomoflow ... --help`` text is written for a person: whole sentences, every option with a
help, and no option named that the command does not have."""

from __future__ import annotations

import argparse
import re

import pytest

from flows.cli import build_parser

#: An option named in a help text, with the command it belongs to when the text says ``tomoflow CMD --x``.
OPTION = re.compile(r"(?:tomoflow ([a-z-]+) )?(?<![\w-])(--[a-z][a-z0-9-]*)")
#: A full stop that ends a sentence (not one of "e.g.", "i.e.", "etc." or a decimal point).
SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)\.\s+(\S)")
HISTORY = re.compile(r"\bissue \d|\bas before\b|\bbefore issue\b|same bytes as before", re.I)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _commands(parser: argparse.ArgumentParser, path: str = "tomoflow") -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its full name, e.g. ``tomoflow weights fetch``."""
    found = {path: parser}
    sub = _subparsers(parser)
    for name, child in (sub.choices.items() if sub else ()):
        found.update(_commands(child, f"{path} {name}"))
    return found


def _texts(parser: argparse.ArgumentParser) -> list[tuple[str, str | None]]:
    """(what, help) of each option, positional and subcommand of one parser, argparse's ``-h`` aside."""
    formatter = parser._get_formatter()
    texts: list[tuple[str, str | None]] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            texts += [(f"command {choice.dest}", choice.help) for choice in action._choices_actions]
            continue
        name = "/".join(action.option_strings) or action.dest
        texts.append((name, None if action.help is None else formatter._expand_help(action)))
    return texts


def help_problems(parser: argparse.ArgumentParser) -> list[str]:
    """What is wrong with the help texts of ``parser`` and every subcommand under it, one line each."""
    commands = _commands(parser)
    options = {path: {s for a in p._actions for s in a.option_strings} for path, p in commands.items()}
    problems = []
    for path, command in commands.items():
        for what, text in _texts(command):
            where = f"{path} {what}"
            if not text or text == argparse.SUPPRESS:
                problems.append(f"{where}: no help")
                continue
            if not (text[0].isupper() or text[0].isdigit()) or not text.endswith("."):
                problems.append(f"{where}: not a sentence (a capital first, a full stop last): {text!r}")
            for match in SENTENCE_END.finditer(text):
                if match.group(1).islower():
                    problems.append(f"{where}: a sentence starts in lower case: {text!r}")
            if HISTORY.search(text):
                problems.append(f"{where}: project history in a help text: {text!r}")
            for other, option in OPTION.findall(text):
                owner = f"tomoflow {other}" if other else path
                if option not in options.get(owner, set()):
                    problems.append(f"{where}: names {option}, which {owner} does not have")
    return problems


def test_every_help_text_of_every_command_is_a_sentence_naming_real_options() -> None:
    assert help_problems(build_parser()) == []


def test_every_subcommand_is_checked() -> None:
    commands = set(_commands(build_parser()))
    assert {"tomoflow run", "tomoflow demo", "tomoflow alerts", "tomoflow weights fetch",
            "tomoflow weights list"} <= commands


def test_the_check_finds_fragments_missing_help_and_unknown_options() -> None:
    parser = argparse.ArgumentParser(prog="tomoflow")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("x", help="Does x.")
    p.add_argument("--out", help="Output folder. folder for the manifest.")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", help="learning rate")
    p.add_argument("--mode", help="Like --nope; see tomoflow x --out and tomoflow y --out.")
    p.add_argument("--easy", help="The same bytes as before for a seed.")
    problems = "\n".join(help_problems(parser))
    assert "tomoflow x --out: a sentence starts in lower case" in problems
    assert "tomoflow x --seed: no help" in problems
    assert "tomoflow x --lr: not a sentence" in problems
    assert "names --nope, which tomoflow x does not have" in problems
    assert "names --out, which tomoflow y does not have" in problems
    assert "tomoflow x --easy: project history" in problems
    assert len(help_problems(parser)) == 6


def test_every_option_with_a_default_says_it() -> None:
    missing = [f"{path} {action.option_strings[0]}" for path, command in _commands(build_parser()).items()
               for action in command._actions
               if action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
               and not isinstance(action, argparse._HelpAction) and "default" not in (action.help or "").lower()]
    assert missing == []


@pytest.mark.parametrize("command", ["run", "demo"])
def test_the_options_that_had_no_help_have_one(command: str) -> None:
    texts = dict(_texts(_commands(build_parser())[f"tomoflow {command}"]))
    assert texts["--data-root" if command == "run" else "--seed"]
