"""What the benchmark scripts share: a rich progress bar with an ETA, logging that prints above it,
and JSON reports written atomically as they grow (a killed run leaves the last whole report, its
``"partial"`` field true).

The bar and the log lines go to stderr: scripts that print their report on stdout keep it clean.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from robustreg.checkpoint import atomic_write_text

CONSOLE = Console(stderr=True)


class AveragePaceEta(ProgressColumn):
    """Time left at the pace since the task started. Rich's own ETA looks at the last 30 s only, and
    sees nothing when one unit of work (a training run, a scored model) takes minutes."""

    def render(self, task: Task) -> Text:
        if task.finished:
            return Text("eta 0:00:00", style="progress.remaining")
        if not task.completed or task.total is None or task.elapsed is None:
            return Text("eta -:--:--", style="progress.remaining")
        left = task.elapsed * (task.total - task.completed) / task.completed
        return Text(f"eta {timedelta(seconds=round(left))}", style="progress.remaining")


def progress_bar(*, timed: bool = False) -> Progress:
    """A rich progress bar on stderr: description, bar, done/total, elapsed time, ETA.

    ``timed=True`` for loops whose wall time is the measurement: no refresh thread then competes
    with the timed code, and the bar is drawn only when the caller asks, between measurements
    (``bar.update(task, advance=1, refresh=True)``).
    """
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, AveragePaceEta(), console=CONSOLE, auto_refresh=not timed, refresh_per_second=2)


def setup_logging(level: int = logging.INFO) -> None:
    """Log ``name: message`` lines to stderr: through rich (above the bar) when ``TERM`` is set,
    plain otherwise (``TERM=dumb`` in tests and pipes)."""
    rich = os.environ.get("TERM") not in (None, "dumb")
    handler = RichHandler(console=CONSOLE, show_path=False) if rich else logging.StreamHandler()
    logging.basicConfig(level=level, format="%(name)s: %(message)s", handlers=[handler])


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` to ``path`` as indented JSON, atomically (a kill mid-write leaves the previous
    file whole); creates the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
