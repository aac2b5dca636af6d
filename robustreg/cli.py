"""What the command-line programs share (the demo, the recipes, the benchmarks): help that tells
the truth, and one progress bar.

:func:`summary` is a docstring's whole first paragraph (a ``--help`` description never stops
mid-sentence); :class:`HelpFormatter` prints every option's real default once, and
:func:`by_dataset` writes the defaults that depend on ``--dataset`` from the table the program
itself resolves them from; :func:`progress_bar` is a rich bar whose ETA (:class:`AveragePaceEta`)
works for loops of slow steps too.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ._extras import missing_extra

try:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeElapsedColumn,
    )  # fmt: skip
    from rich.text import Text
except ModuleNotFoundError as err:  # pragma: no cover - exercised in a subprocess without rich
    raise missing_extra(err, "robustreg.cli (progress bars and help of the recipes)") from err


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


class AveragePaceEta(ProgressColumn):
    """Time left at the average pace since the task started. Rich's own ETA looks at the last 30 s
    only, and shows nothing when one unit of work (an AutoAttack batch, a scored model) takes
    minutes. A task that starts part-way (a resumed run) gives ``resumed_from=<its start>``."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text("eta 0:00:00", style="progress.remaining")
        done = task.completed - task.fields.get("resumed_from", 0)  # the work of this session
        if done <= 0 or task.total is None or task.elapsed is None:
            return Text("eta -:--:--", style="progress.remaining")
        left = task.elapsed * (task.total - task.completed) / done
        return Text(f"eta {timedelta(seconds=round(left))}", style="progress.remaining")


def progress_bar(
    *extra: ProgressColumn | str, console: Console | None = None, timed: bool = False, disable: bool = False
) -> Progress:
    """A rich progress bar: description, bar, done/total, elapsed time, ETA, then ``extra`` columns.

    ``timed=True`` for loops whose wall time is the measurement: no refresh thread competes with
    the timed code, and the bar is drawn only when the caller asks, between measurements
    (``bar.update(task, advance=1, refresh=True)``).
    """
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(
        *columns, AveragePaceEta(), *extra, console=console, auto_refresh=not timed, refresh_per_second=2,
        disable=disable,
    )  # fmt: skip
