"""Command-line help that tells the truth, shared by the demo, the recipes and the benchmarks.

:func:`summary` is a docstring's whole first paragraph (a ``--help`` description never stops
mid-sentence); :class:`HelpFormatter` prints every option's real default once, and
:func:`by_dataset` writes the defaults that depend on ``--dataset`` from the table the program
itself resolves them from.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from typing import Any


def summary(doc: str | None) -> str:
    """The first paragraph of ``doc`` on one line, its reST markup (````x````, ``:role:`x```)
    removed: ``--help``'s description."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return re.sub(r"(?::\w+:)?`{1,2}([^`]+)`{1,2}", r"\1", text)


def show(value: Any) -> str:
    """A default as ``--help`` prints it: floats to 4 significant digits, lists space-separated."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return " ".join(show(v) for v in value) if value else "[]"
    if value is None:
        return "none"
    if value == "":
        return '""'
    return str(value)


def by_dataset(key: str, table: Mapping[str, Mapping[str, Any]], fallback: str = "", *, label: str = "data set") -> str:
    """``"default by data set: 0.3 mnist, fashionmnist; 0.25 two-rings"``: ``table[dataset][key]``
    grouped by value, in the table's order; data sets without the key get ``fallback`` (e.g.
    ``"= --eps"``) or are left out when it is empty. ``label`` names what the table is keyed by."""
    groups: dict[str, list[str]] = {}
    for dataset, values in table.items():
        if key in values:
            groups.setdefault(show(values[key]), []).append(dataset)
        elif fallback:
            groups.setdefault(fallback, []).append(dataset)
    return f"default by {label}: " + "; ".join(f"{v} {', '.join(names)}" for v, names in groups.items())


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help once: not when the help already states its
    default (it mentions "default"), nor for flags without a value (``--x/--no-x`` has one), nor
    for suppressed defaults."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text.lower()
            or action.default is argparse.SUPPRESS
            or not action.option_strings
            or (action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction))
        ):
            return text
        return f"{text} (default: {show(action.default).replace('%', '%%')})"
