"""The schema's vocabularies are the ones the command line offers (tasks/core/schema.py)."""

from __future__ import annotations

import argparse

from flows.cli import build_parser
from tasks.core.schema import VIEWS


def test_export_slices_offers_the_schemas_views() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    view = next(a for a in sub.choices["export-slices"]._actions if a.dest == "view")
    assert tuple(view.choices) == VIEWS == ("lcc", "lmlo", "rcc", "rmlo")
