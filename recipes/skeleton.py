"""The skeleton every recipe shares: typed options from the command line, Accelerate, step-indexed
data streams, rich progress, JSON-lines metrics, checkpoints that resume exactly, the final
safetensors model and the plots.

A recipe is ``main(argv)``: parse its dataclass with :func:`parse`, open a :class:`Run`, build the
model, optimizer and loss object, ``run.prepare(...)`` them, ``run.resume(stateful)``, then loop over
``range(run.start, steps)`` drawing from :meth:`Run.batches` (every step's batch is a function of
(seed, step) alone, so a resumed run draws exactly the batches the uninterrupted one would),
calling :meth:`Run.log` and, when :meth:`Run.due`, evaluating (inside :meth:`Run.paused`) and
:meth:`Run.checkpoint`; :meth:`Run.finish` writes the model, the summary and the plots.

Multiple processes: ``accelerate launch`` starts them; each global batch is split between the
processes by Accelerate (``split_batches=True``), so a run of N processes with ``--batch-size B``
takes the same optimizer steps as one process with ``B`` (up to floating-point summation order,
and for loss objects that draw random starts, up to those draws: each process draws its own).
Evaluation runs on the main process, on the bare model.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import time
import types
import typing
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

import robustreg
from robustreg.checkpoint import save_model, write_meta
from robustreg.data import load_vision, synthetic_vision

log = logging.getLogger("robustreg.recipes")


def opt(default: Any, help: str, *, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field with its ``--help`` text (and allowed values)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, "choices": choices})
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """Options every recipe has."""

    out: str = opt("", "output directory (default runs/<recipe>_<dataset>_<method>)")
    seed: int = opt(0, "seeds the model, the data stream and every random draw: a CPU run is repeatable")
    data_dir: str = opt("../shared/data", "root of the torchvision data sets (nothing is downloaded)")
    synthetic: bool = opt(False, "random tensors of the data set's shape instead of files (smoke tests)")
    eval_every: int = opt(0, "evaluate every N steps (0: only at the end)")
    checkpoint_every: int = opt(0, "accelerator.save_state every N steps (0: only at the end)")
    keep_checkpoints: int = opt(2, "checkpoints kept on disk (the newest)")
    resume: bool = opt(False, "continue from the newest checkpoint in --out (exactly: same final metrics)")
    mixed_precision: str = opt("no", "Accelerate's mixed precision", choices=("no", "fp16", "bf16"))
    grad_accum: int = opt(1, "gradient accumulation steps (Accelerate)")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    threads: int = opt(0, "torch CPU threads per process (0: torch's default)")
    progress: bool = opt(True, "rich progress bars (--no-progress for logs)")
    tensorboard: bool = opt(False, "also log the metrics to TensorBoard (Accelerate tracker; needs tensorboard)")


def parse(config_cls: type, argv: Sequence[str] | None, description: str, **defaults: Any) -> Any:
    """Fill ``config_cls`` (a dataclass) from the command line; ``--help`` lists every field with
    its help text and default. ``defaults`` override the dataclass's defaults (thin recipes such
    as ``cifar_tnar.py`` are a set of defaults)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = defaults.get(f.name, default)
        flag = "--" + f.name.replace("_", "-")
        help_text, choices = f.metadata.get("help", f.name), f.metadata.get("choices")
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            parser.add_argument(flag, type=item, nargs="+", default=default, help=help_text)
        else:
            if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # X | None
                kind = next(a for a in typing.get_args(kind) if a is not type(None))
            parser.add_argument(flag, type=kind, default=default, choices=choices, help=help_text)
    unknown = set(defaults) - {f.name for f in dataclasses.fields(config_cls)}
    if unknown:
        raise TypeError(f"unknown defaults {sorted(unknown)} for {config_cls.__name__}")
    cfg = config_cls(**vars(parser.parse_args(argv)))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0 and f.name != "seed":
            parser.error(f"--{f.name.replace('_', '-')} must be >= 0, got {value}")
    if getattr(cfg, "grad_accum", 1) < 1:
        parser.error(f"--grad-accum must be >= 1, got {cfg.grad_accum}")
    return cfg


# -- data ----------------------------------------------------------------------------------------


