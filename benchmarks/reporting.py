"""What the benchmark scripts share: a rich progress bar with an ETA, logging that prints above it,
and JSON reports written atomically as they grow (a killed run leaves the last whole report, its
``"partial"`` field true).

The bar and the log lines go to stderr: scripts that print their report on stdout keep it clean.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import Progress

from robustreg import cli
from robustreg.checkpoint import atomic_write_text

CONSOLE = Console(stderr=True)


def progress_bar(*, timed: bool = False) -> Progress:
    """:func:`robustreg.cli.progress_bar` on stderr (``timed``: drawn only between measurements)."""
    return cli.progress_bar(console=CONSOLE, timed=timed)


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


def loadavg() -> str:
    """``/proc/loadavg`` as it reads (the 1, 5 and 15-minute load, runnable/all tasks, last pid), for
    the conditions of a timing; ``"n/a"`` where there is no such file."""
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"
