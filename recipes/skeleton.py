"""The skeleton every recipe shares: typed options from the command line, Accelerate, step-indexed
data streams, rich progress, JSON-lines metrics, non-finite steps skipped, atomic checkpoints
without pickle that resume exactly, the final safetensors model and the plots.

A recipe is ``main(argv)``: parse its dataclass with :func:`parse`, open a :class:`Run`, build the
model, optimizer and loss object, ``run.prepare(...)`` them, ``run.resume(stateful)``, then loop over
``range(run.start, steps)`` drawing from :meth:`Run.batches` (every step's batch is a function of
(seed, step) alone, so a resumed run draws exactly the batches the uninterrupted one would), each
step inside :meth:`Run.step_guard` (which skips a step whose loss or gradients are not finite),
calling :meth:`Run.log` and, when :meth:`Run.due`, evaluating (inside :meth:`Run.paused`) and
:meth:`Run.checkpoint`; :meth:`Run.finish` writes the model, the summary and the plots.

Checkpoints (:meth:`Run.checkpoint`) are safetensors + JSON (:func:`robustreg.checkpoint.save_tree`),
renamed into place after a manifest of SHA-256 hashes is written; ``--resume`` loads the newest one
that verifies, and refuses options that would change the run (:data:`FREE_ON_RESUME` lists those
that may differ) unless ``--allow-changed-options``.

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
import itertools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import types
import typing
from collections.abc import Callable, Iterator, Sequence
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
from robustreg import cli
from robustreg.checkpoint import (
    atomic_write_text,
    check_finite,
    load_tree,
    save_model,
    save_tree,
    verify_manifest,
    write_manifest,
    write_meta,
)
from robustreg.data import load_vision, synthetic_vision, two_rings

log = logging.getLogger("robustreg.recipes")


def opt(
    default: Any,
    help: str,
    *,
    choices: Sequence[str] | None = None,
    fallback: str = "",
    renamed_from: str = "",
    empty: bool = False,
) -> Any:
    """A dataclass field with its ``--help`` text (and allowed values). ``fallback``: what a field
    left at None takes on data sets whose defaults table lacks it (e.g. ``"= --eps"``).
    ``renamed_from``: the field's former name, still accepted on the command line (with a
    warning naming the new one) and read from the options of checkpoints written before.
    ``empty``: a list option that may be given no values (``--flag`` alone: the empty list)."""
    meta = {"help": help, "choices": choices, "fallback": fallback, "renamed_from": renamed_from, "empty": empty}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    """Options every recipe has."""

    out: str = opt("", "output directory (empty: runs/<recipe>_<dataset>_<method>)")
    seed: int = opt(0, "seeds the model, the data stream and every random draw: a CPU run is repeatable")
    data_dir: str = opt("../shared/data", "root of the torchvision data sets (nothing is downloaded)")
    synthetic: bool = opt(False, "random tensors of the data set's shape instead of files (smoke tests)")
    eval_every: int = opt(0, "evaluate every N steps (0: only at the end)")
    checkpoint_every: int = opt(0, "write a checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = opt(2, "checkpoints kept on disk (the newest)")
    resume: bool = opt(False, "continue from the newest intact checkpoint in --out (exactly: same weights and metrics)")
    allow_changed_options: bool = opt(
        False, "with --resume: continue although options that change the run differ from the checkpoint's"
    )
    max_nonfinite: int = opt(5, "stop after this many non-finite steps in a row (each is skipped)")
    mixed_precision: str = opt("no", "Accelerate's mixed precision", choices=("no", "fp16", "bf16"))
    grad_accum: int = opt(1, "gradient accumulation steps (Accelerate)")
    cpu: bool = opt(False, "run on the CPU even when a GPU is present")
    threads: int = opt(
        0, "torch CPU threads per process (0: auto, 1 for the two-rings MLPs, else the cores shared by the processes)"
    )
    max_steps: int = opt(0, "stop after this many training steps, a prefix of the full run (0: no cap)")
    progress: bool = opt(True, "rich progress bars (--no-progress for logs)")
    tensorboard: bool = opt(False, "also log the metrics to TensorBoard (Accelerate tracker; needs tensorboard)")


def parse(
    config_cls: type,
    argv: Sequence[str] | None,
    doc: str | None,
    *,
    by_dataset: dict[str, dict[str, Any]] | None = None,
    by_label: str = "data set",
    **defaults: Any,
) -> Any:
    """Fill ``config_cls`` (a dataclass) from the command line. ``--help`` gives the first paragraph
    of ``doc`` and every field with its help text and real default; a field left at None whose
    value comes from ``by_dataset[dataset]`` (the table the recipe resolves it from) lists those
    values (``by_label``: what the table is keyed by, e.g. ``"--kind"``). ``defaults`` override
    the dataclass's defaults (thin recipes such as ``cifar_tnar.py`` are a set of defaults)."""
    parser = argparse.ArgumentParser(description=cli.summary(doc), formatter_class=cli.HelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        default = defaults.get(f.name, default)
        flag = "--" + f.name.replace("_", "-")
        help_text, choices = f.metadata.get("help", f.name), f.metadata.get("choices")
        if default is None and by_dataset and any(f.name in d for d in by_dataset.values()):
            fallback = f.metadata.get("fallback", "")
            help_text = f"{help_text} ({cli.by_dataset(f.name, by_dataset, fallback, label=by_label)})"
        kind = hints[f.name]
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:  # X | None
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            nargs = "*" if f.metadata.get("empty") else "+"
            parser.add_argument(flag, type=item, nargs=nargs, default=default, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=default, choices=choices, help=help_text)
            if old := f.metadata.get("renamed_from"):
                parser.add_argument(
                    "--" + old.replace("_", "-"), dest=f.name, type=kind, choices=choices, action=_Renamed,
                    default=argparse.SUPPRESS, help=argparse.SUPPRESS, new=flag,
                )  # fmt: skip
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
    if getattr(cfg, "max_nonfinite", 1) < 1:
        parser.error(f"--max-nonfinite must be >= 1, got {cfg.max_nonfinite}")
    return cfg


class _Renamed(argparse.Action):
    """An option's former spelling: stores into the new option's field, with a warning on stderr."""

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        print(f"warning: {option_string} is now {self.new}; the old name will be removed", file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed_options(config_cls: type) -> dict[str, str]:
    """``{former name: field}`` of ``config_cls``'s renamed options."""
    fields = dataclasses.fields(config_cls)
    return {f.metadata["renamed_from"]: f.name for f in fields if f.metadata.get("renamed_from")}


# -- evaluation ----------------------------------------------------------------------------------


def attack_suite(
    eps: float,
    *,
    bounds: tuple[float, float] | None,
    autoattack: str | None,
    pgd_steps: Sequence[int],
    restarts: int = 1,
    cw_steps: int = 30,
    seed: int = 0,
    norm: str = "linf",
) -> dict[str, Any]:
    """The recipes' final evaluation in the ``norm`` ball (``"linf"`` or ``"l2"``) of radius ``eps``,
    for :func:`robustreg.robust_accuracy`: ``autoattack-<version>`` (:class:`robustreg.AutoAttack`
    seeded by ``seed``; None: left out), ``pgd<k>`` for every k in ``pgd_steps`` (α = max(ε/4,
    2.5ε/k), the larger of Madry's MNIST step and the usual 2.5ε/k, so k·α ≥ 2.5ε crosses the
    ball; ``restarts`` each) and ``cw`` (``cw_steps`` of ε/10 on the CW margin). Their per-sample
    worst case is the robust accuracy."""
    attacks: dict[str, Any] = {}
    if autoattack is not None:
        attacks[f"autoattack-{autoattack}"] = robustreg.AutoAttack(
            eps=eps, norm=norm, version=autoattack, bounds=bounds, seed=seed
        )
    for k in pgd_steps:
        alpha = max(eps / 4, 2.5 * eps / k)
        attacks[f"pgd{k}"] = robustreg.PGD(eps=eps, alpha=alpha, steps=k, restarts=restarts, norm=norm, bounds=bounds)
    attacks["cw"] = robustreg.CW(eps, steps=cw_steps, alpha=eps / 10, norm=norm, bounds=bounds)
    return attacks


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """What every recipe knows of a data set: its valid input box (None: unbounded) and the usual
    ℓ∞ threat radius of adversarial training and evaluation on it."""

    bounds: tuple[float, float] | None
    eps: float


#: The recipes' data sets: torchvision's images in [0, 1], two rings' unbounded vectors.
PRESETS = {
    "mnist": Preset((0.0, 1.0), 0.3),
    "fashionmnist": Preset((0.0, 1.0), 0.3),
    "cifar10": Preset((0.0, 1.0), 8 / 255),
    "svhn": Preset((0.0, 1.0), 8 / 255),
    "two-rings": Preset(None, 0.25),
}


def rings_split(seed: int, n_train: int, n_test: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Two rings with nuisance dimensions (:func:`robustreg.data.two_rings`) for a supervised run:
    ``n_train`` training points, then ``n_test`` test points, from one generator seeded by
    ``seed``, so that ``recipes/evaluate.py`` regenerates a run's test points from its options."""
    gen = torch.Generator().manual_seed(seed)
    return two_rings(n_train, generator=gen), two_rings(n_test, generator=gen)


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
    except OSError as err:  # missing (FileNotFoundError) or damaged (DataFileError) files
        raise SystemExit(f"error: {err}. Pass --data-dir, or --synthetic for a smoke test.") from None
    if n_train:
        train = (train[0][:n_train], train[1][:n_train])
    if n_test:
        test = (test[0][:n_test], test[1][:n_test])
    return train, test


def hold_out(
    images: tuple[Tensor, Tensor], val_size: int, *, n_train: int = 0, minimum: int = 1
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train, validation)`` from the training images: the first ``n_train`` (0: all but the
    last ``val_size``) and the ``val_size`` after them, never seen in training. Ends the run with
    a message when fewer than ``minimum`` training images would be left."""
    cut = n_train or len(images[0]) - val_size
    if cut < minimum:
        raise SystemExit(
            f"error: --val-size {val_size} leaves {max(cut, 0)} of {len(images[0])} training images (needs {minimum})"
        )
    return (images[0][:cut], images[1][:cut]), (images[0][cut : cut + val_size], images[1][cut : cut + val_size])


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


#: options a resumed run may change: they do not change what the run computes
FREE_ON_RESUME = frozenset(
    {"out", "resume", "allow_changed_options", "progress", "threads", "tensorboard", "keep_checkpoints",
     "checkpoint_every", "eval_every", "data_dir", "max_nonfinite", "max_steps"}
)  # fmt: skip


def rng_state() -> dict[str, Any]:
    """This process's random number generators: Python's, numpy's, torch's CPU and CUDA ones."""
    import numpy as np

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in state["cuda"]])


class StepGuard:
    """One step's non-finite check (see :meth:`Run.step_guard`)."""

    def __init__(self, run: Run, step: int, modules: list[nn.Module], *, parameters: bool = False) -> None:
        self.run, self.step, self.bad = run, step, False
        # BatchNorm's running statistics and its count of batches (used when momentum=None): small
        self.buffers = [(b, b.detach().clone()) for m in modules for b in m.buffers()]
        if parameters:  # an optimiser that writes the weights itself (MSA): they are put back too
            self.buffers += [(p, p.detach().clone()) for m in modules for p in m.parameters()]

    def ok(
        self, loss: Tensor | None, params: Iterator[Tensor] | Sequence[Tensor], *, values: Sequence[Tensor] = ()
    ) -> bool:
        """Whether ``loss`` (if given), every gradient of ``params`` and every tensor of ``values``
        (e.g. weights an optimiser has just written) are finite on every process; if not, the
        gradients are set to None (an optimizer step then changes nothing)."""
        params = list(params)
        grads = [p.grad for p in params if p.grad is not None]
        checks = [torch.isfinite(g).all() for g in [*grads, *values]]
        if loss is not None:
            checks.append(torch.isfinite(loss.detach()).all())
        fine = torch.stack(checks).all().float() if checks else torch.ones(())
        acc = self.run.accelerator
        if acc.num_processes > 1:
            fine = acc.reduce(fine.to(acc.device), "sum") / acc.num_processes
        if float(fine) == 1.0:
            return True
        self.bad = True
        for p in params:
            p.grad = None
        return False

    def close(self) -> None:
        run = self.run
        if not self.bad:
            run.nonfinite_in_row = 0
            return
        with torch.no_grad():
            for b, saved in self.buffers:
                b.copy_(saved)
        run.nonfinite_total += 1
        run.nonfinite_in_row += 1
        log.warning(
            "step %d: non-finite loss or gradients, step skipped (%d in a row, %d in all)",
            self.step + 1, run.nonfinite_in_row, run.nonfinite_total,
        )  # fmt: skip
        if run.nonfinite_in_row >= run.cfg.max_nonfinite:
            raise SystemExit(
                f"error: {run.nonfinite_in_row} non-finite steps in a row (the last at step {self.step + 1}): the "
                "loss or its gradients are NaN or inf. Nothing of them was applied and the last checkpoint is "
                "intact; lower the learning rate or check the data, then --resume."
            )


class Run:
    """One training run: the Accelerator, the output directory, metrics, checkpoints and progress.

    ``Run(cfg, name)`` sets the seed, makes ``cfg.out`` (default ``runs/<name>``) and starts
    Accelerate (``split_batches=True``: ``--batch-size`` is the global batch)."""

    def __init__(self, cfg: Any, name: str, *, small_model: bool = False) -> None:
        self.cfg = cfg
        self._threads_before = torch.get_num_threads()
        self.threads = cfg.threads or auto_threads(small_model=small_model)
        torch.set_num_threads(self.threads)
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
        setup_logging(self.main)
        requested = requested_processes()
        if self.main and requested != self.accelerator.num_processes and requested is not None:
            log.warning(
                "accelerate launch was asked for %s processes but started %d: its simple launcher (no "
                "--multi_gpu, or --cpu) runs one. On CPU, start them with: accelerate launch --multi_gpu "
                "--num_processes N recipes/<recipe>.py (without a GPU the recipes form a CPU process group)",
                requested or "several", self.accelerator.num_processes,
            )  # fmt: skip
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
        self.stateful: dict[str, Any] = {}  # what resume() registered: loss objects, unprepared modules
        self._prepared: list[Any] = []  # what prepare() returned: models, optimizers, schedulers
        self._first_module: int | None = None
        self.wall_s = 0.0  # training wall time of the completed pauses (see wall())
        self.nonfinite_total = 0  # non-finite steps skipped so far (checkpointed)
        self.nonfinite_in_row = 0
        self._tick = time.perf_counter()
        self._bar: Any = None
        self._paused = False
        self.arch, self.kwargs, self.threat_model = "", {}, None

    # -- set-up ------------------------------------------------------------------------------
    def describe(self, arch: str, kwargs: dict[str, Any], *, threat_model: dict[str, Any] | None = None) -> None:
        """Record the model's architecture (a :data:`robustreg.checkpoint.ARCHITECTURES` name or a chart
        kind) and constructor arguments: written to ``run.json`` now, so that
        ``recipes/evaluate.py <out>/checkpoints/step_N`` can evaluate a checkpoint before the run
        ends, and to ``model/model.json`` by :meth:`finish`. ``threat_model``
        (``{"norm": …, "eps": …}``), for a model trained against one, goes into the recorded
        config: ``recipes/evaluate.py`` attacks at that radius by default."""
        self.arch, self.kwargs, self.threat_model = arch, kwargs, threat_model
        run_json = self.out / "run.json"
        if self.cfg.resume and run_json.is_file() and self.latest_checkpoint() is not None:
            try:  # refused before run.json is rewritten (the checkpoint's own record is checked again)
                saved = json.loads(run_json.read_text()).get("config", {})
            except ValueError:
                saved = None
            if isinstance(saved, dict):
                self.check_options(saved, run_json)
        if self.main:
            write_meta(self.out / "run.json", arch=arch, kwargs=kwargs, config=self._recorded_config())

    def prepare(self, *objects: Any) -> tuple[Any, ...]:
        """``accelerator.prepare`` the model(s), optimizer(s) and scheduler(s); checkpoints hold them."""
        prepared = self.accelerator.prepare(*objects)
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self._prepared.extend(prepared)
        modules = [i for i, obj in enumerate(self._prepared) if isinstance(obj, nn.Module)]
        self._first_module = modules[0] if modules else None
        return prepared

    def resume(self, stateful: dict[str, Any] | None = None) -> int:
        """Register what a checkpoint holds besides the prepared objects and the RNGs: ``stateful``
        (objects with ``state_dict``/``load_state_dict``: loss objects with state, unprepared
        modules and optimizers). With ``--resume``, load the newest checkpoint that verifies.
        Returns :attr:`start`, the first step to run. Call it once, after building everything a
        checkpoint restores."""
        self.stateful = dict(stateful or {})
        if self.cfg.resume:
            self._resume()
        if self.start == 0 and self.main and (self.metrics_path.exists() or self.ckpt_dir.exists()):
            log.info("starting afresh: the previous run's metrics and checkpoints in %s are replaced", self.out)
            self.metrics_path.unlink(missing_ok=True)
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return self.start

    def _resume(self) -> None:
        """Load the newest checkpoint whose manifest verifies (saying which were skipped and why),
        refuse it when the options that change the run differ, and cut ``metrics.jsonl`` back to it."""
        found = sorted(self.ckpt_dir.glob("step_*"), key=_step_of, reverse=True)
        for path in found:
            manifest, reason = verify_manifest(path)
            if manifest is not None and manifest.get("processes") != self.accelerator.num_processes:
                reason = (
                    f"written by {manifest.get('processes')} processes, this run has {self.accelerator.num_processes}"
                )
            if not reason:
                try:
                    state = load_tree(path, "state")
                    self.check_options(state["config"], path)
                    self._load(path, state)
                except Exception as err:  # whatever a damaged file raises, the candidate is out
                    reason = f"it does not load ({type(err).__name__}: {err})"
            if reason:
                log.warning("--resume: skipping checkpoint %s: %s", path, reason)
                continue
            if self.main and self.metrics_path.exists():  # drop what the interrupted run logged past it
                rows = read_metrics(self.metrics_path)
                kept = "".join(json.dumps(r) + "\n" for r in rows if r["step"] <= self.start)
                atomic_write_text(self.metrics_path, kept)
            log.info("resumed from %s at step %d", path, self.start)
            return
        if found:  # never wiped: they may be fixable (the same number of processes, say)
            raise SystemExit(
                f"error: --resume: none of the {len(found)} checkpoints in {self.ckpt_dir} can be used (the reasons "
                "are above). Fix or remove them, or run without --resume to start afresh."
            )
        log.info("--resume: no checkpoint in %s, starting from step 0", self.ckpt_dir)

    def check_options(self, saved: dict[str, Any], where: Path) -> None:
        """Refuse to resume when an option that changes the run differs from ``saved`` (unless
        ``--allow-changed-options``)."""
        now = jsonable(dataclasses.asdict(self.cfg))
        for former, name in renamed_options(type(self.cfg)).items():  # a checkpoint from before a rename
            if former in saved and name not in saved:
                saved = {**saved, name: saved[former]}
        changed = {k: (saved.get(k), v) for k, v in now.items() if k not in FREE_ON_RESUME and saved.get(k) != v}
        if not changed:
            return
        text = ", ".join(f"--{k.replace('_', '-')} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        if not self.cfg.allow_changed_options:
            raise SystemExit(
                f"error: --resume from {where}: these options differ from the run's: {text}. Resume with the "
                "original options, or pass --allow-changed-options to continue with the new ones."
            )
        log.warning("--resume with changed options (--allow-changed-options): %s", text)

    def _load(self, path: Path, state: dict[str, Any]) -> None:
        from safetensors.torch import load_file

        acc = self.accelerator
        for i, obj in enumerate(self._prepared):
            if isinstance(obj, nn.Module):
                name = "model" if i == self._first_module else f"module_{i}"
                acc.unwrap_model(obj).load_state_dict(load_file(str(path / f"{name}.safetensors"), device="cpu"))
            elif hasattr(obj, "load_state_dict"):
                obj.load_state_dict(load_tree(path, f"prepared_{i}"))
        for k, v in self.stateful.items():
            v.load_state_dict(_to_device(state["stateful"][k], acc.device))
        if acc.scaler is not None and "scaler" in state:
            acc.scaler.load_state_dict(state["scaler"])
        set_rng_state(load_tree(path, f"rng_{acc.process_index}"))
        self.start, self.wall_s = int(state["step"]), float(state["wall"])
        self.nonfinite_total = int(state.get("nonfinite", 0))

    def latest_checkpoint(self) -> Path | None:
        """The newest checkpoint directory that verifies against its manifest (None if there is none)."""
        for path in sorted(self.ckpt_dir.glob("step_*"), key=_step_of, reverse=True):
            if verify_manifest(path)[0] is not None:
                return path
        return None

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
        self._tick = time.perf_counter()
        if not (self.main and self.cfg.progress):
            yield
            return
        with cli.progress_bar("{task.fields[metrics]}") as bar:
            task = bar.add_task(description, total=total, completed=self.start, metrics="", resumed_from=self.start)
            self._bar = (bar, task)
            try:
                yield
            finally:
                self._bar = None

    @contextmanager
    def eval_progress(self, description: str) -> Iterator[Any]:
        """A ``progress`` hook for :func:`robustreg.robust_accuracy` outside the training loop: a
        rich bar over its (batch, attack) runs with an ETA (main process, unless ``--no-progress``;
        None otherwise)."""
        if not (self.main and self.cfg.progress):
            yield None
            return
        with evaluation_bar(description) as hook:
            yield hook

    def wall(self) -> float:
        """Training wall time so far, across resumes (evaluation and checkpoints excluded)."""
        return self.wall_s if self._paused else self.wall_s + time.perf_counter() - self._tick

    def log(self, step: int, epoch: float, kind: str = "train", **metrics: Any) -> None:
        """Append ``{"step", "epoch", "wall", "kind", **metrics}`` to ``metrics.jsonl`` (main
        process) and show the metrics on the progress bar. ``step`` counts completed steps."""
        values = {k: float(v.detach()) if isinstance(v, Tensor) else v for k, v in metrics.items()}
        row = {"step": step, "epoch": round(epoch, 4), "wall": round(self.wall(), 3), "kind": kind, **values}
        if kind == "train" and self.nonfinite_total:
            row["nonfinite_steps"] = self.nonfinite_total
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
        """Evaluation and checkpointing: not counted as training wall time, and drawing from a fork
        of the random number generators (an evaluation's random starts never shift the training's
        random numbers, so ``--eval-every`` does not change the run)."""
        self.wall_s += time.perf_counter() - self._tick
        self._paused = True
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        try:
            with torch.random.fork_rng(devices=cuda):
                yield
        finally:
            self._paused = False
            self._tick = time.perf_counter()

    def stop(self, total: int) -> int:
        """Where the loop over steps ``start … total`` ends: ``total``, or ``--max-steps`` when it is
        smaller (the schedules still use ``total``, so the capped run is a prefix of the full one
        and ``--resume`` without the cap continues it)."""
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def due(self, step: int, every: int, stop: int) -> bool:
        return step == stop or (every > 0 and step % every == 0)

    def end_step(
        self,
        done: int,
        stop: int,
        epoch: float,
        *,
        metrics: Callable[[], dict[str, Any]],
        evaluate: Callable[[], dict[str, Any]] | None = None,
        log_every: int = 20,
        evaluate_at_stop: bool = True,
    ) -> None:
        """Everything after the optimizer step ``done`` (1-based) of ``stop``, the same in every recipe:

        - every ``log_every`` steps and at ``stop``: :meth:`log` the training ``metrics()`` (tensors
          averaged over the processes, other values as they are); otherwise move the bar;
        - when ``--eval-every`` is due (and at ``stop``, unless ``evaluate_at_stop=False``: a recipe
          whose final evaluation follows the loop): ``evaluate()`` on the main process, paused (not
          timed, its random draws from a fork), logged as ``kind="eval"``;
        - when ``--checkpoint-every`` is due, and at ``stop``: :meth:`checkpoint`.

        ``metrics`` and ``evaluate`` are called only when due, on every process for ``metrics``
        (the averaging is collective), on the main one for ``evaluate``."""
        if done % log_every == 0 or done == stop:
            acc = self.accelerator
            values = {k: acc.reduce(v, "mean") if isinstance(v, Tensor) else v for k, v in metrics().items()}
            self.log(done, epoch, **values)
        else:
            self.advance(done)
        if evaluate is not None and self.due(done, self.cfg.eval_every, stop) and (evaluate_at_stop or done < stop):
            with self.paused():
                if self.main:
                    self.log(done, epoch, kind="eval", **evaluate())
                self.accelerator.wait_for_everyone()
        if self.due(done, self.cfg.checkpoint_every, stop):
            self.checkpoint(done)

    def checkpoint(self, step: int) -> None:
        """Write ``checkpoints/step_<step>`` (all processes) and keep the newest ``--keep-checkpoints``.

        Everything is written into ``checkpoints/.step_<step>.partial`` first: the prepared models
        (``model.safetensors``), optimizers and schedulers, the registered state, the step, the wall
        time and the options (``state``), and every process's RNG states (``rng_<rank>``), all as
        safetensors + JSON (nothing pickled); then ``manifest.json`` with every file's size and
        SHA-256; then the folder is renamed. A kill at any moment leaves either no ``step_N`` or a
        whole one. A model with NaN or inf weights is never checkpointed: the run stops instead."""
        acc = self.accelerator
        with self.paused():
            for obj in [*self._prepared, *self.stateful.values()]:
                if isinstance(obj, nn.Module):
                    self._refuse_nonfinite(acc.unwrap_model(obj), f"checkpoint at step {step}")
            final = self.ckpt_dir / f"step_{step}"
            tmp = self.ckpt_dir / f".step_{step}.partial"
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(parents=True)
            acc.wait_for_everyone()
            save_tree(rng_state(), tmp, f"rng_{acc.process_index}")
            if self.main:
                self._write_state(tmp, step)
            acc.wait_for_everyone()
            if self.main:
                write_manifest(tmp, step=step, processes=acc.num_processes)
                if final.exists():  # the same step written again (a resumed run's last step)
                    shutil.rmtree(final)
                os.replace(tmp, final)
                found = sorted(self.ckpt_dir.glob("step_*"), key=_step_of)
                for old in found[: max(0, len(found) - max(1, self.cfg.keep_checkpoints))]:
                    shutil.rmtree(old)
                for stale in self.ckpt_dir.glob(".step_*.partial"):  # left by a killed run
                    shutil.rmtree(stale, ignore_errors=True)
            acc.wait_for_everyone()

    def _write_state(self, directory: Path, step: int) -> None:
        from safetensors.torch import save_file

        acc = self.accelerator
        for i, obj in enumerate(self._prepared):
            if isinstance(obj, nn.Module):
                name = "model" if i == self._first_module else f"module_{i}"
                weights = {k: v.detach().contiguous() for k, v in acc.unwrap_model(obj).state_dict().items()}
                save_file(weights, str(directory / f"{name}.safetensors"), metadata={"format": "robustreg-model"})
            elif hasattr(obj, "state_dict"):
                save_tree(obj.state_dict(), directory, f"prepared_{i}")
        state = {
            "step": step, "wall": self.wall_s, "nonfinite": self.nonfinite_total,
            "config": jsonable(dataclasses.asdict(self.cfg)),
            "stateful": {k: v.state_dict() for k, v in self.stateful.items()},
        }  # fmt: skip
        if acc.scaler is not None:
            state["scaler"] = acc.scaler.state_dict()
        save_tree(state, directory, "state")

    def _refuse_nonfinite(self, model: nn.Module, what: str) -> None:
        try:
            check_finite(model)
        except ValueError as err:
            raise SystemExit(f"error: {what}: {err}; nothing was saved (the previous files are kept)") from None

    @contextmanager
    def step_guard(self, step: int, *modules: nn.Module, parameters: bool = False) -> Iterator[StepGuard]:
        """Skip a non-finite step: ``guard.ok(loss, params)`` says whether the loss and every
        gradient are finite (on every process); when not, the gradients are dropped, so the caller
        skips ``optimizer.step()``, and on leaving the block the buffers of ``modules``
        (BatchNorm's running statistics and batch count) are put back as they were when it was entered. With
        ``parameters=True`` their parameters are put back too: for an optimiser that writes the
        weights itself inside the block (MSA), checked with ``guard.ok(loss, [], values=weights)``.
        Each skipped step is counted (``nonfinite_steps`` in the summary) and logged;
        ``--max-nonfinite`` in a row stop the run with an error."""
        guard = StepGuard(self, step, [self.accelerator.unwrap_model(m) for m in modules], parameters=parameters)
        yield guard
        guard.close()

    # -- the end -------------------------------------------------------------------------------
    def _recorded_config(self) -> dict[str, Any]:
        """The options as ``run.json`` and ``model/model.json`` record them, with the threat model."""
        return jsonable(dataclasses.asdict(self.cfg)) | {"threat_model": self.threat_model}

    def previous_evaluation(self, stop: int, options: dict[str, Any]) -> dict[str, Any] | None:
        """The ``summary.json`` of this run's previous invocation when it can stand for a new
        evaluation: this invocation resumed (``--resume``) at the final step ``stop`` and trained
        nothing (so the model is the one evaluated then), that summary has ``stop`` steps and was
        written with the same evaluation ``options`` (the ``"evaluation"`` field a recipe puts in
        its summary). None otherwise: a run stopped during its evaluation has no summary and is
        evaluated again."""
        if not self.cfg.resume or self.start != stop:
            return None
        try:
            previous = json.loads((self.out / "summary.json").read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(previous, dict) or previous.get("steps") != stop:
            return None
        if previous.get("evaluation") != jsonable(options):
            return None
        log.info("%s trained nothing since its evaluation with the same options: reusing it", self.out)
        return previous

    def finish(self, model: nn.Module, *, summary: dict[str, Any], title: str) -> dict[str, Any]:
        """Save the bare model (``model/``: safetensors + JSON, the architecture and threat model
        given to :meth:`describe`), write ``summary.json``, plot the curves, print the summary
        table; returns the summary (with the output paths)."""
        self.accelerator.wait_for_everyone()
        summary = {**summary, "wall_seconds": round(self.wall_s, 2), "processes": self.accelerator.num_processes}
        summary["nonfinite_steps"] = self.nonfinite_total
        summary["out"] = str(self.out)
        if self.main:
            bare = self.accelerator.unwrap_model(model)
            self._refuse_nonfinite(bare, "the final model")
            cfg = self._recorded_config()
            save_model(
                bare, self.out / "model", arch=self.arch, kwargs=self.kwargs, config=cfg, metrics=jsonable(summary)
            )
            summary["model"] = str(self.out / "model")
            summary["metrics"] = str(self.metrics_path)
            plot = plot_curves(self.metrics_path, self.out / "curves.png", title)
            if plot:
                summary["curves_plot"] = str(plot)
            atomic_write_text(self.out / "summary.json", json.dumps(jsonable(summary), indent=2))
            print_summary(summary, title)
        self.accelerator.end_training()
        torch.set_num_threads(self._threads_before)
        return summary


# -- plots and tables ------------------------------------------------------------------------


#: metrics.jsonl fields that are not curves of the loss
NOT_LOSSES = frozenset({"step", "epoch", "wall", "kind", "lr", "K", "alpha", "nonfinite_steps"})


def plot_curves(metrics: Path, path: Path, title: str) -> Path | None:
    """Two panels from ``metrics.jsonl`` against training steps (epochs on the top axis): the
    training loss and its logged parts (CE, the regulariser, …), and every evaluation metric
    (accuracies in %, the training batches' own accuracies faint beside them; a single final
    evaluation is a labelled point). None when nothing was logged."""
    rows = read_metrics(metrics) if metrics.exists() else []
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    if not rows:
        return None

    def numeric(group: list[dict[str, Any]]) -> list[str]:
        keys = {k for r in group for k, v in r.items() if k not in NOT_LOSSES and isinstance(v, int | float)}
        return sorted(keys, key=lambda k: (k != "loss", k))

    losses = [k for k in numeric(train) if not k.endswith("acc")]
    train_acc = [k for k in numeric(train) if k.endswith("acc")]
    scores = numeric(evals)
    as_percent = all(k.endswith("acc") for k in scores + train_acc)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for key in losses:
        pts = [(r["step"], r[key]) for r in train if isinstance(r.get(key), int | float)]
        ax_loss.plot(*zip(*pts, strict=True), lw=1.2, label=key)
    ax_loss.set_ylabel("training loss (batch mean)")
    ax_loss.set_title("training")
    scale = 100.0 if as_percent else 1.0
    for key in train_acc:
        pts = [(r["step"], scale * r[key]) for r in train if isinstance(r.get(key), int | float)]
        ax_eval.plot(*zip(*pts, strict=True), lw=0.8, alpha=0.45, label=f"{key} (training batches)")
    for key in scores:
        pts = [(r["step"], scale * r[key]) for r in evals if isinstance(r.get(key), int | float)]
        if len(pts) == 1:
            ax_eval.plot(*pts[0], marker="o", ms=6, ls="none", label=f"{key} (end: {pts[0][1]:.4g})")
        else:
            ax_eval.plot(*zip(*pts, strict=True), marker="o", ms=3, label=key)
    ax_eval.set_ylabel("accuracy (%)" if as_percent else "value")
    if as_percent:
        ax_eval.set_ylim(0, 105)
    ax_eval.set_title("evaluation" if scores else "evaluation (none logged: --eval-every)")
    per_step = next((r["epoch"] / r["step"] for r in rows if r["step"]), 0.0)
    for ax in (ax_loss, ax_eval):
        ax.set_xlabel("training step")
        if ax.lines:
            ax.legend(fontsize=8, loc="best" if ax is ax_loss else "lower right")
        if per_step:
            top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda e: e / per_step))
            top.set_xlabel("epoch", fontsize=8)
    wall = max((r["wall"] for r in rows), default=0.0)
    fig.suptitle(f"{title} ({wall:.0f} s of training)", fontsize=10)
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


@contextmanager
def evaluation_bar(description: str) -> Iterator[Any]:
    """A rich bar driven by :class:`robustreg.ProgressEvent`: the hook to pass as ``progress=``."""
    with cli.progress_bar("{task.fields[last]}") as bar:
        task = bar.add_task(description, total=None, last="")

        def hook(event: robustreg.ProgressEvent) -> None:
            last = f"{event.attack} on batch {event.batch}/{event.batches}" if event.attack else ""
            bar.update(task, total=event.total, completed=event.done, last=last)

        yield hook


def auto_threads(*, small_model: bool) -> int:
    """``--threads 0``: one thread for the two-rings MLPs, where a second thread gains nothing on a
    quiet machine and costs 3-121x beside two busy processes; otherwise the cores this process
    may use, divided among the processes of ``accelerate launch`` on this machine, or torch's
    default when ``OMP_NUM_THREADS`` is set (``benchmarks/threads.py``; docs/recipes.md, "Running
    on CPU")."""
    if small_model:
        return 1
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        local = 1
    return max(1, cores // max(1, local))


def requested_processes() -> int | None:
    """The process count ``accelerate launch`` was asked for when its simple launcher started this
    single process anyway (``--num_processes N`` without ``--multi_gpu``, or with ``--cpu``): N, 0
    when N cannot be read from the launcher's command line; None when not launched that way."""
    env = os.environ
    if "ACCELERATE_USE_CPU" not in env or "MASTER_ADDR" not in env or "WORLD_SIZE" in env:
        return None  # not the simple launcher, or it was asked for one process, or torchrun's group
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 0
    for flag, value in itertools.pairwise([*args, ""]):
        flag, _, inline = flag.partition("=")
        if flag in ("--num_processes", "--num-processes") and (inline or value).isdigit():
            return int(inline or value)
    return 0


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


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``. A cut last line (a run killed while writing it) is dropped
    with a warning; any other unreadable line is an error naming it."""
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a metrics row")
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: its last line is cut (%r): dropped", path, line[:60])
                break
            raise SystemExit(f"error: {path}, line {i + 1}, is not a metrics row: {line[:80]!r}") from None
        rows.append(row)
    return rows


def _step_of(path: Path) -> int:
    try:
        return int(path.name.split("_", 1)[1])
    except (IndexError, ValueError):
        return -1


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` (a loaded state tree) with its tensors on ``device``."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):  # Counter and OrderedDict stay what they are
        return type(value)({k: _to_device(v, device) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    return value


def setup_logging(main: bool) -> None:
    """Rich logging at INFO on the main process (WARNING on the others), once per process."""
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