def load_images(cfg: Any, dataset: str, n_train: int = 0, n_test: int = 0) -> tuple[tuple[Tensor, Tensor], ...]:
    """``(train, test)`` image tensors of a torchvision set from ``cfg.data_dir``, or random tensors of
    its shape with ``cfg.synthetic`` (``n_train``/``n_test`` of them, 512/256 by default). Missing
    files end the run with a message saying which files to place where."""
    if cfg.synthetic:
        gen = torch.Generator().manual_seed(cfg.seed)
        return synthetic_vision(dataset, n_train or 512, generator=gen), synthetic_vision(
            dataset, n_test or 256, generator=gen
        )
    try:
        train = load_vision(dataset, cfg.data_dir, train=True)
        test = load_vision(dataset, cfg.data_dir, train=False)
    except FileNotFoundError as err:
        raise SystemExit(f"error: {err}. Pass --data-dir, or --synthetic for a smoke test.") from None
    if n_train:
        train = (train[0][:n_train], train[1][:n_train])
    if n_test:
        test = (test[0][:n_test], test[1][:n_test])
    return train, test


class StepBatches(Sampler[list[int]]):
    """Index batches for the steps ``start, start + 1, …, stop − 1`` of a stream over ``n`` samples.

    Step t reads slice ``t mod k`` (``k = n // batch_size`` batches per epoch, the last partial one
    dropped) of the permutation of epoch ``t // k``, drawn from a generator seeded by
    ``(seed, epoch)``. Every batch is a function of (seed, t) alone: a resumed run reads exactly
    the batches the uninterrupted run would have. A set smaller than the batch is one batch."""

    drop_last = True

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int, stop: int) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"n and batch_size must be >= 1, got {n}, {batch_size}")
        self.n, self.batch_size, self.seed = n, min(batch_size, n), seed
        self.start, self.stop = start, stop
        self.per_epoch = n // self.batch_size

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, order = -1, torch.empty(0, dtype=torch.long)
        for t in range(self.start, self.stop):
            e, k = divmod(t, self.per_epoch)
            if e != epoch:
                epoch = e
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + e))
            yield order[k * self.batch_size : (k + 1) * self.batch_size].tolist()


# -- the run -------------------------------------------------------------------------------------


class _State:
    """What a checkpoint needs besides model, optimizer, scheduler and RNGs: the step, the training
    wall time so far, and the loss objects' own state (Amata's clock, ATTA's perturbations, …)."""

    def __init__(self, stateful: dict[str, Any]) -> None:
        self.step, self.wall = 0, 0.0
        self.stateful = stateful

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "wall": self.wall, **{k: v.state_dict() for k, v in self.stateful.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.wall = int(state["step"]), float(state["wall"])
        for k, v in self.stateful.items():
            v.load_state_dict(state[k])


class Run:
    """One training run: the Accelerator, the output directory, metrics, checkpoints and progress.

    ``Run(cfg, name)`` sets the seed, makes ``cfg.out`` (default ``runs/<name>``) and starts
    Accelerate (``split_batches=True``: ``--batch-size`` is the global batch)."""

    def __init__(self, cfg: Any, name: str) -> None:
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.out = Path(cfg.out or f"runs/{name}")
        if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise SystemExit("error: --tensorboard needs the tensorboard package: pip install -e '.[tensorboard]'")
        self.accelerator = Accelerator(
            # without a GPU, processes started by `accelerate launch --multi_gpu` (torchrun) form a CPU group
            cpu=cfg.cpu or not torch.cuda.is_available(),
            mixed_precision=cfg.mixed_precision,
            gradient_accumulation_steps=cfg.grad_accum,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            log_with="tensorboard" if cfg.tensorboard else None,
            project_dir=str(self.out),
        )
        self.main = self.accelerator.is_main_process
        _setup_logging(self.main)
        set_seed(cfg.seed)
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if cfg.tensorboard:
            hparams = {
                k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in dataclasses.asdict(cfg).items()
            }
            self.accelerator.init_trackers(name, config=hparams)
        self.metrics_path = self.out / "metrics.jsonl"
        self.ckpt_dir = self.out / "checkpoints"
        self.start = 0
        self.state = _State({})
        self._tick = time.perf_counter()
        self._bar: Any = None
        self._paused = False
        self.arch, self.kwargs = "", {}

    # -- set-up ------------------------------------------------------------------------------
    def describe(self, arch: str, kwargs: dict[str, Any]) -> None:
        """Record the model's architecture (a :data:`robustreg.checkpoint.ARCHITECTURES` name or a chart
        kind) and constructor arguments: written to ``run.json`` now, so that
        ``recipes/evaluate.py <out>/checkpoints/step_N`` can evaluate a checkpoint before the run
        ends, and to ``model/model.json`` by :meth:`finish`."""
        self.arch, self.kwargs = arch, kwargs
        if self.main:
            write_meta(self.out / "run.json", arch=arch, kwargs=kwargs, config=jsonable(dataclasses.asdict(self.cfg)))

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """``accelerator.prepare`` the model(s), optimizer(s) and scheduler(s)."""
        prepared = self.accelerator.prepare(*objects)
        return prepared if isinstance(prepared, tuple) else (prepared,)

    def resume(self, stateful: dict[str, Any] | None = None) -> int:
        """Register what a checkpoint holds besides the prepared objects and the RNGs: the step, the
        wall time and ``stateful`` (objects with ``state_dict``/``load_state_dict``: loss objects
        with state, unprepared modules and optimizers). With ``--resume``, load the newest
        checkpoint. Returns :attr:`start`, the first step to run. Call it once, after building
        everything a checkpoint restores."""
        self.state = _State(stateful or {})
        self.accelerator.register_for_checkpointing(self.state)
        if self.cfg.resume and self.latest_checkpoint() is not None:
            self._resume()
        elif self.cfg.resume:
            log.info("--resume: no checkpoint in %s, starting from step 0", self.ckpt_dir)
        if self.start == 0 and self.main and (self.metrics_path.exists() or self.ckpt_dir.exists()):
            log.info("starting afresh: the previous run's metrics and checkpoints in %s are replaced", self.out)
            self.metrics_path.unlink(missing_ok=True)
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return self.start

    def _resume(self) -> None:
        latest = self.latest_checkpoint()
        self.accelerator.load_state(str(latest))
        self.start = self.state.step
        if self.main and self.metrics_path.exists():  # drop what the interrupted run logged past the checkpoint
            lines = [ln for ln in self.metrics_path.read_text().splitlines() if json.loads(ln)["step"] <= self.start]
            self.metrics_path.write_text("".join(ln + "\n" for ln in lines))
        log.info("resumed from %s at step %d", latest, self.start)

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.ckpt_dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        return found[-1] if found else None

    def batches(
        self, tensors: Sequence[Tensor], batch_size: int, *, stop: int, stream: int = 0
    ) -> Iterator[list[Tensor]]:
        """The batches of the steps ``start … stop − 1`` over ``tensors`` (sharing their first
        dimension), on the accelerator's device, each process holding its share of every global
        batch. ``stream`` separates the shuffles of several streams (labeled, unlabeled)."""
        sampler = StepBatches(
            len(tensors[0]), batch_size, seed=self.cfg.seed * 7919 + stream, start=self.start, stop=stop
        )
        if sampler.batch_size % self.accelerator.num_processes:
            raise SystemExit(
                f"error: the batch of {sampler.batch_size} must be divisible by the {self.accelerator.num_processes} "
                "processes (each takes an equal share)"
            )
        # its own generator: starting the iterator must not draw from the global RNG, which a resumed run
        # restores from the checkpoint (the draw would shift every random number after it)
        loader = DataLoader(TensorDataset(*tensors), batch_sampler=sampler, generator=torch.Generator())
        state = self.accelerator.state  # not registered with the accelerator: the stream needs no checkpoint
        return iter(
            prepare_data_loader(
                loader, state.device, num_processes=state.num_processes, process_index=state.process_index,
                split_batches=True, put_on_device=True,
            )
        )  # fmt: skip

    # -- during training -----------------------------------------------------------------------
    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[None]:
        """A rich progress bar (main process, unless ``--no-progress``) over steps ``start … total``."""
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._tick = time.perf_counter()
        if not (self.main and self.cfg.progress):
            yield
            return
        columns = (
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[metrics]}"),
        )  # fmt: skip
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task(description, total=total, completed=self.start, metrics="")
            self._bar = (bar, task)
            try:
                yield
            finally:
                self._bar = None

    def wall(self) -> float:
        """Training wall time so far, across resumes (evaluation and checkpoints excluded)."""
        return self.state.wall if self._paused else self.state.wall + time.perf_counter() - self._tick

    def log(self, step: int, epoch: float, kind: str = "train", **metrics: Any) -> None:
        """Append ``{"step", "epoch", "wall", "kind", **metrics}`` to ``metrics.jsonl`` (main
        process) and show the metrics on the progress bar. ``step`` counts completed steps."""
        values = {k: float(v) if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row = {"step": step, "epoch": round(epoch, 4), "wall": round(self.wall(), 3), "kind": kind, **values}
        if self.main:
            with self.metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            if self._bar is not None:
                bar, task = self._bar
                shown = " ".join(f"{k} {v:.4g}" for k, v in values.items() if isinstance(v, float))
                bar.update(task, completed=step, metrics=shown)
        if self.cfg.tensorboard:
            self.accelerator.log({f"{kind}/{k}": v for k, v in values.items() if isinstance(v, float)}, step=step)

    def advance(self, step: int) -> None:
        """Move the bar to ``step`` completed steps."""
        if self._bar is not None:
            bar, task = self._bar
            bar.update(task, completed=step)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Evaluation and checkpointing: not counted as training wall time."""
        self.state.wall += time.perf_counter() - self._tick
        self._paused = True
        try:
            yield
        finally:
            self._paused = False
            self._tick = time.perf_counter()

    def due(self, step: int, every: int, stop: int) -> bool:
        return step == stop or (every > 0 and step % every == 0)

    def checkpoint(self, step: int) -> None:
        """``accelerator.save_state`` to ``checkpoints/step_<step>`` (all processes), keeping the
        newest ``--keep-checkpoints``."""
        with self.paused():
            self.state.step = step
            path = self.ckpt_dir / f"step_{step}"
            self.accelerator.save_state(str(path))
            self.accelerator.wait_for_everyone()
            if self.main:
                found = sorted(self.ckpt_dir.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
                for old in found[: max(0, len(found) - max(1, self.cfg.keep_checkpoints))]:
                    shutil.rmtree(old)

    # -- the end -------------------------------------------------------------------------------
    def finish(self, model: nn.Module, *, summary: dict[str, Any], title: str) -> dict[str, Any]:
        """Save the bare model (``model/``: safetensors + JSON, the architecture given to
        :meth:`describe`), write ``summary.json``, plot the curves, print the summary table; returns
        the summary (with the output paths)."""
        self.accelerator.wait_for_everyone()
        summary = {**summary, "wall_seconds": round(self.state.wall, 2), "processes": self.accelerator.num_processes}
        summary["out"] = str(self.out)
        if self.main:
            bare = self.accelerator.unwrap_model(model)
            cfg = jsonable(dataclasses.asdict(self.cfg))
            save_model(
                bare, self.out / "model", arch=self.arch, kwargs=self.kwargs, config=cfg, metrics=jsonable(summary)
            )
            summary["model"] = str(self.out / "model")
            summary["metrics"] = str(self.metrics_path)
            plot = plot_curves(self.metrics_path, self.out / "curves.png", title)
            if plot:
                summary["curves_plot"] = str(plot)
            (self.out / "summary.json").write_text(json.dumps(jsonable(summary), indent=2))
            print_summary(summary, title)
        self.accelerator.end_training()
        return summary


# -- plots and tables ------------------------------------------------------------------------


def plot_curves(metrics: Path, path: Path, title: str) -> Path | None:
    """Every ``eval`` metric ending in ``acc`` against wall time and against epoch, from
    ``metrics.jsonl``; None when nothing was evaluated."""
    rows = [json.loads(ln) for ln in metrics.read_text().splitlines()] if metrics.exists() else []
    rows = [r for r in rows if r["kind"] == "eval"]
    keys = sorted({k for r in rows for k in r if k.endswith("acc") and isinstance(r[k], int | float)})
    if not rows or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for key in keys:
        pts = [(r["wall"], r["epoch"], r[key]) for r in rows if key in r]
        for ax, i in zip(axes, (0, 1), strict=True):
            ax.plot([p[i] for p in pts], [100 * p[2] for p in pts], marker="o", ms=3, label=key)
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("epoch")
    axes[0].set_ylabel("accuracy (%)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_summary(summary: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{100 * value:.2f} %" if key.endswith("acc") else f"{value:.4g}"
        if not isinstance(value, dict | list):
            table.add_row(key, str(value))
    Console(stderr=False).print(table)


# -- helpers ---------------------------------------------------------------------------------


def is_main() -> bool:
    """Whether this is the main process (of ``accelerate launch``; True for a plain run)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _setup_logging(main: bool) -> None:
    from rich.logging import RichHandler

    level = logging.INFO if main else logging.WARNING
    if not logging.getLogger().handlers:
        handler = (
            RichHandler(show_path=False) if os.environ.get("TERM") not in (None, "dumb") else logging.StreamHandler()
        )
        logging.basicConfig(level=level, format="%(message)s", handlers=[handler])
    logging.getLogger("robustreg.recipes").setLevel(level)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint messages


def accuracy(model: nn.Module, data: tuple[Tensor, Tensor], batch_size: int = 500) -> float:
    """Clean accuracy of ``model`` (in eval mode, its mode restored after) on tensors ``(x, y)``."""
    device = next(model.parameters()).device
    correct = 0
    with robustreg.inner_mode(model, "eval"), torch.no_grad():
        for i in range(0, len(data[0]), batch_size):
            x, y = data[0][i : i + batch_size].to(device), data[1][i : i + batch_size].to(device)
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data[0])
